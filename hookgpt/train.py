"""Training: text -> token files -> model + AdamW -> a loop that logs, checkpoints and resumes.

The seed's training demo ("load a dataset, tokenize it, make a model and an optimizer, loop and
log the loss"), grown into a trainer in the style of nanoGPT:

1. `prepare_data` tokenizes text files (or the bundled Shakespeare) once into memory-mapped
   uint16 token files, `train.bin` and `val.bin`, so corpora larger than RAM work.
2. `get_batch` draws a batch for a given step from a seeded generator. The data position is the
   step number, so a resumed run sees exactly the batches an uninterrupted one would, and under
   DDP every rank takes its own rows of the same global batch.
3. `train` runs AdamW (no weight decay on biases, LayerNorm and embeddings) with linear warmup
   and cosine decay, gradient clipping and accumulation, optional autocast, and checkpoints
   atomically every `checkpoint_interval` steps, at the end, and on Ctrl-C.

Run it with `hookgpt train` (see `hookgpt train --help`), or with `torchrun --nproc_per_node N
-m hookgpt.train ...` for DistributedDataParallel (gloo on CPU, nccl on GPU).

Two options exist for small machines, both off by default (the shipped model's card says which it used):
- `restrict_vocab`: the softmax runs over the token ids that occur in the corpus (plus those in
  the batch) instead of all 50,257; the unembedding dominates the cost of a small model.
- `repeat_fraction`: a fraction of rows are random token sequences repeated with a random period
  (or a corpus span repeated), which makes induction heads form sooner.
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
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from hookgpt.config import GPTConfig
from hookgpt.model import HookedGPT
from hookgpt.tokenizer import Tokenizer

BUNDLED_CORPUS = Path(__file__).parent / "data" / "corpus" / "shakespeare.txt.gz"
CHECKPOINT_NAME = "ckpt.pt"
EOT = 50256


class TrainingError(ValueError):
    """Bad training input: an empty corpus, a bad config, a checkpoint that does not fit."""


# =============================================================================================
# 1. Data: text files -> uint16 token files
# =============================================================================================


def _read_documents(source: Optional[Union[str, Path]]) -> tuple[list[str], str]:
    """The documents of `source` (None: the bundled corpus; a .txt/.gz file; a directory of them)
    and a fingerprint of the source that changes when the files do."""
    if source is None:
        source = BUNDLED_CORPUS
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"training data {str(path)!r} does not exist (expected a text file or a directory of .txt files)")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".txt", ".gz", ".md")) if path.is_dir() else [path]
    if not files:
        raise TrainingError(f"no .txt/.md/.gz files in {str(path)!r}")
    documents, fingerprint = [], hashlib.sha256()
    for file in files:
        stat = file.stat()
        fingerprint.update(f"{file}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        opener = gzip.open if file.suffix == ".gz" else open
        with opener(file, "rt", encoding="utf-8") as f:
            documents += f.read().split("<|endoftext|>")
    return documents, fingerprint.hexdigest()


def prepare_data(
    source: Optional[Union[str, Path]], data_dir: Union[str, Path], val_fraction: float = 0.05, tokenizer: Optional[Tokenizer] = None
) -> Path:
    """Tokenize `source` into `data_dir/{train,val}.bin` (uint16) once; reuse them afterwards.

    Each document (a file, or a part between `<|endoftext|>` markers) ends in the EOT token; the
    last `val_fraction` of every document's tokens goes to validation, so both splits cover
    every document. Returns `data_dir`.
    """
    data_dir = Path(data_dir)
    documents, fingerprint = _read_documents(source)
    meta_path = data_dir / "meta.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("fingerprint") == fingerprint and meta.get("val_fraction") == val_fraction:
            return data_dir
    tokenizer = tokenizer or Tokenizer.gpt2()
    train, val = [], []
    for doc in documents:
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
        _atomic_write_bytes(data_dir / name, np.asarray(ids, dtype=np.uint16).tobytes())
    meta = {"fingerprint": fingerprint, "val_fraction": val_fraction, "train_tokens": len(train), "val_tokens": len(val),
            "source": str(source or BUNDLED_CORPUS)}
    _atomic_write_bytes(meta_path, json.dumps(meta, indent=2).encode())
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
    model: dict = field(default_factory=lambda: dict(n_layers=2, d_model=128, n_heads=4, n_ctx=256, tie_embeddings=True))
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

    def model_config(self) -> GPTConfig:
        spec = dict(self.model)
        preset = spec.pop("preset", None)
        return GPTConfig.preset(preset, **spec) if preset else GPTConfig(**spec)


def get_batch(tokens: np.ndarray, cfg: TrainConfig, step: int, micro_step: int = 0, rank: int = 0, world_size: int = 1,
              split_seed: int = 0) -> Tensor:
    """The rows `[rank's share of micro_step]` of the global batch of `step`, `[rows, seq_len]`.

    The global batch is drawn from a generator seeded with (seed, step): it does not depend on
    how many ranks or micro-steps share it, which is what makes resume and DDP exact.
    """
    rng = np.random.default_rng([cfg.seed, split_seed, step])
    n = cfg.batch_size
    starts = rng.integers(0, len(tokens) - cfg.seq_len, size=n)
    rows = np.stack([np.asarray(tokens[s : s + cfg.seq_len], dtype=np.int64) for s in starts])
    if cfg.repeat_fraction > 0:
        repeat = rng.random(n) < cfg.repeat_fraction
        vocab = rng.integers(0, EOT, size=(n, cfg.seq_len))  # random ids over the whole vocabulary
        periods = rng.integers(cfg.repeat_min_period, cfg.repeat_max_period + 1, size=n)
        use_corpus_span = rng.random(n) < 0.5
        for i in np.nonzero(repeat)[0]:
            period = min(int(periods[i]), cfg.seq_len // 2)
            unit = rows[i, :period] if use_corpus_span[i] else vocab[i, :period]
            rows[i] = np.resize(unit, cfg.seq_len)  # unit, unit, unit, ... cut to seq_len
    per_step = n // (cfg.grad_accum * world_size)
    first = (micro_step * world_size + rank) * per_step
    return torch.from_numpy(rows[first : first + per_step])


# =============================================================================================
# 3. The objective, the optimizer, the schedule
# =============================================================================================


class LanguageModelLoss(nn.Module):
    """Mean next-token cross-entropy of `model` on a batch; the module that DDP wraps.

    With `vocab_ids` the softmax runs over those ids plus the ids present in the batch (the
    model keeps its full vocabulary; only this training loss is restricted).
    """

    def __init__(self, model: HookedGPT, vocab_ids: Optional[Tensor] = None):
        super().__init__()
        self.model = model
        self.register_buffer("vocab_ids", vocab_ids, persistent=False)

    def forward(self, tokens: Tensor) -> Tensor:
        if self.vocab_ids is None:
            return self.model(tokens, return_type="loss")
        model = self.model
        resid = model(tokens, stop_at_layer=model.cfg.n_layers)  # [batch, pos, d_model]
        ids = torch.unique(torch.cat([self.vocab_ids, tokens.flatten()]))  # sorted
        normalized = model.ln_final(resid[:, :-1])
        logits = normalized @ model.W_U[:, ids] + model.b_U[ids]  # [batch, pos - 1, n_ids]
        targets = torch.searchsorted(ids, tokens[:, 1:].contiguous())
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: not on biases, LayerNorm gains or embeddings."""
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


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_checkpoint(path: Path, state: dict) -> None:
    """`torch.save` to a temporary file in the same folder, then `os.replace`: a reader (or a
    process killed mid-write) only ever sees the old checkpoint or the new one, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


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
    if cfg.seq_len > model_cfg.n_ctx:
        raise TrainingError(f"seq_len={cfg.seq_len} is longer than the model's context n_ctx={model_cfg.n_ctx}")
    if cfg.seq_len < 2:
        raise TrainingError(f"seq_len must be at least 2, got {cfg.seq_len}")
    if cfg.batch_size % (cfg.grad_accum * world_size):
        raise TrainingError(
            f"batch_size={cfg.batch_size} must be divisible by grad_accum * world_size = {cfg.grad_accum} * {world_size}"
        )
    if cfg.max_steps < 1:
        raise TrainingError(f"max_steps must be at least 1, got {cfg.max_steps}")


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    """Train a model as `cfg` says; return a summary (final losses, steps, tokens, paths).

    With `resume`, continue from `out_dir/ckpt.pt` (its model config must match `cfg`).
    """
    device = _resolve_device(cfg.device)
    info = _init_distributed(device)
    out_dir = Path(cfg.out_dir)
    model_cfg = cfg.model_config()
    _validate(cfg, model_cfg, info.world_size)

    data_dir = Path(cfg.data_dir or out_dir / "data")
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        prepare_data(cfg.data, data_dir, cfg.val_fraction)
    if info.world_size > 1:
        dist.barrier()
    train_tokens, val_tokens = load_tokens(data_dir, "train"), load_tokens(data_dir, "val")
    if len(train_tokens) <= cfg.seq_len:
        raise TrainingError(f"the training split has {len(train_tokens)} tokens, fewer than seq_len={cfg.seq_len} + 1")
    if len(val_tokens) <= cfg.seq_len:
        val_tokens = train_tokens  # tiny corpora: evaluate on the training split (documented in the log)

    ckpt_path = out_dir / CHECKPOINT_NAME
    state = load_checkpoint(ckpt_path) if resume else None
    if state is not None and state["model_config"] != model_cfg.to_dict():
        raise TrainingError(
            f"checkpoint {ckpt_path} was trained with model config {state['model_config']}, "
            f"but this run asks for {model_cfg.to_dict()}; use the same config or a new out_dir"
        )

    torch.manual_seed(cfg.seed)
    model = HookedGPT(model_cfg).to(device)
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

    log_path = out_dir / "log.jsonl"
    interrupted = {"flag": False}

    def on_sigint(signum, frame):
        interrupted["flag"] = True

    old_handler = signal.signal(signal.SIGINT, on_sigint) if info.is_main and _is_main_thread() else None

    def checkpoint(step: int) -> None:
        if info.is_main:
            save_checkpoint(ckpt_path, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "step": step, "tokens_seen": tokens_seen, "rng": _rng_state(),
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
            loss_sum = torch.zeros((), device=device)
            for micro in range(cfg.grad_accum):
                batch = get_batch(train_tokens, cfg, step, micro, info.rank, info.world_size).to(device)
                sync = contextlib.nullcontext()
                if info.world_size > 1 and micro < cfg.grad_accum - 1:
                    sync = step_fn.no_sync()
                with sync, autocast:
                    loss = step_fn(batch) / cfg.grad_accum
                loss.backward()
                loss_sum += loss.detach()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            tokens_seen += tokens_per_step
            if info.world_size > 1:
                dist.all_reduce(loss_sum)
                loss_sum /= info.world_size
            record = {"step": step + 1, "loss": float(loss_sum), "lr": scheduler.get_last_lr()[0], "tokens": tokens_seen}
            if (step + 1) % cfg.eval_interval == 0 or step + 1 == cfg.max_steps:
                record["val_loss"] = evaluate(model, val_tokens, cfg, device)
            history.append(record)
            if info.is_main:
                with open(log_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                if (step + 1 - start_step) % cfg.log_interval == 0 or "val_loss" in record:
                    elapsed = time.perf_counter() - t0
                    bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{(step + 1 - start_step) * tokens_per_step / elapsed:,.0f}")
            if (step + 1) % cfg.checkpoint_interval == 0 or step + 1 == cfg.max_steps:
                checkpoint(step + 1)
            if interrupted["flag"]:
                checkpoint(step + 1)
                bar.write(f"interrupted: checkpoint saved at step {step + 1} in {ckpt_path}; continue with --resume")
                break
    finally:
        bar.close()
        if old_handler is not None:
            signal.signal(signal.SIGINT, old_handler)

    summary = {"steps": history[-1]["step"] if history else start_step, "tokens_seen": tokens_seen, "history": history,
               "checkpoint": str(ckpt_path), "log": str(log_path)}
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


def read_log(log_path: Union[str, Path]) -> list[dict]:
    """The records of a run's `log.jsonl`; a resumed run's repeated steps keep their last record."""
    records: dict[int, dict] = {}
    with open(log_path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                records[r["step"]] = r
    return [records[s] for s in sorted(records)]


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
    _atomic_write_bytes(Path(html_path), html.encode())
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
    model.cfg.dtype = getattr(torch, dtype)
    model.save_pretrained(str(out_dir))
    return model


# =============================================================================================
# 7. Command line: `hookgpt train ...` and `torchrun -m hookgpt.train ...`
# =============================================================================================


def build_arg_parser():
    import argparse

    p = argparse.ArgumentParser(prog="hookgpt train", description="Train a GPT-2 style model with hookgpt's trainer.")
    p.add_argument("--config", help="JSON file of TrainConfig fields (command-line options override it)")
    p.add_argument("--data", help="a text file or a directory of .txt files (default: the bundled Shakespeare)")
    p.add_argument("--out", dest="out_dir", help="run directory for token files, checkpoints, log.jsonl and loss.html")
    p.add_argument("--resume", action="store_true", help="continue from OUT/ckpt.pt")
    for name, typ in (("max_steps", int), ("batch_size", int), ("seq_len", int), ("grad_accum", int), ("lr", float),
                      ("min_lr", float), ("warmup_steps", int), ("weight_decay", float), ("grad_clip", float), ("seed", int),
                      ("eval_interval", int), ("eval_batches", int), ("checkpoint_interval", int), ("repeat_fraction", float),
                      ("autocast_dtype", str), ("device", str)):
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
    model = dict(base.get("model", TrainConfig().model))
    for key in ("n_layers", "d_model", "n_heads", "n_ctx", "attn_only"):
        if getattr(args, key, None) is not None:
            model[key] = getattr(args, key)
    base["model"] = model
    return TrainConfig.from_dict(base)


def main(argv: Optional[list[str]] = None) -> int:
    args = build_arg_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        summary = train(cfg, resume=args.resume)
    except (TrainingError, FileNotFoundError) as e:
        print(f"hookgpt train: error: {e}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        losses = {k: round(v, 4) for k, v in summary.items() if k.startswith("final_")}
        print(json.dumps({"steps": summary["steps"], "tokens_seen": summary["tokens_seen"], **losses, "checkpoint": summary["checkpoint"]}))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
