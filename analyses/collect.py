"""Collect activations over a dataset and store them on disk, in safetensors shards.

    paths = collect_activations(model, tokens, names_filter=["blocks.3.hook_resid_post"], out_dir="acts/")
    acts = load_activations("acts/")          # {"blocks.3.hook_resid_post": [n, pos, d_model], "tokens": ...}

The dataset is a tensor or array (a numpy memmap is read lazily) of token ids `[n, seq]`, or a
flat file of uint16 token ids (as `hookgpt.train` writes them) cut into rows of `seq_len`.
Rows go through the model in batches; every `rows_per_shard` rows become one file holding each
chosen activation `[rows, ...]`, the `tokens` `[rows, seq]` and each row's index in the dataset
`row_index` `[rows]`.

- Writes are atomic (a temporary file, then `os.replace`), so a shard on disk is complete, and an
  interrupted collection resumes: a shard already there from the same collection, holding the
  same token rows, is skipped.
- A collection is identified by a fingerprint of everything its numbers depend on: the model's
  weights and config, the token data, the hook names, the dtype and the row layout. Shards of
  `prefix` in `out_dir` with another fingerprint (another model saved under the same default
  name, another dataset, dtype or row count) are replaced, never mixed in; `load_activations`
  refuses a set of shards from different collections.
- Under `torchrun` (environment variables RANK and WORLD_SIZE) each process takes its own
  contiguous slice of the rows and writes its own shards (`...-rank002-00007.safetensors`).
- The forward pass stops after the last layer that holds a chosen activation.
"""

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor

from analyses._common import progress
from hookgpt.atomic import atomic_write, remove_dead_temporaries
from hookgpt.errors import ArgumentError, UnknownNameError
from hookgpt.loading import write_safetensors
from hookgpt.model import HookedGPT

DataSource = Union[Tensor, np.ndarray, str, os.PathLike]
NamesFilter = Any  # as `run_with_cache`: a name, a list of names, or a function name -> bool


def token_rows(data: DataSource, seq_len: Optional[int] = None) -> Union[Tensor, np.ndarray]:
    """The dataset as rows `[n, seq]`: tensors and arrays as given (a 1-D one cut into rows of
    `seq_len`), a path as a read-only uint16 memmap cut into rows of `seq_len` (a last partial row is
    dropped)."""
    if isinstance(data, (str, os.PathLike)):
        if seq_len is None:
            raise ArgumentError("a token file needs seq_len: the length of each row")
        data = np.memmap(data, dtype=np.uint16, mode="r")
    if not isinstance(data, (Tensor, np.ndarray)):
        raise ArgumentError(f"data must be a tensor or array of token ids [n, seq], or a token file path; got {type(data).__name__}")
    if data.ndim == 1:
        if seq_len is None:
            raise ArgumentError("a flat token array needs seq_len: the length of each row")
        n = data.shape[0] // seq_len
        data = data[: n * seq_len].reshape(n, seq_len)
    if data.ndim != 2:
        raise ArgumentError(f"data: token data must be [n, seq] (or flat with seq_len), got shape {tuple(data.shape)}")
    is_int = (not data.dtype.is_floating_point and not data.dtype.is_complex and data.dtype != torch.bool) if isinstance(data, Tensor) else np.issubdtype(data.dtype, np.integer)
    if not is_int:
        raise ArgumentError(f"data: token ids must be integers, got dtype {data.dtype}")
    if seq_len is not None and data.shape[1] != seq_len:
        raise ArgumentError(f"rows have length {data.shape[1]}, but seq_len={seq_len}")
    return data


def distributed_rank() -> tuple[int, int]:
    """(rank, world_size) from torchrun's environment, (0, 1) outside it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _stop_layer(model: HookedGPT, names: list[str]) -> Optional[int]:
    """The layer after which no chosen hook fires (None: run to the end, e.g. for ln_final)."""
    last = -1
    for name in names:
        match = re.match(r"blocks\.(\d+)\.", name)
        if match:
            last = max(last, int(match.group(1)))
        elif name not in ("hook_embed", "hook_pos_embed"):
            return None
    return last + 1


def _write_atomic(tensors: dict[str, Tensor], path: Path, metadata: dict[str, str]) -> None:
    with atomic_write(path) as tmp:
        write_safetensors(tensors, tmp, metadata=metadata)


def model_fingerprint(model: HookedGPT) -> str:
    """sha256 of the model's config and every weight (the same weights give the same hash)."""
    digest = hashlib.sha256(json.dumps(model.cfg.to_dict(), sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def data_fingerprint(rows: Union[Tensor, np.ndarray], n_samples: int = 64) -> str:
    """sha256 of the dataset's shape and of up to `n_samples` rows spread over it (each shard
    also stores its own rows, which a rerun compares exactly)."""
    n = rows.shape[0]
    picks = sorted({int(i) for i in np.linspace(0, n - 1, num=min(n, n_samples))}) if n else []
    digest = hashlib.sha256(str(tuple(rows.shape)).encode())
    for i in picks:
        digest.update(np.asarray(rows[i]).astype(np.int64).tobytes())
    return digest.hexdigest()


def _shard_metadata(path: Path) -> Optional[dict[str, str]]:
    """The metadata of a readable shard, or None (missing, truncated, not safetensors)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception:
        return None


def _already_written(path: Path, metadata: dict[str, str], tokens: Tensor) -> bool:
    """Whether `path` is this shard of this collection, holding these token rows (so a rerun may
    skip it)."""
    if _shard_metadata(path) != metadata:
        return False
    with safe_open(str(path), framework="pt") as f:
        return "tokens" in f.keys() and torch.equal(f.get_tensor("tokens"), tokens)


def _remove_stale_shards(out: Path, prefix: str, collection: str) -> None:
    """Delete shards of `prefix` in `out` written by another collection (they would be mixed in)."""
    for path in out.glob(f"{prefix}-*.safetensors"):
        if not re.fullmatch(rf"{re.escape(prefix)}(-rank\d+)?-\d+\.safetensors", path.name):
            continue
        metadata = _shard_metadata(path)
        if metadata is None or metadata.get("collection") != collection:
            path.unlink(missing_ok=True)


def collect_activations(
    model: HookedGPT,
    data: DataSource,
    names_filter: NamesFilter,
    out_dir: Union[str, os.PathLike],
    seq_len: Optional[int] = None,
    batch_size: int = 8,
    rows_per_shard: int = 1024,
    dtype: Optional[torch.dtype] = None,
    prefix: str = "activations",
    rank: Optional[int] = None,
    world_size: Optional[int] = None,
    disable: Optional[bool] = None,
) -> list[Path]:
    """Run `model` over `data` and write the activations that pass `names_filter` to
    safetensors shards in `out_dir`. Returns this process's shard paths, in row order.

    Args:
        model: a HookedGPT.
        data: token ids `[n, seq]` (tensor, array or memmap), or a uint16 token file / flat array
            with `seq_len`.
        names_filter: which hook points to store (as in `run_with_cache`).
        out_dir: created if needed.
        batch_size: rows per forward pass.
        rows_per_shard: rows per file.
        dtype: store activations in this dtype (e.g. torch.float16); default as computed.
        rank, world_size: this process's share of the rows; default from RANK / WORLD_SIZE.
        disable: hide the progress bar (default: hidden when not in a terminal).
    """
    rows = token_rows(data, seq_len)
    env_rank, env_world = distributed_rank()
    rank = env_rank if rank is None else rank
    world_size = env_world if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ArgumentError(f"rank {rank} is not in [0, world_size={world_size})")
    n = rows.shape[0]
    first, last = n * rank // world_size, n * (rank + 1) // world_size  # this rank's rows

    _, probe_fwd, _ = model.get_caching_hooks(names_filter)  # an unknown name raises a KeyError with close matches
    names = [name for name, _ in probe_fwd]
    if not names:
        raise ArgumentError(f"names_filter {names_filter!r} selects no hook point")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ArgumentError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(rows_per_shard, bool) or not isinstance(rows_per_shard, int) or rows_per_shard < 1:
        raise ArgumentError(f"rows_per_shard must be a positive integer, got {rows_per_shard!r}")
    stop = _stop_layer(model, names)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rank_part = f"-rank{rank:03d}" if world_size > 1 else ""
    collection = hashlib.sha256(
        json.dumps(
            dict(model=model_fingerprint(model), data=data_fingerprint(rows), names=names, dtype=str(dtype),
                 rows_per_shard=rows_per_shard, world_size=world_size),
            sort_keys=True,
        ).encode()
    ).hexdigest()
    _remove_stale_shards(out, prefix, collection)
    remove_dead_temporaries(out)  # half-written shards of a killed run

    paths = []
    shard_starts = list(range(first, last, rows_per_shard))
    bar = progress(total=last - first, disable=disable, desc="collecting activations", unit="row")
    for shard, start in enumerate(shard_starts):
        end = min(start + rows_per_shard, last)
        path = out / f"{prefix}{rank_part}-{shard:05d}.safetensors"
        paths.append(path)
        metadata = dict(
            model=str(getattr(model.cfg, "model_name", "")),
            names=",".join(names),
            first_row=str(start),
            rows=str(end - start),
            rank=str(rank),
            world_size=str(world_size),
            collection=collection,
        )
        shard_tokens = torch.as_tensor(np.asarray(rows[start:end]).astype(np.int64))
        if _already_written(path, metadata, shard_tokens):  # by an earlier, interrupted run (writes are atomic)
            bar.update(end - start)
            continue
        parts: dict[str, list[Tensor]] = {name: [] for name in names}
        tokens = []
        for batch_start in range(start, end, batch_size):
            batch = torch.as_tensor(np.asarray(rows[batch_start : min(batch_start + batch_size, end)]).astype(np.int64))
            with torch.no_grad():
                _, cache = model.run_with_cache(
                    batch, names_filter=names, return_type=None, stop_at_layer=stop, return_cache_object=False
                )
            for name in names:
                parts[name].append(cache[name].to("cpu", dtype or cache[name].dtype))
            tokens.append(batch)
            bar.update(batch.shape[0])
        tensors = {name: torch.cat(chunks) for name, chunks in parts.items()}
        tensors["tokens"] = torch.cat(tokens)
        tensors["row_index"] = torch.arange(start, end)
        _write_atomic(tensors, path, metadata)
    bar.close()
    return paths


def _shard_paths(source: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]) -> list[Path]:
    if isinstance(source, (str, os.PathLike)):
        source = Path(source)
        if not source.exists():
            raise FileNotFoundError(f"no activation shards at {source}: it does not exist")
        paths = sorted(source.glob("*.safetensors")) if source.is_dir() else [source]
    else:
        paths = [Path(p) for p in source]
    if not paths:
        raise FileNotFoundError(f"no .safetensors shards in {source}")

    def first_row(path: Path) -> int:
        metadata = _shard_metadata(path)
        if metadata is None:
            raise ArgumentError(f"{path} is not a readable safetensors shard (truncated or corrupt?)")
        return int(metadata.get("first_row", 0))

    return sorted(paths, key=first_row)


def iter_activation_shards(
    source: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]], names: Optional[Sequence[str]] = None
) -> Iterator[dict[str, Tensor]]:
    """Yield the shards of a directory (or a list of shard files) one at a time, in row order,
    each as {name: tensor} (only `names` plus tokens/row_index when given)."""
    paths = _shard_paths(source)
    collections = {path.name: (_shard_metadata(path) or {}).get("collection") for path in paths}
    if len(set(collections.values())) > 1:
        raise ArgumentError(
            f"the shards in {source} come from different collections (another model, dataset, hook names, dtype or "
            f"row count) and cannot be combined: {collections}; collect again into an empty directory"
        )
    for path in paths:
        shard = load_file(str(path))
        if names is not None:
            missing = set(names) - set(shard)
            if missing:
                raise UnknownNameError(f"{path} has no {sorted(missing)}; it holds {sorted(shard)}")
            shard = {k: v for k, v in shard.items() if k in set(names) | {"tokens", "row_index"}}
        yield shard


def load_activations(
    source: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]], names: Optional[Sequence[str]] = None
) -> dict[str, Tensor]:
    """Read shards back into one tensor per name (rows concatenated in dataset order), plus
    `tokens` and `row_index`."""
    shards = list(iter_activation_shards(source, names))
    return {key: torch.cat([shard[key] for shard in shards]) for key in shards[0]}
