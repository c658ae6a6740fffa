"""Training: a dataset, a model and AdamW -> a loop that logs, checkpoints and resumes.

The seed's training demo ("load a dataset, make a model and an optimizer, loop and log the
loss"), grown into a trainer in the style of nanoGPT. It serves any model and any data that
speaks the batch interface of `hookgpt.datasets` (text windows, the repeated-sequence
curriculum, or an algorithmic task's table); how each shipped model is made lives in
`recipes/<model>/`, not here.

1. `make_dataset` builds the run's dataset from its config. The batch of a step is a pure
   function of (seed, step), so a resumed run sees exactly the batches an uninterrupted one
   would, and under DDP every rank takes its own rows of the same global batch.
2. `train` runs AdamW (by default no weight decay on biases, LayerNorm and embeddings) with
   linear warmup and cosine decay, gradient clipping and accumulation, optional autocast. It
   checkpoints atomically every `checkpoint_interval` steps, at the end and on Ctrl-C, and can
   keep the weights along the way (`snapshot_interval`); `--resume` goes on from the last
   checkpoint with the same losses as a run that was never stopped.
3. A run owns its directory: an exclusive lock keeps a second trainer out, a non-finite loss
   stops the run (the last good checkpoint stays), and checkpoints are read with
   `torch.load(weights_only=True)`, so a checkpoint someone hands you cannot run code.

Run it with `hookgpt train` (see `hookgpt train --help`), or with `torchrun --nproc_per_node N
-m hookgpt.train ...` for DistributedDataParallel (gloo on CPU, nccl on GPU).

Options for small machines, off by default (a shipped model's card says which it used):
- `restrict_vocab`: the training softmax runs over the ids that occur in the training data
  (plus the targets of the step's global batch) instead of the whole vocabulary; the
  unembedding dominates the cost of a small model. Every micro-step and DDP rank uses the same
  id set, so the loss is still exact.
- `restrict_vocab_to_batch`: the softmax runs over the targets of the step's global batch only
  (a sampled softmax). Only for a warm-up on repeated random units, where it is ~10x cheaper:
  the ids outside the batch are never pushed down, so a later stage must train with
  `restrict_vocab` or the full softmax.
- `repeat_from_data`: repeated random units draw from the ids of the training split (not the
  whole vocabulary), so no embedding outside the data's ids is trained.
- `dataset="repeated"` (implied by `repeat_fraction > 0`): the repeated-sequence curriculum.

`init_from` starts a run from trained weights instead of a random init (fine-tuning, or the
second stage of a curriculum): a trainer checkpoint, or anything `HookedGPT.from_pretrained` loads.
"""

import contextlib
import dataclasses
import fcntl
import fnmatch
import json
import math
import os
import pickle
import random
import signal
import socket
import sys
import time
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm  # text bars: work in terminals and notebooks alike, no ipywidgets needed

from hookgpt.atomic import atomic_write, write_bytes_atomic
from hookgpt.config import GPTConfig
from hookgpt.datasets import (  # noqa: F401  (prepare_data, load_tokens, BUNDLED_CORPUS, EOT: re-exported)
    BUNDLED_CORPUS,
    EOT,
    IGNORE,
    KINDS,
    AlgorithmicTask,
    Batch,
    Dataset,
    RepeatedSequences,
    TextTokens,
    TrainingError,
    load_tokens,
    next_token_targets,
    prepare_data,
)
from hookgpt.model import HookedGPT

CHECKPOINT_NAME = "ckpt.pt"
LOCK_NAME = ".lock"
SNAPSHOT_DIR = "snapshots"


# The model `hookgpt train` makes when the config names no other (TrainConfig.model overrides it).
DEFAULT_MODEL = dict(n_layers=2, d_model=128, n_heads=4, n_ctx=256, tie_embeddings=True)


# =============================================================================================
# 1. The config, and the dataset it names
# =============================================================================================


@dataclass
class TrainConfig:
    """Everything a training run needs; saved in every checkpoint."""

    out_dir: str = "runs/hookgpt"
    dataset: Optional[str] = None  # "text", "repeated" or "algorithmic"; None: "repeated" if repeat_fraction > 0, else "text"
    data: Optional[str] = None  # text: a file, directory or hf:NAME (None: the bundled Shakespeare); algorithmic: a .npz table
    data_dir: Optional[str] = None  # where token files go (default: out_dir/data)
    model: dict = field(default_factory=dict)  # GPTConfig fields over DEFAULT_MODEL (or over init_from's config)
    init_from: Optional[str] = None  # start from these weights: a trainer checkpoint, or a from_pretrained name/dir
    pos_init: str = "normal"  # W_pos at a fresh init: "normal" (GPT-2's N(0, init_range)), "sinusoidal" or "fourier" (sinusoidal_positions)
    pos_init_std: Optional[float] = None  # the RMS of that initial W_pos (None: the model's init_range)
    seq_len: int = 256  # text kinds; an algorithmic table fixes its own
    batch_size: int = 16  # rows per optimizer step (global, over all ranks and micro-steps); algorithmic: 0 = full batch
    grad_accum: int = 1
    max_steps: int = 2000
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    decay_embeddings: bool = False  # also decay W_E and W_pos (the grokking setup decays everything)
    betas: tuple = (0.9, 0.95)
    grad_clip: float = 1.0
    freeze: list = field(default_factory=list)  # glob patterns of parameter names kept at their init, e.g. ["*.b_*"]
    seed: int = 0
    eval_interval: int = 200
    eval_batches: int = 8
    checkpoint_interval: int = 200
    snapshot_interval: int = 0  # keep the weights every N steps in out_dir/snapshots/ (0: never)
    log_interval: int = 10
    autocast_dtype: Optional[str] = None  # "bfloat16"
    compile: bool = False
    restrict_vocab: bool = False
    restrict_vocab_to_batch: bool = False  # the softmax runs over the step's target ids only (a warm-up on repeated units)
    repeat_fraction: float = 0.0
    repeat_corpus_fraction: float = 0.5  # of the repeated rows, the share that repeat a corpus span
    repeat_vocab_size: Optional[int] = None  # random units draw ids below this (None: the whole vocabulary)
    repeat_from_data: bool = False  # random units draw from the ids that occur in the training split
    repeat_min_period: int = 8
    repeat_max_period: int = 96
    repeat_layout: str = "fill"  # "fill": the unit repeated over the whole row; "two_copies": two copies at a random offset
    val_fraction: float = 0.05
    device: str = "auto"
    progress: bool = True

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise TrainingError(f"unknown training options {unknown}; known: {sorted(known)}")
        d = dict(d)
        if "betas" in d and isinstance(d["betas"], (list, tuple)):
            d["betas"] = tuple(d["betas"])
        for name, value in d.items():
            _check_type(name, value, known[name])
        return cls(**d)

    @property
    def kind(self) -> str:
        return self.dataset or ("repeated" if self.repeat_fraction > 0 else "text")

    def model_config(self, base: Optional[dict] = None) -> GPTConfig:
        """The model's GPTConfig: `model`'s fields over `base` (default: DEFAULT_MODEL)."""
        spec = {**(DEFAULT_MODEL if base is None else base), **self.model}
        preset = spec.pop("preset", None)
        try:
            return GPTConfig.preset(preset, **spec) if preset else GPTConfig.from_dict(spec)
        except (TypeError, ValueError, KeyError) as e:
            raise TrainingError(f"bad model config {self.model}: {e}") from None


_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "an object",
               list: "a list", tuple: "a list"}


def _check_type(name: str, value: Any, f: dataclasses.Field) -> None:
    """A config value of the field's type (JSON has no tuples; ints are fine where floats are asked)."""
    hint = f.type
    optional = typing.get_origin(hint) is Union and type(None) in typing.get_args(hint)
    if optional:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
        if value is None:
            return
    ok = {
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        bool: isinstance(value, bool),
        str: isinstance(value, str),
        dict: isinstance(value, dict),
        list: isinstance(value, (list, tuple)),
        tuple: isinstance(value, (list, tuple)),
    }.get(hint, True)
    if not ok:
        raise TrainingError(f"training option {name} must be {_TYPE_NAMES[hint]}{' or null' if optional else ''}, got {value!r}")


def make_dataset(cfg: TrainConfig, data_dir: Path, prepare: bool = True) -> Dataset:
    """The dataset `cfg` names. With `prepare`, text is tokenized into `data_dir` first (once;
    under DDP only rank 0 prepares, the others wait at a barrier and then read the files)."""
    kind = cfg.kind
    if kind not in KINDS:
        raise TrainingError(f"dataset must be one of {KINDS} (or null), got {cfg.dataset!r}")
    if kind == "algorithmic":
        if cfg.data is None:
            raise TrainingError("dataset='algorithmic' needs data: the path of a task table (.npz, see hookgpt.datasets.save_task_table)")
        if cfg.repeat_fraction > 0:
            raise TrainingError("repeat_fraction applies to text datasets, not to dataset='algorithmic'")
        return AlgorithmicTask.from_file(cfg.data, batch_size=cfg.batch_size, seed=cfg.seed)
    if kind == "text" and cfg.repeat_fraction > 0:
        raise TrainingError(f"repeat_fraction={cfg.repeat_fraction} needs dataset='repeated' (or no dataset), not 'text'")
    if prepare:
        prepare_data(cfg.data, data_dir, cfg.val_fraction)
    train_tokens, val_tokens = load_tokens(data_dir, "train"), load_tokens(data_dir, "val")
    if len(val_tokens) <= cfg.seq_len:
        warnings.warn(f"the validation split has only {len(val_tokens)} tokens; evaluating on the training split")
    if kind == "text":
        return TextTokens(train_tokens, val_tokens, cfg.seq_len, cfg.batch_size, cfg.seed)
    return RepeatedSequences(
        train_tokens, val_tokens, cfg.seq_len, cfg.batch_size, cfg.seed, repeat_fraction=cfg.repeat_fraction,
        corpus_fraction=cfg.repeat_corpus_fraction, min_period=cfg.repeat_min_period, max_period=cfg.repeat_max_period,
        vocab_size=cfg.repeat_vocab_size, from_data=cfg.repeat_from_data, layout=cfg.repeat_layout,
    )


# =============================================================================================
# 2. The objective, the optimizer, the schedule
# =============================================================================================


class LanguageModelLoss(nn.Module):
    """Mean cross-entropy of `model` at a batch's target positions; the module that DDP wraps.

    Only the positions with a target go through `ln_final` and the unembedding (for text, all
    but the last; for a task, its answers), which is most of the cost of a small model.

    With `vocab_ids` (the `restrict_vocab` option) the softmax runs over a subset of the
    vocabulary: `softmax_ids(global targets)`, the training data's ids plus the targets of the
    step's global batch (random repeated sequences bring ids from outside the corpus). The
    trainer computes that set from the whole global batch, so every micro-step and every DDP
    rank uses the same softmax, and the loss does not depend on how the batch is split. The
    model keeps its full vocabulary; only this training loss is restricted.
    """

    def __init__(self, model: HookedGPT, vocab_ids: Optional[Tensor] = None):
        super().__init__()
        self.model = model
        self.register_buffer("vocab_ids", vocab_ids, persistent=False)

    def softmax_ids(self, targets: Tensor) -> Optional[Tensor]:
        """The sorted ids the restricted softmax runs over for a batch's `targets`; None: all of them."""
        if self.vocab_ids is None:
            return None
        targets = targets[targets != IGNORE].to(self.vocab_ids.device)
        return torch.unique(torch.cat([self.vocab_ids, targets]))

    def forward(self, tokens: Tensor, targets: Optional[Tensor] = None, ids: Optional[Tensor] = None) -> Tensor:
        model = self.model
        if targets is None:  # language modelling: predict the next token
            targets = torch.from_numpy(next_token_targets(tokens.cpu().numpy())).to(tokens.device)
        resid = model(tokens, stop_at_layer=model.cfg.n_layers)  # [batch, pos, d_model]
        keep = targets != IGNORE
        normalized = model.ln_final(resid[keep][None])  # [1, n_targets, d_model]
        targets = targets[keep]
        if self.vocab_ids is None:
            logits = model.unembed(normalized)[0]  # [n_targets, d_vocab_out]
        else:
            ids = self.softmax_ids(targets) if ids is None else ids
            logits = normalized[0] @ model.W_U[:, ids] + model.b_U[ids]  # [n_targets, n_ids]
            targets = torch.searchsorted(ids, targets.contiguous())
        return F.cross_entropy(logits, targets)


POS_INIT_SPACING = {"sinusoidal": "geometric", "fourier": "uniform"}  # pos_init -> sinusoidal_positions' spacing
POS_INITS = ("normal", *POS_INIT_SPACING)


def sinusoidal_positions(n_ctx: int, d_model: int, init_range: float = 0.02, spacing: str = "geometric") -> torch.Tensor:
    """`[n_ctx, d_model]` positional embeddings made of sinusoids: coordinates 2i and 2i+1 of
    position p are sin and cos of p * w_i. Scaled so that the table's RMS is `init_range` (each
    sin/cos pair has norm init_range * sqrt(2) at every position), the size of GPT-2's init.

    - `spacing="geometric"` (`pos_init="sinusoidal"`): Vaswani et al.'s w_i = 10000^(-2i / d_model).
      Most of these frequencies are low: neighbouring positions differ in a few coordinates only.
    - `spacing="uniform"` (`pos_init="fourier"`): w_i = pi * (i + 1/2) / (d_model / 2), spread evenly
      over (0, pi), a Fourier basis of the positions. Summed over the pairs, cos(w_i * d) is a
      sharp peak at offset d = 0 (and negative at d = n_pairs * 2), so a head can single out one
      offset, e.g. the previous token, with small weights.

    Either way an offset between two positions is a fixed rotation of each pair, the same at
    every position, so a head that learns to attend one position back does it across the whole
    context at once, also at positions the training rows never reach, as long as W_pos keeps
    its shape (`freeze=["pos_embed.W_pos"]` keeps it fixed, as the original Transformer's). A
    learned W_pos from a random init learns such a head position by position, from the start of
    the context outwards. Used as an init only; W_pos stays a parameter."""
    n_pairs = (d_model + 1) // 2
    index = torch.arange(n_pairs, dtype=torch.float64)
    if spacing == "geometric":
        frequency = 10000.0 ** (-2 * index / d_model)
    elif spacing == "uniform":
        frequency = math.pi * (index + 0.5) / n_pairs
    else:
        raise ValueError(f"spacing must be 'geometric' or 'uniform', got {spacing!r}")
    position = torch.arange(n_ctx, dtype=torch.float64)[:, None]
    table = torch.zeros(n_ctx, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)[:, : d_model // 2]
    return (table * init_range * math.sqrt(2)).float()


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: not on 1-D biases, LayerNorm gains or (unless
    `decay_embeddings`) the embeddings. Frozen parameters (`freeze`) are left out.

    nanoGPT's rule (`ndim >= 2` decays). Note that it decays the per-head attention biases `b_Q`,
    `b_K`, `b_V`, which are 2-D `[n_heads, d_head]` here. Changing the rule changes the group
    sizes, so checkpoints written under the old rule could no longer be resumed.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        (decay if param.ndim >= 2 and (cfg.decay_embeddings or leaf not in ("W_E", "W_pos")) else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def freeze_parameters(model: nn.Module, patterns: list[str]) -> list[str]:
    """Keep the parameters whose names match a glob pattern at their init; returns their names."""
    names = [name for name, _ in model.named_parameters()]
    frozen = []
    for pattern in patterns:
        matched = [name for name in names if fnmatch.fnmatchcase(name, pattern)]
        if not matched:
            raise TrainingError(f"freeze pattern {pattern!r} matches no parameter; the model's parameters are {names}")
        frozen += matched
    for name, param in model.named_parameters():
        if name in frozen:
            param.requires_grad_(False)
    return sorted(set(frozen))


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to `lr`, then cosine decay to `min_lr` at `max_steps`."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


# =============================================================================================
# 3. Evaluation
# =============================================================================================


@torch.no_grad()
def batch_metrics(model: HookedGPT, batch: Batch, device: torch.device) -> tuple[float, float]:
    """(mean cross-entropy with the model's full softmax, accuracy of the argmax) at the target positions."""
    tokens, targets = batch.to(device)
    keep = targets != IGNORE
    logits = model(tokens)[keep].float()  # [n_targets, d_vocab_out]
    targets = targets[keep]
    return float(F.cross_entropy(logits, targets)), float((logits.argmax(-1) == targets).float().mean())


@torch.no_grad()
def evaluate_dataset(model: HookedGPT, dataset: Dataset, n_batches: int, device: torch.device) -> dict[str, float]:
    """`val_loss` on the dataset's fixed evaluation batches; for a task also `val_accuracy`, and
    the loss and accuracy on the whole training table."""
    was_training = model.training
    model.eval()
    losses, accuracies = zip(*(batch_metrics(model, b, device) for b in dataset.eval_batches(n_batches)))
    metrics = {"val_loss": float(np.mean(losses))}
    if isinstance(dataset, AlgorithmicTask):
        metrics["val_accuracy"] = float(np.mean(accuracies))
        metrics["train_loss"], metrics["train_accuracy"] = batch_metrics(model, dataset.train_batch(), device)
    model.train(was_training)
    return metrics


def evaluate(model: HookedGPT, val_tokens: np.ndarray, cfg: TrainConfig, device: torch.device) -> float:
    """Mean full-vocabulary loss on `eval_batches` fixed windows of `val_tokens` (as during training)."""
    dataset = TextTokens(val_tokens, val_tokens, cfg.seq_len, cfg.batch_size, cfg.seed)
    return evaluate_dataset(model, dataset, cfg.eval_batches, device)["val_loss"]


# =============================================================================================
# 4. Checkpoints (read as data, never as code), snapshots, the run lock
# =============================================================================================


def save_checkpoint(path: Path, state: dict) -> None:
    """`torch.save` to a temporary file in the same folder, then `os.replace`: a reader (or a
    process killed mid-write) only ever sees the old checkpoint or the new one, whole."""
    with atomic_write(path) as tmp:
        torch.save(state, tmp)


def _legacy_numpy_globals() -> list:
    """What older checkpoints pickled besides tensors: numpy's RNG state (a uint32 array). These
    rebuild an array and nothing else; every other global is refused."""
    multiarray = getattr(np, "_core", None) or np.core
    return [multiarray.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load_checkpoint(path: Union[str, Path]) -> dict:
    """A trainer checkpoint, read with `torch.load(weights_only=True)`: tensors and plain data
    only, so a file carrying a pickled object (code that would run on load) is refused."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with torch.serialization.safe_globals(_legacy_numpy_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first_line = str(e).strip().splitlines()[-1] if str(e).strip() else ""
        raise TrainingError(
            f"refusing checkpoint {path}: it holds objects other than tensors and plain data, which could run code "
            f"when loaded (hookgpt reads checkpoints with torch.load(weights_only=True); {first_line})"
        ) from None
    except Exception as e:  # truncated zip, garbage bytes, ...
        raise TrainingError(f"checkpoint {path} is corrupt or truncated ({type(e).__name__}: {e})") from e
    missing = {"model", "optimizer", "step", "train_config", "model_config"} - set(state if isinstance(state, dict) else {})
    if missing:
        raise TrainingError(f"checkpoint {path} is not a hookgpt training checkpoint (missing {sorted(missing)})")
    return state


def load_initial_weights(source: str) -> tuple[dict, dict]:
    """`(model config dict, float32 state dict)` of `init_from`: a trainer checkpoint (a `.pt` file,
    or a run directory holding one), or a model `HookedGPT.from_pretrained` can load."""
    path = Path(source)
    if path.is_dir() and (path / CHECKPOINT_NAME).is_file():
        path = path / CHECKPOINT_NAME
    if path.is_file() and path.suffix == ".pt":
        state = load_checkpoint(path)
        model_cfg = GPTConfig.from_dict(state["model_config"])
        weights = {k: v.float() if v.is_floating_point() else v for k, v in state["model"].items()}
    else:
        try:
            model = HookedGPT.from_pretrained(source, dtype=torch.float32)
        except Exception as e:  # ModelNotFoundError, CheckpointError: say which option failed
            raise TrainingError(f"init_from={source!r}: {e}") from e
        model_cfg, weights = model.cfg, model.state_dict()
    model_cfg = dataclasses.replace(model_cfg, dtype=torch.float32)
    return model_cfg.to_dict(), weights


def _rng_state() -> dict:
    # Batches never use a global generator (they are seeded by step); torch's is kept for
    # anything random in the model (none in GPT-2 without dropout) and saved as a tensor.
    return {"torch": torch.get_rng_state()}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "numpy" in state:  # older checkpoints
        np.random.set_state(state["numpy"])
    if "python" in state:
        random.setstate(state["python"])


def save_snapshot(out_dir: Path, step: int, model: nn.Module) -> Path:
    """The model's weights at `step`, as `out_dir/snapshots/step_{step:06d}.safetensors` (float32)."""
    from safetensors.torch import save_file

    path = out_dir / SNAPSHOT_DIR / f"step_{step:06d}.safetensors"
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_write(path) as tmp:
        save_file(weights, str(tmp), metadata={"step": str(step)})
    return path


def list_snapshots(run_dir: Union[str, Path]) -> list[tuple[int, Path]]:
    """`(step, path)` of every snapshot of a run, by step."""
    found = []
    for path in (Path(run_dir) / SNAPSHOT_DIR).glob("step_*.safetensors"):
        with contextlib.suppress(ValueError):
            found.append((int(path.stem.split("_", 1)[1]), path))
    return sorted(found)


@contextlib.contextmanager
def run_lock(out_dir: Path) -> Iterator[Path]:
    """Hold an exclusive lock on a run directory while the `with` block runs.

    The lock is an `flock` on `out_dir/.lock`, which names its holder (pid, host, start time);
    the kernel drops it if the process dies, and the file is removed when the block ends. A
    second trainer on the same directory gets a `TrainingError` naming the holder. A directory
    the lock had to create is removed again if the run left nothing in it (a run that failed its checks).
    """
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            with contextlib.suppress(OSError):
                holder = os.pread(fd, 1000, 0).decode(errors="replace").strip()
            os.close(fd)
            raise TrainingError(
                f"run directory {str(out_dir)!r} is in use by another trainer ({holder or 'holder unknown'}); "
                "wait for it to finish, stop it, or choose another --out"
            ) from None
        try:  # the holder before us may have removed the file between our open and our lock: retry
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):  # not empty: the run wrote something, keep it
                out_dir.rmdir()


# Options that may change when a run resumes: they do not change which batches come, the
# model or the optimizer's steps (a larger max_steps extends the run; with a decaying learning
# rate it changes the remaining schedule, as it would have from the start).
SAFE_ON_RESUME = ("max_steps", "eval_interval", "eval_batches", "checkpoint_interval", "snapshot_interval", "log_interval",
                  "progress", "device", "compile", "out_dir", "data_dir", "init_from", "grad_accum", "model")


def check_resume_options(cfg: TrainConfig, saved: dict, step: int) -> None:
    """Refuse a resumed run whose options differ from the checkpoint's in a way that breaks exact resumption."""
    defaults = TrainConfig().to_dict()
    now = json.loads(json.dumps(cfg.to_dict()))
    saved = json.loads(json.dumps({**defaults, **saved}))  # older checkpoints lack newer options: their defaults
    now["dataset"] = cfg.kind  # an explicit kind equals the one implied before
    saved["dataset"] = saved["dataset"] or ("repeated" if saved["repeat_fraction"] > 0 else "text")
    changed = [name for name in now if name not in SAFE_ON_RESUME and now[name] != saved.get(name)]
    if changed:
        described = ", ".join(f"--{n.replace('_', '-')} {saved.get(n)!r} -> {now[n]!r}" for n in changed)
        raise TrainingError(
            f"cannot resume with changed options: {described}. The checkpoint was trained with the old values, and "
            f"resuming with new ones would not continue the same run; use the old values or a new --out "
            f"(options that may change on resume: {', '.join(SAFE_ON_RESUME[:-1])})"
        )
    if cfg.max_steps < step:
        raise TrainingError(f"--max-steps {cfg.max_steps} is below the checkpoint's step {step}; pass at least {step}")


# =============================================================================================
# 5. The loop
# =============================================================================================


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _init_distributed(device: torch.device) -> DistInfo:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size())


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            return torch.device("cuda", local)
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TrainingError(f"--device {name!r} is not a device; expected auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"--device {name}: no CUDA GPU is available here; use --device cpu (or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise TrainingError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise TrainingError(f"--device {name}: MPS is not available here; use --device cpu (or auto)")
    return device


def _validate(cfg: TrainConfig, model_cfg: GPTConfig, world_size: int) -> None:
    if cfg.kind not in KINDS:
        raise TrainingError(f"dataset must be one of {KINDS} (or null), got {cfg.dataset!r}")
    minimum = {"batch_size": 0 if cfg.kind == "algorithmic" else 1, "snapshot_interval": 0}
    for name in ("batch_size", "grad_accum", "max_steps", "eval_interval", "eval_batches", "checkpoint_interval",
                 "snapshot_interval", "log_interval"):
        if getattr(cfg, name) < minimum.get(name, 1):
            raise TrainingError(f"{name} must be at least {minimum.get(name, 1)}, got {getattr(cfg, name)}")
    if cfg.kind != "algorithmic":
        if cfg.seq_len > model_cfg.n_ctx:
            raise TrainingError(f"seq_len={cfg.seq_len} is longer than the model's context n_ctx={model_cfg.n_ctx}")
        if cfg.seq_len < 2:
            raise TrainingError(f"seq_len must be at least 2, got {cfg.seq_len}")
    if cfg.batch_size % (cfg.grad_accum * world_size):
        raise TrainingError(
            f"batch_size={cfg.batch_size} must be divisible by grad_accum * world_size = {cfg.grad_accum} * {world_size}"
        )
    if not cfg.lr > 0:
        raise TrainingError(f"lr must be positive, got {cfg.lr}")
    for name in ("repeat_fraction", "repeat_corpus_fraction"):
        if not 0 <= getattr(cfg, name) <= 1:
            raise TrainingError(f"{name} must be in [0, 1], got {getattr(cfg, name)}")
    if cfg.repeat_vocab_size is not None and not 2 <= cfg.repeat_vocab_size <= EOT:
        raise TrainingError(f"repeat_vocab_size must be in [2, {EOT}], got {cfg.repeat_vocab_size}")
    if cfg.restrict_vocab_to_batch and cfg.restrict_vocab:
        raise TrainingError("restrict_vocab (the data's ids) and restrict_vocab_to_batch (the batch's ids) exclude each other")
    if cfg.pos_init not in POS_INITS:
        raise TrainingError(f"pos_init must be one of {POS_INITS}, got {cfg.pos_init!r}")
    if cfg.pos_init_std is not None and not cfg.pos_init_std > 0:
        raise TrainingError(f"pos_init_std must be positive (or null), got {cfg.pos_init_std}")
    if (cfg.pos_init != "normal" or cfg.pos_init_std is not None) and cfg.init_from is not None:
        raise TrainingError(f"pos_init={cfg.pos_init!r} and pos_init_std={cfg.pos_init_std} initialise W_pos of a fresh "
                            f"model; init_from={cfg.init_from!r} brings its own weights")
    if cfg.repeat_from_data and cfg.repeat_vocab_size is not None:
        raise TrainingError("repeat_from_data draws from the training split's ids; it cannot be combined with repeat_vocab_size")
    if not 0 <= cfg.val_fraction < 1:
        raise TrainingError(f"val_fraction must be in [0, 1), got {cfg.val_fraction}")
    if cfg.autocast_dtype not in (None, "bfloat16"):
        # float16 would need loss scaling (a GradScaler), which this trainer does not do
        raise TrainingError(f"autocast_dtype must be None or 'bfloat16', got {cfg.autocast_dtype!r}")


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    """Train a model as `cfg` says; return a summary (final losses, steps, tokens, paths).

    With `resume`, continue from `out_dir/ckpt.pt` (its model config and the options that decide
    the run must match `cfg`, see `SAFE_ON_RESUME`); the resumed run computes the same losses as
    one that was never interrupted. Without it, an existing checkpoint in `out_dir` is an error
    rather than something to overwrite. The run holds a lock on `out_dir` while it runs.
    """
    device = _resolve_device(cfg.device)
    info = _init_distributed(device)
    out_dir = Path(cfg.out_dir)
    lock = run_lock(out_dir) if info.is_main else contextlib.nullcontext()
    with lock:
        return _train(cfg, resume, device, info, out_dir)


def _train(cfg: TrainConfig, resume: bool, device: torch.device, info: DistInfo, out_dir: Path) -> dict:
    # Check the checkpoint before anything is written: a bad one fails the run and stays as it is.
    ckpt_path = out_dir / CHECKPOINT_NAME
    state = load_checkpoint(ckpt_path) if resume else None
    init_weights = None
    if cfg.init_from is None:
        model_cfg = cfg.model_config()
    elif state is not None:  # resuming: the run's own checkpoint replaces the initial weights
        model_cfg = cfg.model_config(base=state["model_config"])
    else:
        init_cfg, init_weights = load_initial_weights(cfg.init_from)
        model_cfg = cfg.model_config(base=init_cfg)
        wanted = model_cfg.to_dict()
        changed = sorted(k for k, v in wanted.items() if k != "model_name" and init_cfg.get(k) != v)
        if changed:
            raise TrainingError(
                f"init_from={cfg.init_from!r} has {', '.join(f'{k}={init_cfg.get(k)!r}' for k in changed)}, "
                f"but the config's model asks for {', '.join(f'{k}={wanted[k]!r}' for k in changed)}; "
                "leave those fields out to train the model as it is"
            )
    _validate(cfg, model_cfg, info.world_size)
    if state is not None:
        saved_model_cfg = GPTConfig.from_dict(state["model_config"]).to_dict()  # older checkpoints lack newer fields
        if saved_model_cfg != model_cfg.to_dict():
            raise TrainingError(
                f"checkpoint {ckpt_path} was trained with model config {state['model_config']}, "
                f"but this run asks for {model_cfg.to_dict()}; use the same config or a new out_dir"
            )
        check_resume_options(cfg, state["train_config"], state["step"])
    if not resume and ckpt_path.exists():
        raise TrainingError(f"{ckpt_path} already exists; pass --resume to continue that run, or choose another out_dir")

    data_dir = Path(cfg.data_dir or out_dir / "data")
    if info.is_main:
        for stale in [*out_dir.glob(f".{CHECKPOINT_NAME}.*.tmp"), *out_dir.glob(f"{SNAPSHOT_DIR}/.*.tmp")]:
            stale.unlink()  # left by a process killed mid-save
    if info.is_main:
        dataset = make_dataset(cfg, data_dir, prepare=True)
    if info.world_size > 1:
        dist.barrier()
    if not info.is_main:
        dataset = make_dataset(cfg, data_dir, prepare=False)
    if dataset.rows_per_step % (cfg.grad_accum * info.world_size):
        raise TrainingError(f"the {dataset.rows_per_step} rows of a step must be divisible by grad_accum * world_size = "
                            f"{cfg.grad_accum} * {info.world_size}")
    if dataset.seq_len > model_cfg.n_ctx:
        raise TrainingError(f"the data's rows have {dataset.seq_len} positions, more than the model's context n_ctx={model_cfg.n_ctx}")

    torch.manual_seed(cfg.seed)
    model = HookedGPT(model_cfg).to(device)
    if init_weights is not None:
        model.load_state_dict(init_weights)
    else:  # a fresh init (on resume the checkpoint's weights replace it)
        std = model_cfg.init_range if cfg.pos_init_std is None else cfg.pos_init_std
        with torch.no_grad():
            if cfg.pos_init in POS_INIT_SPACING:
                spacing = POS_INIT_SPACING[cfg.pos_init]
                model.W_pos.copy_(sinusoidal_positions(model_cfg.n_ctx, model_cfg.d_model, std, spacing))
            elif cfg.pos_init_std is not None:
                model.W_pos.normal_(0.0, std)
    freeze_parameters(model, cfg.freeze)
    if cfg.restrict_vocab_to_batch:  # no fixed ids: softmax_ids() is then the global batch's targets
        vocab_ids = torch.empty(0, dtype=torch.long, device=device)
    else:
        vocab_ids = torch.from_numpy(dataset.vocab_ids()).to(device) if cfg.restrict_vocab else None
    objective = LanguageModelLoss(model, vocab_ids).to(device)
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at(step, cfg) / cfg.lr)
    start_step, tokens_seen = 0, 0
    if state is not None:
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise TrainingError(f"checkpoint {ckpt_path} does not fit this model/optimizer: {e}") from e
        start_step, tokens_seen = state["step"], state["tokens_seen"]
        _set_rng_state(state["rng"])

    step_fn = objective
    if info.world_size > 1:
        step_fn = nn.parallel.DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        step_fn = torch.compile(step_fn)
    autocast = (
        torch.autocast(device.type, dtype=getattr(torch, cfg.autocast_dtype)) if cfg.autocast_dtype else contextlib.nullcontext()
    )

    # The log holds one record per step. A fresh run starts a new one; a resumed run keeps the
    # records up to its checkpoint (a killed run may have logged steps after it) and goes on.
    log_path = out_dir / "log.jsonl"
    if info.is_main:
        kept = [r for r in _read_records(log_path) if r["step"] <= start_step] if resume else []
        write_bytes_atomic(log_path, "".join(json.dumps(r) + "\n" for r in kept).encode())
        if cfg.snapshot_interval and start_step == 0:
            save_snapshot(out_dir, 0, model)

    # Ctrl-C: finish the step, save a checkpoint, stop (a second Ctrl-C stops at once).
    interrupted, restore_sigint = catch_ctrl_c()

    last_saved = {"step": start_step if state is not None else None}

    def checkpoint(step: int) -> None:
        if info.is_main:
            save_checkpoint(ckpt_path, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "step": step,  # also the data position: the batches of step s are a function of s
                "tokens_seen": tokens_seen, "rng": _rng_state(),
                "train_config": cfg.to_dict(), "model_config": model_cfg.to_dict(),
            })
        last_saved["step"] = step

    n_blocks = cfg.grad_accum * info.world_size
    history: list[dict] = []
    bar = tqdm(range(start_step, cfg.max_steps), initial=start_step, total=cfg.max_steps,
               disable=not (cfg.progress and info.is_main), desc="train", dynamic_ncols=True)
    model.train()
    t0, step = time.perf_counter(), start_step
    try:
        for step in bar:
            lr = scheduler.get_last_lr()[0]
            batch = dataset.global_batch(step)  # [rows, pos]; each rank takes its share
            ids = objective.softmax_ids(torch.from_numpy(batch.targets))  # None unless restrict_vocab
            loss_sum = torch.zeros((), device=device)
            for micro in range(cfg.grad_accum):
                tokens, targets = batch.shard(n_blocks, micro * info.world_size + info.rank).to(device)
                sync = contextlib.nullcontext()
                if info.world_size > 1 and micro < cfg.grad_accum - 1:
                    sync = step_fn.no_sync()  # all-reduce the gradients once, after the last micro-step
                with sync, autocast:
                    loss = step_fn(tokens, targets, ids) / cfg.grad_accum
                loss.backward()
                loss_sum += loss.detach()
            if info.world_size > 1:  # the mean loss over ranks; and stop everywhere if any rank saw Ctrl-C
                stop = torch.tensor(float(interrupted["flag"]), device=device)
                dist.all_reduce(loss_sum)
                dist.all_reduce(stop)
                loss_sum /= info.world_size
                interrupted["flag"] = bool(stop > 0)
            if not torch.isfinite(loss_sum):
                kept = (f"the last good checkpoint, step {last_saved['step']}, is kept in {ckpt_path}" if last_saved["step"] is not None
                        else "no checkpoint had been written yet")
                raise TrainingError(
                    f"the training loss is {float(loss_sum)} at step {step + 1}: stopped before updating the weights; {kept}. "
                    "Check the learning rate, the model's dtype (train in float32 or with autocast_dtype='bfloat16') "
                    "and layer_norm_eps"
                )
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            tokens_seen += dataset.tokens_per_step
            record = {"step": step + 1, "loss": float(loss_sum), "lr": lr, "tokens": tokens_seen}
            if (step + 1) % cfg.eval_interval == 0 or step + 1 == cfg.max_steps:
                record.update(evaluate_dataset(model, dataset, cfg.eval_batches, device))
            history.append(record)
            if info.is_main:
                with open(log_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                if (step + 1 - start_step) % cfg.log_interval == 0 or "val_loss" in record:
                    elapsed = time.perf_counter() - t0
                    bar.set_postfix(loss=f"{record['loss']:.3f}",
                                    tok_s=f"{(step + 1 - start_step) * dataset.tokens_per_step / elapsed:,.0f}")
                if cfg.snapshot_interval and (step + 1) % cfg.snapshot_interval == 0:
                    save_snapshot(out_dir, step + 1, model)
            if (step + 1) % cfg.checkpoint_interval == 0 or step + 1 == cfg.max_steps or interrupted["flag"]:
                checkpoint(step + 1)
            if interrupted["flag"]:
                if info.is_main:
                    bar.write(f"interrupted: checkpoint saved at step {step + 1} in {ckpt_path}; continue with --resume")
                break
    finally:
        bar.close()
        restore_sigint()

    summary = {"steps": history[-1]["step"] if history else start_step, "tokens_seen": tokens_seen, "history": history,
               "checkpoint": str(ckpt_path), "log": str(log_path), "interrupted": interrupted["flag"]}
    vals = [r for r in history if "val_loss" in r]
    if history:
        summary["final_train_loss"] = history[-1]["loss"]
    if vals:
        summary["final_val_loss"] = vals[-1]["val_loss"]
        if "val_accuracy" in vals[-1]:
            summary["final_val_accuracy"] = vals[-1]["val_accuracy"]
    if info.is_main and history and not interrupted["flag"]:
        write_loss_curve(log_path, out_dir / "loss.html")
    summary["model"] = model
    return summary


def catch_ctrl_c() -> tuple[dict, Callable[[], None]]:
    """Make the first Ctrl-C set `flag["flag"] = True` instead of raising (the loop then finishes
    its step, saves a checkpoint and stops; a second Ctrl-C stops at once). Returns the flag and
    the function that puts the old handler back. Outside the main thread (where Python cannot set
    signal handlers) nothing changes."""
    interrupted = {"flag": False}
    if not _is_main_thread():
        return interrupted, lambda: None
    old_handler = signal.getsignal(signal.SIGINT) or signal.default_int_handler

    def on_sigint(signum, frame):
        interrupted["flag"] = True
        signal.signal(signal.SIGINT, old_handler)

    signal.signal(signal.SIGINT, on_sigint)
    return interrupted, lambda: signal.signal(signal.SIGINT, old_handler)


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _read_records(log_path: Path) -> list[dict]:
    """Every complete record of a log, in file order (a line cut short by a killed process is skipped)."""
    records = []
    if log_path.exists():
        for line in log_path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                if line.strip():
                    records.append(json.loads(line))
    return records


def read_log(log_path: Union[str, Path]) -> list[dict]:
    """The records of a run's `log.jsonl` by step; if a step was logged twice, the last record wins."""
    by_step = {r["step"]: r for r in _read_records(Path(log_path))}
    return [by_step[s] for s in sorted(by_step)]


def write_loss_curve(log_path: Union[str, Path], html_path: Union[str, Path]) -> Path:
    """A plotly figure of train and validation loss against step, as a standalone HTML file."""
    import plotly.graph_objects as go

    records = read_log(log_path)
    fig = go.Figure()
    fig.add_scatter(x=[r["step"] for r in records], y=[r["loss"] for r in records], name="train loss", mode="lines")
    val = [r for r in records if "val_loss" in r]
    fig.add_scatter(x=[r["step"] for r in val], y=[r["val_loss"] for r in val], name="val loss", mode="lines+markers")
    fig.update_layout(title="hookgpt training loss", xaxis_title="step", yaxis_title="cross-entropy (nats)", template="plotly_white")
    html = fig.to_html(include_plotlyjs=True, full_html=True)  # inlined: works offline
    write_bytes_atomic(Path(html_path), html.encode())
    return Path(html_path)


# =============================================================================================
# 6. Exporting a trained model
# =============================================================================================


def export_model(ckpt: Union[str, Path], out_dir: Union[str, Path], dtype: str = "float16") -> HookedGPT:
    """Load a training checkpoint's model and save it in hookgpt's format (weights in `dtype`)."""
    state = load_checkpoint(ckpt)
    model_cfg = GPTConfig.from_dict(state["model_config"])
    model = HookedGPT(model_cfg)
    model.load_state_dict(state["model"])
    model = model.to(getattr(torch, dtype))
    model.cfg = model.cfg.replace(dtype=getattr(torch, dtype))
    model.save_pretrained(str(out_dir))
    return model


# =============================================================================================
# 7. Command line: `hookgpt train ...` and `torchrun -m hookgpt.train ...`
# =============================================================================================


def build_arg_parser():
    import argparse

    p = argparse.ArgumentParser(prog="hookgpt train", description="Train a GPT-2 style model with hookgpt's trainer.")
    p.add_argument("--config", help="JSON file of TrainConfig fields (command-line options override it)")
    p.add_argument("--dataset", choices=["text", "repeated", "algorithmic"],
                   help="what --data is: text (default), repeated (text + the repeated-sequence curriculum; implied by "
                   "--repeat-fraction), or algorithmic (a task table, .npz, see hookgpt.datasets.save_task_table)")
    p.add_argument("--data", help="a text file, a directory of .txt files, or hf:NAME[:CONFIG] for a Hugging Face dataset's "
                   "'text' column (needs `datasets`); default: the bundled Shakespeare. With --dataset algorithmic: the table")
    p.add_argument("--out", dest="out_dir", help="run directory for token files, checkpoints, log.jsonl and loss.html")
    p.add_argument("--resume", action="store_true", help="continue from OUT/ckpt.pt, with the same losses as a run that was "
                   "never stopped. Options that decide the run (--lr, --batch-size, --seq-len, --seed, --data, the schedule, "
                   "the model, ...) must stay as they were; only these may change: " + ", ".join(
                       "--" + n.replace("_", "-") for n in SAFE_ON_RESUME if n != "model") + " (--max-steps may grow)")
    p.add_argument("--init-from", dest="init_from", help="start from these weights instead of a random init: a trainer "
                   "checkpoint (or run directory), a shipped model name, or a model directory (fine-tuning)")
    p.add_argument("--pos-init", dest="pos_init", choices=POS_INITS, help="W_pos of a fresh model: normal (GPT-2's init, the "
                   "default), sinusoidal (Vaswani et al.'s sinusoids) or fourier (sinusoids of frequencies spread evenly over "
                   "(0, pi)); a head attending one position back then does so at every position")
    for name, typ in (("max_steps", int), ("batch_size", int), ("seq_len", int), ("grad_accum", int), ("lr", float),
                      ("min_lr", float), ("warmup_steps", int), ("weight_decay", float), ("grad_clip", float), ("seed", int),
                      ("eval_interval", int), ("eval_batches", int), ("checkpoint_interval", int), ("snapshot_interval", int),
                      ("pos_init_std", float), ("repeat_fraction", float),
                      ("repeat_corpus_fraction", float), ("repeat_min_period", int), ("repeat_max_period", int),
                      ("repeat_layout", str),
                      ("repeat_vocab_size", int),
                      ("log_interval", int), ("val_fraction", float), ("data_dir", str), ("autocast_dtype", str),
                      ("device", str)):
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=typ)
    p.add_argument("--n-layers", type=int)
    p.add_argument("--d-model", type=int)
    p.add_argument("--n-heads", type=int)
    p.add_argument("--n-ctx", type=int)
    p.add_argument("--attn-only", action="store_true", default=None)
    p.add_argument("--restrict-vocab", action="store_true", default=None)
    p.add_argument("--restrict-vocab-to-batch", action="store_true", default=None)
    p.add_argument("--repeat-from-data", action="store_true", default=None,
                   help="random repeated units draw from the ids that occur in the training split")
    p.add_argument("--compile", action="store_true", default=None)
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    return p


def config_from_args(args) -> TrainConfig:
    base: dict[str, Any] = {}
    if args.config:
        try:
            base = json.loads(Path(args.config).read_text())
        except FileNotFoundError:
            raise TrainingError(f"config file {args.config!r} does not exist") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise TrainingError(f"config file {args.config!r} is not valid JSON: {e}") from None
        if not isinstance(base, dict):
            raise TrainingError(f"config file {args.config!r} must hold a JSON object of training options")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for key, value in vars(args).items():
        if key in fields and value is not None:
            base[key] = value
    model = dict(base.get("model", {}))
    for key in ("n_layers", "d_model", "n_heads", "n_ctx", "attn_only"):
        if getattr(args, key, None) is not None:
            model[key] = getattr(args, key)
    base["model"] = model
    return TrainConfig.from_dict(base)


def main(argv: Optional[list[str]] = None) -> int:
    """`hookgpt train ...`: 0 when training finished, 130 when Ctrl-C stopped it (a checkpoint was
    saved), 2 on bad input (with a message on stderr)."""
    try:
        args = build_arg_parser().parse_args(argv)
    except SystemExit as e:  # --help, or an option argparse rejects (it printed why)
        return e.code if isinstance(e.code, int) else 2
    try:
        cfg = config_from_args(args)
        summary = train(cfg, resume=args.resume)
    except (TrainingError, FileNotFoundError) as e:
        print(f"hookgpt train: error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        losses = {k: round(v, 4) for k, v in summary.items() if k.startswith("final_")}
        print(json.dumps({"steps": summary["steps"], "tokens_seen": summary["tokens_seen"], **losses,
                          "checkpoint": summary["checkpoint"], "interrupted": summary["interrupted"]}))
    return 130 if summary["interrupted"] else 0


if __name__ == "__main__":
    sys.exit(main())
