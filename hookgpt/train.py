"""Training: text -> token files -> model + AdamW -> a loop that logs, checkpoints and resumes.

The seed's training demo ("load a dataset, tokenize it, make a model and an optimizer, loop and
log the loss"), grown into a trainer in the style of nanoGPT:

1. `prepare_data` tokenizes text files (or the bundled Shakespeare, or a Hugging Face dataset
   `hf:NAME` when `datasets` is installed) once into memory-mapped uint16 token files,
   `train.bin` and `val.bin`, so corpora larger than RAM work.
2. `global_batch` draws the batch of a given step from a seeded generator. The data position is
   the step number, so a resumed run sees exactly the batches an uninterrupted one would, and
   under DDP every rank takes its own rows of the same global batch.
3. `train` runs AdamW (no weight decay on biases, LayerNorm and embeddings) with linear warmup
   and cosine decay, gradient clipping and accumulation, optional autocast, and checkpoints
   atomically every `checkpoint_interval` steps, at the end, and on Ctrl-C; `--resume` goes on
   from the last checkpoint with the same losses as a run that was never stopped.

Run it with `hookgpt train` (see `hookgpt train --help`), or with `torchrun --nproc_per_node N
-m hookgpt.train ...` for DistributedDataParallel (gloo on CPU, nccl on GPU).

Two options exist for small machines, both off by default (the shipped model's card says which it used):
- `restrict_vocab`: the softmax runs over the token ids that occur in the corpus (plus those in
  the step's global batch) instead of all 50,257; the unembedding dominates the cost of a small
  model. Every micro-step and DDP rank uses the same id set, so the loss is still exact.
- `repeat_fraction`: a fraction of rows are random token sequences repeated with a random period
  (or, for `repeat_corpus_fraction` of them, a corpus span repeated), which makes induction
  heads form sooner. `repeat_vocab_size` draws the random ids from the first N of the vocabulary
  (GPT-2's BPE ids are ordered by merge rank, so these are its commonest pieces).

`init_from` starts a run from trained weights instead of a random init (fine-tuning, or the
second stage of a curriculum): a trainer checkpoint, or anything `HookedGPT.from_pretrained` loads.
"""

import contextlib
import dataclasses
import gzip
import hashlib
import json
import math
import os
import random
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm  # text bars: work in terminals and notebooks alike, no ipywidgets needed

from hookgpt.atomic import atomic_write, write_bytes_atomic
from hookgpt.config import GPTConfig
from hookgpt.model import HookedGPT
from hookgpt.tokenizer import Tokenizer

BUNDLED_CORPUS = Path(__file__).parent / "data" / "corpus" / "shakespeare.txt.gz"
CHECKPOINT_NAME = "ckpt.pt"
EOT = 50256


# The model `hookgpt train` makes when the config names no other (TrainConfig.model overrides it).
DEFAULT_MODEL = dict(n_layers=2, d_model=128, n_heads=4, n_ctx=256, tie_embeddings=True)


class TrainingError(ValueError):
    """Bad training input: an empty corpus, a bad config, a checkpoint that does not fit."""


# =============================================================================================
# 1. Data: text files -> uint16 token files
# =============================================================================================


def _text_files(source: Optional[Union[str, Path]]) -> list[Path]:
    """The files of `source`: None means the bundled corpus; a .txt/.md/.gz file; a directory of them."""
    path = Path(BUNDLED_CORPUS if source is None else source)
    if not path.exists():
        raise FileNotFoundError(f"training data {str(path)!r} does not exist (expected a text file or a directory of .txt files)")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".txt", ".gz", ".md")) if path.is_dir() else [path]
    if not files:
        raise TrainingError(f"no .txt/.md/.gz files in {str(path)!r}")
    return files


def _fingerprint(files: list[Path]) -> str:
    """Changes when a file is added, removed or modified (size or modification time)."""
    fingerprint = hashlib.sha256()
    for file in files:
        stat = file.stat()
        fingerprint.update(f"{file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return fingerprint.hexdigest()


def _read_files(files: list[Path]) -> list[str]:
    texts = []
    for file in files:
        opener = gzip.open if file.suffix == ".gz" else open
        with opener(file, "rt", encoding="utf-8") as f:
            texts.append(f.read())
    return texts


def _read_hf_dataset(spec: str) -> tuple[list[str], str]:
    """The `text` column of the Hugging Face dataset `spec` = `NAME` or `NAME:CONFIG` (its train
    split, through `datasets.load_dataset`), and the dataset's own fingerprint."""
    try:
        import datasets
    except ImportError:
        raise TrainingError(f"--data hf:{spec} needs the Hugging Face `datasets` package: pip install datasets") from None
    name, _, config = spec.partition(":")
    try:
        dataset = datasets.load_dataset(name, config or None, split="train")
    except Exception as e:  # not found, no network, bad config, ...
        raise TrainingError(f"could not load the Hugging Face dataset {spec!r}: {type(e).__name__}: {e}") from e
    if "text" not in dataset.column_names:
        raise TrainingError(f"the Hugging Face dataset {spec!r} has no 'text' column (its columns: {dataset.column_names})")
    fingerprint = f"hf:{spec}:train:{getattr(dataset, '_fingerprint', None) or len(dataset)}"
    return list(dataset["text"]), fingerprint


def prepare_data(
    source: Optional[Union[str, Path]], data_dir: Union[str, Path], val_fraction: float = 0.05, tokenizer: Optional[Tokenizer] = None
) -> Path:
    """Tokenize `source` into `data_dir/{train,val}.bin` (uint16) once; reuse them afterwards.

    `source` is None (the bundled Shakespeare), a text file, a directory of text files, or
    `"hf:NAME"` / `"hf:NAME:CONFIG"` for the `text` column of a Hugging Face dataset (needs the
    `datasets` package). The files are re-tokenized only when the source changes (its
    fingerprint, kept in `meta.json`, differs).

    Each document (a file or dataset row, or a part between `<|endoftext|>` markers) ends in the
    EOT token; the last `val_fraction` of every document's tokens goes to validation, so both
    splits cover every document. Returns `data_dir`.
    """
    data_dir = Path(data_dir)
    if isinstance(source, str) and source.startswith("hf:"):
        texts, fingerprint = _read_hf_dataset(source[3:])
    else:
        files = _text_files(source)
        texts, fingerprint = None, _fingerprint(files)
    meta_path = data_dir / "meta.json"
    if meta_path.exists() and (data_dir / "train.bin").exists() and (data_dir / "val.bin").exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("fingerprint") == fingerprint and meta.get("val_fraction") == val_fraction:
            return data_dir  # prepared before from the same source: reuse
    if texts is None:
        texts = _read_files(files)
    tokenizer = tokenizer or Tokenizer.gpt2()
    train, val = [], []
    for doc in (doc for text in texts for doc in text.split("<|endoftext|>")):
        if not doc.strip():
            continue
        ids = tokenizer.encode(doc.strip("\n"), allowed_special=set()) + [EOT]
        split = len(ids) - max(1, int(len(ids) * val_fraction)) if val_fraction > 0 else len(ids)
        train += ids[:split]
        val += ids[split:]
    if len(train) < 2:
        raise TrainingError(f"the corpus {str(source or BUNDLED_CORPUS)!r} is empty: it has no text to train on")
    data_dir.mkdir(parents=True, exist_ok=True)
    for name, ids in (("train.bin", train), ("val.bin", val)):
        write_bytes_atomic(data_dir / name, np.asarray(ids, dtype=np.uint16).tobytes())
    meta = {"fingerprint": fingerprint, "val_fraction": val_fraction, "train_tokens": len(train), "val_tokens": len(val),
            "source": str(source or BUNDLED_CORPUS)}
    write_bytes_atomic(meta_path, json.dumps(meta, indent=2).encode())
    return data_dir


def load_tokens(data_dir: Union[str, Path], split: str) -> np.memmap:
    path = Path(data_dir) / f"{split}.bin"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; run prepare_data first")
    return np.memmap(path, dtype=np.uint16, mode="r")


# =============================================================================================
# 2. Batches: a pure function of (seed, step)
# =============================================================================================


@dataclass
class TrainConfig:
    """Everything a training run needs; saved in every checkpoint."""

    out_dir: str = "runs/hookgpt"
    data: Optional[str] = None  # None: the bundled Shakespeare corpus
    data_dir: Optional[str] = None  # where token files go (default: out_dir/data)
    model: dict = field(default_factory=dict)  # GPTConfig fields over DEFAULT_MODEL (or over init_from's config)
    init_from: Optional[str] = None  # start from these weights: a trainer checkpoint, or a from_pretrained name/dir
    seq_len: int = 256
    batch_size: int = 16  # rows per optimizer step (global, over all ranks and micro-steps)
    grad_accum: int = 1
    max_steps: int = 2000
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.95)
    grad_clip: float = 1.0
    seed: int = 0
    eval_interval: int = 200
    eval_batches: int = 8
    checkpoint_interval: int = 200
    log_interval: int = 10
    autocast_dtype: Optional[str] = None  # "bfloat16" / "float16"
    compile: bool = False
    restrict_vocab: bool = False
    repeat_fraction: float = 0.0
    repeat_corpus_fraction: float = 0.5  # of the repeated rows, the share that repeat a corpus span
    repeat_vocab_size: Optional[int] = None  # random units draw ids below this (None: the whole vocabulary)
    repeat_min_period: int = 8
    repeat_max_period: int = 96
    val_fraction: float = 0.05
    device: str = "auto"
    progress: bool = True

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise TrainingError(f"unknown training options {unknown}; known: {sorted(known)}")
        d = dict(d)
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(**d)

    def model_config(self, base: Optional[dict] = None) -> GPTConfig:
        """The model's GPTConfig: `model`'s fields over `base` (default: DEFAULT_MODEL)."""
        spec = {**(DEFAULT_MODEL if base is None else base), **self.model}
        preset = spec.pop("preset", None)
        try:
            return GPTConfig.preset(preset, **spec) if preset else GPTConfig.from_dict(spec)
        except (TypeError, ValueError, KeyError) as e:
            raise TrainingError(f"bad model config {self.model}: {e}") from None


def global_batch(tokens: np.ndarray, cfg: TrainConfig, step: int, split_seed: int = 0) -> np.ndarray:
    """The whole batch of `step`, `[batch_size, seq_len]` token ids, drawn from a generator seeded
    with (seed, split_seed, step).

    It does not depend on how many ranks or micro-steps share it, which is what makes resume,
    gradient accumulation and DDP exact: the data position is the step number.
    """
    rng = np.random.default_rng([cfg.seed, split_seed, step])
    n = cfg.batch_size
    starts = rng.integers(0, len(tokens) - cfg.seq_len, size=n)
    rows = np.stack([np.asarray(tokens[s : s + cfg.seq_len], dtype=np.int64) for s in starts])
    if cfg.repeat_fraction > 0:
        repeat = rng.random(n) < cfg.repeat_fraction
        vocab = rng.integers(0, cfg.repeat_vocab_size or EOT, size=(n, cfg.seq_len))  # random ids (EOT excluded)
        periods = rng.integers(cfg.repeat_min_period, cfg.repeat_max_period + 1, size=n)
        use_corpus_span = rng.random(n) < cfg.repeat_corpus_fraction
        for i in np.nonzero(repeat)[0]:
            period = min(int(periods[i]), cfg.seq_len // 2)
            unit = rows[i, :period] if use_corpus_span[i] else vocab[i, :period]
            rows[i] = np.resize(unit, cfg.seq_len)  # unit, unit, unit, ... cut to seq_len
    return rows


def shard(rows: np.ndarray, cfg: TrainConfig, micro_step: int = 0, rank: int = 0, world_size: int = 1) -> Tensor:
    """This rank's rows of one micro-step of a global batch: the batch is cut into
    `grad_accum * world_size` equal blocks; micro-step m of rank r takes block `m * world_size + r`."""
    per_step = cfg.batch_size // (cfg.grad_accum * world_size)
    first = (micro_step * world_size + rank) * per_step
    return torch.from_numpy(rows[first : first + per_step])


def get_batch(tokens: np.ndarray, cfg: TrainConfig, step: int, micro_step: int = 0, rank: int = 0, world_size: int = 1,
              split_seed: int = 0) -> Tensor:
    """The rows `[rank's share of micro_step]` of the global batch of `step`, `[rows, seq_len]`."""
    return shard(global_batch(tokens, cfg, step, split_seed), cfg, micro_step, rank, world_size)


# =============================================================================================
# 3. The objective, the optimizer, the schedule
# =============================================================================================


class LanguageModelLoss(nn.Module):
    """Mean next-token cross-entropy of `model` on a batch; the module that DDP wraps.

    With `vocab_ids` (the `restrict_vocab` option) the softmax runs over a subset of the
    vocabulary: `softmax_ids(global_batch)`, the corpus's ids plus those in the step's global
    batch (random repeated sequences bring ids from outside the corpus). The trainer computes
    that set from the whole global batch, so every micro-step and every DDP rank uses the same
    softmax, and the loss does not depend on how the batch is split. The model keeps its full
    vocabulary; only this training loss is restricted.
    """

    def __init__(self, model: HookedGPT, vocab_ids: Optional[Tensor] = None):
        super().__init__()
        self.model = model
        self.register_buffer("vocab_ids", vocab_ids, persistent=False)

    def softmax_ids(self, tokens: Tensor) -> Optional[Tensor]:
        """The sorted ids the restricted softmax runs over for `tokens`; None: all of them."""
        if self.vocab_ids is None:
            return None
        return torch.unique(torch.cat([self.vocab_ids, tokens.flatten().to(self.vocab_ids.device)]))

    def forward(self, tokens: Tensor, ids: Optional[Tensor] = None) -> Tensor:
        model = self.model
        resid = model(tokens, stop_at_layer=model.cfg.n_layers)  # [batch, pos, d_model]
        # The last position predicts nothing: leave it out before the unembedding, rather than
        # slicing (and so copying) the much larger logits afterwards.
        normalized = model.ln_final(resid[:, :-1])  # [batch, pos - 1, d_model]
        targets = tokens[:, 1:]
        if self.vocab_ids is None:
            logits = model.unembed(normalized)  # [batch, pos - 1, d_vocab]
        else:
            ids = self.softmax_ids(tokens) if ids is None else ids
            logits = normalized @ model.W_U[:, ids] + model.b_U[ids]  # [batch, pos - 1, n_ids]
            targets = torch.searchsorted(ids, targets.contiguous())
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: not on 1-D biases, LayerNorm gains or embeddings.

    nanoGPT's rule (`ndim >= 2` decays). Note that it decays the per-head attention biases `b_Q`,
    `b_K`, `b_V`, which are 2-D `[n_heads, d_head]` here. Changing the rule changes the group
    sizes, so checkpoints written under the old rule could no longer be resumed.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        (decay if param.ndim >= 2 and leaf not in ("W_E", "W_pos") else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to `lr`, then cosine decay to `min_lr` at `max_steps`."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


# =============================================================================================
# 4. Checkpoints: written atomically, checked on load
# =============================================================================================


def save_checkpoint(path: Path, state: dict) -> None:
    """`torch.save` to a temporary file in the same folder, then `os.replace`: a reader (or a
    process killed mid-write) only ever sees the old checkpoint or the new one, whole."""
    with atomic_write(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Union[str, Path]) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
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
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


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
    return torch.device(name)


@torch.no_grad()
def evaluate(model: HookedGPT, val_tokens: np.ndarray, cfg: TrainConfig, device: torch.device) -> float:
    """Mean full-vocabulary loss on `eval_batches` fixed validation batches."""
    was_training = model.training
    model.eval()
    losses = []
    plain = dataclasses.replace(cfg, repeat_fraction=0.0, grad_accum=1)
    for i in range(cfg.eval_batches):
        batch = get_batch(val_tokens, plain, step=i, split_seed=1).to(device)
        losses.append(float(model(batch, return_type="loss")))
    model.train(was_training)
    return float(np.mean(losses))


def _validate(cfg: TrainConfig, model_cfg: GPTConfig, world_size: int) -> None:
    for name in ("batch_size", "grad_accum", "max_steps", "eval_interval", "eval_batches", "checkpoint_interval", "log_interval"):
        if getattr(cfg, name) < 1:
            raise TrainingError(f"{name} must be at least 1, got {getattr(cfg, name)}")
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
    if not 0 <= cfg.val_fraction < 1:
        raise TrainingError(f"val_fraction must be in [0, 1), got {cfg.val_fraction}")
    if cfg.autocast_dtype not in (None, "bfloat16"):
        # float16 would need loss scaling (a GradScaler), which this trainer does not do
        raise TrainingError(f"autocast_dtype must be None or 'bfloat16', got {cfg.autocast_dtype!r}")


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    """Train a model as `cfg` says; return a summary (final losses, steps, tokens, paths).

    With `resume`, continue from `out_dir/ckpt.pt` (its model config must match `cfg`); the
    resumed run computes the same losses as one that was never interrupted. Without it, an
    existing checkpoint in `out_dir` is an error rather than something to overwrite.
    """
    device = _resolve_device(cfg.device)
    info = _init_distributed(device)
    out_dir = Path(cfg.out_dir)

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
    if state is not None and state["model_config"] != model_cfg.to_dict():
        raise TrainingError(
            f"checkpoint {ckpt_path} was trained with model config {state['model_config']}, "
            f"but this run asks for {model_cfg.to_dict()}; use the same config or a new out_dir"
        )
    if not resume and ckpt_path.exists():
        raise TrainingError(f"{ckpt_path} already exists; pass --resume to continue that run, or choose another out_dir")

    data_dir = Path(cfg.data_dir or out_dir / "data")
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in out_dir.glob(f".{CHECKPOINT_NAME}.*.tmp"):  # left by a process killed mid-save
            stale.unlink()
        prepare_data(cfg.data, data_dir, cfg.val_fraction)
    if info.world_size > 1:
        dist.barrier()
    train_tokens, val_tokens = load_tokens(data_dir, "train"), load_tokens(data_dir, "val")
    if len(train_tokens) <= cfg.seq_len:
        raise TrainingError(f"the training split has {len(train_tokens)} tokens, fewer than seq_len={cfg.seq_len} + 1")
    if len(val_tokens) <= cfg.seq_len:
        warnings.warn(f"the validation split has only {len(val_tokens)} tokens; evaluating on the training split")
        val_tokens = train_tokens

    torch.manual_seed(cfg.seed)
    model = HookedGPT(model_cfg).to(device)
    if init_weights is not None:
        model.load_state_dict(init_weights)
    vocab_ids = None
    if cfg.restrict_vocab:
        vocab_ids = torch.from_numpy(np.unique(np.asarray(train_tokens)).astype(np.int64)).to(device)
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

    # Ctrl-C: finish the step, save a checkpoint, stop (a second Ctrl-C stops at once).
    interrupted = {"flag": False}
    catch_sigint = _is_main_thread()  # Python sets signal handlers from the main thread only
    old_handler = signal.getsignal(signal.SIGINT) or signal.default_int_handler

    def on_sigint(signum, frame):
        interrupted["flag"] = True
        signal.signal(signal.SIGINT, old_handler)

    if catch_sigint:
        signal.signal(signal.SIGINT, on_sigint)

    def checkpoint(step: int) -> None:
        if info.is_main:
            save_checkpoint(ckpt_path, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "step": step,  # also the data position: the batches of step s are a function of s
                "tokens_seen": tokens_seen, "rng": _rng_state(),
                "train_config": cfg.to_dict(), "model_config": model_cfg.to_dict(),
            })

    tokens_per_step = cfg.batch_size * cfg.seq_len
    history: list[dict] = []
    bar = tqdm(range(start_step, cfg.max_steps), initial=start_step, total=cfg.max_steps,
               disable=not (cfg.progress and info.is_main), desc="train", dynamic_ncols=True)
    model.train()
    t0, step = time.perf_counter(), start_step
    try:
        for step in bar:
            lr = scheduler.get_last_lr()[0]
            rows = global_batch(train_tokens, cfg, step)  # [batch_size, seq_len]; each rank takes its share
            ids = objective.softmax_ids(torch.from_numpy(rows))  # None unless restrict_vocab
            loss_sum = torch.zeros((), device=device)
            for micro in range(cfg.grad_accum):
                batch = shard(rows, cfg, micro, info.rank, info.world_size).to(device)
                sync = contextlib.nullcontext()
                if info.world_size > 1 and micro < cfg.grad_accum - 1:
                    sync = step_fn.no_sync()  # all-reduce the gradients once, after the last micro-step
                with sync, autocast:
                    loss = step_fn(batch, ids) / cfg.grad_accum
                loss.backward()
                loss_sum += loss.detach()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            tokens_seen += tokens_per_step
            if info.world_size > 1:  # the mean loss over ranks; and stop everywhere if any rank saw Ctrl-C
                stop = torch.tensor(float(interrupted["flag"]), device=device)
                dist.all_reduce(loss_sum)
                dist.all_reduce(stop)
                loss_sum /= info.world_size
                interrupted["flag"] = bool(stop > 0)
            record = {"step": step + 1, "loss": float(loss_sum), "lr": lr, "tokens": tokens_seen}
            if (step + 1) % cfg.eval_interval == 0 or step + 1 == cfg.max_steps:
                record["val_loss"] = evaluate(model, val_tokens, cfg, device)
            history.append(record)
            if info.is_main:
                with open(log_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                if (step + 1 - start_step) % cfg.log_interval == 0 or "val_loss" in record:
                    elapsed = time.perf_counter() - t0
                    bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{(step + 1 - start_step) * tokens_per_step / elapsed:,.0f}")
            if (step + 1) % cfg.checkpoint_interval == 0 or step + 1 == cfg.max_steps or interrupted["flag"]:
                checkpoint(step + 1)
            if interrupted["flag"]:
                if info.is_main:
                    bar.write(f"interrupted: checkpoint saved at step {step + 1} in {ckpt_path}; continue with --resume")
                break
    finally:
        bar.close()
        if catch_sigint:
            signal.signal(signal.SIGINT, old_handler)

    summary = {"steps": history[-1]["step"] if history else start_step, "tokens_seen": tokens_seen, "history": history,
               "checkpoint": str(ckpt_path), "log": str(log_path), "interrupted": interrupted["flag"]}
    vals = [r["val_loss"] for r in history if "val_loss" in r]
    if history:
        summary["final_train_loss"] = history[-1]["loss"]
    if vals:
        summary["final_val_loss"] = vals[-1]
    if info.is_main and history and not interrupted["flag"]:
        write_loss_curve(log_path, out_dir / "loss.html")
    summary["model"] = model
    return summary


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
    p.add_argument("--data", help="a text file, a directory of .txt files, or hf:NAME[:CONFIG] for a Hugging Face dataset's "
                   "'text' column (needs `datasets`); default: the bundled Shakespeare")
    p.add_argument("--out", dest="out_dir", help="run directory for token files, checkpoints, log.jsonl and loss.html")
    p.add_argument("--resume", action="store_true", help="continue from OUT/ckpt.pt")
    p.add_argument("--init-from", dest="init_from", help="start from these weights instead of a random init: a trainer "
                   "checkpoint (or run directory), a shipped model name, or a model directory (fine-tuning)")
    for name, typ in (("max_steps", int), ("batch_size", int), ("seq_len", int), ("grad_accum", int), ("lr", float),
                      ("min_lr", float), ("warmup_steps", int), ("weight_decay", float), ("grad_clip", float), ("seed", int),
                      ("eval_interval", int), ("eval_batches", int), ("checkpoint_interval", int), ("repeat_fraction", float),
                      ("repeat_corpus_fraction", float), ("repeat_min_period", int), ("repeat_max_period", int),
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
        except json.JSONDecodeError as e:
            raise TrainingError(f"config file {args.config!r} is not valid JSON: {e}") from None
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
