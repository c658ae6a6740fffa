"""Where an SAE's training activations come from: a tensor, `analyses.collect` shards, or the model.

Every source answers one question: *which activations make up the global batch of step `s`?*
The answer is a function of `(seed, s)` alone, never of what came before, so

- a resumed run sees exactly the batches an uninterrupted one would (no buffer state to save);
- under `torchrun` every rank takes its own slice of the same global batch, and the slices
  together are the batch a single process would use (so 1 and N processes train the same SAE).

Three sources:

- `TensorActivations(acts)`: activations `[n, d_in]` already in memory (e.g. synthetic data).
- `ShardActivations(dir, hook_name)`: the safetensors shards `analyses.collect.collect_activations`
  writes. Each shard's tensor is memory-mapped straight from the file (no copy in RAM), so a
  dataset larger than memory works: a batch reads just its rows. Under `torchrun` each rank
  reads only its own rows of each batch, from whichever shards hold them.
- `ModelActivations(model, tokens, hook_name)`: streamed from the model. Token rows are drawn in
  chunks; one forward pass per chunk fills a buffer of `rows_per_chunk * seq_len` activations,
  which is shuffled and served in batches (SAELens's mixing buffer, made a function of the
  chunk index). Under `torchrun` every rank runs the chunk's forward pass and keeps its slice.

Epochs over a finite source are reshuffled with a seeded permutation per epoch.
"""

import json
import os
import struct
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from analyses.collect import DataSource, _shard_paths, _stop_layer, token_rows
from hookgpt.model import HookedGPT

PathLike = Union[str, os.PathLike]

# safetensors dtype names -> (numpy dtype to memory-map with, torch dtype to view it as)
_SAFETENSORS_DTYPES = {
    "F64": (np.float64, torch.float64),
    "F32": (np.float32, torch.float32),
    "F16": (np.float16, torch.float16),
    "BF16": (np.uint16, torch.bfloat16),  # numpy has no bfloat16: map the bits, view them in torch
}


def _rank_slice(batch_size: int, rank: int, world_size: int) -> tuple[int, int]:
    if batch_size % world_size:
        raise ValueError(f"batch_size={batch_size} must be divisible by the number of processes ({world_size})")
    share = batch_size // world_size
    return rank * share, (rank + 1) * share


class _PermutedArrays:
    """Activations held in a list of 2-D arrays `[n_i, d_in]` (tensors or memmaps), read as one
    array in a seeded order that is reshuffled every epoch."""

    def __init__(self, arrays: Sequence[Any], seed: int, bfloat16: bool = False):
        if not arrays:
            raise ValueError("no activations: the source is empty")
        self.arrays = list(arrays)
        self.sizes = [int(a.shape[0]) for a in self.arrays]
        self.starts = np.cumsum([0] + self.sizes)
        self.n = int(self.starts[-1])
        self.d_in = int(self.arrays[0].shape[1])
        for a in self.arrays:
            if a.ndim != 2 or a.shape[1] != self.d_in:
                raise ValueError(f"activation arrays must all be [n, d_in={self.d_in}], got shape {tuple(a.shape)}")
        if self.n == 0:
            raise ValueError("no activations: the source is empty")
        self.seed = seed
        self.bfloat16 = bfloat16  # memmaps of raw bfloat16 bits (uint16), to view as torch.bfloat16
        self._epoch: Optional[int] = None
        self._perm: Optional[Tensor] = None

    def _permutation(self, epoch: int) -> Tensor:
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._epoch = torch.randperm(self.n, generator=generator), epoch
        return self._perm

    def indices(self, first: int, count: int) -> Tensor:
        """Positions `first .. first + count` of the endless shuffled stream, as row indices."""
        out = []
        position = first
        while position < first + count:
            epoch, offset = divmod(position, self.n)
            take = min(self.n - offset, first + count - position)
            out.append(self._permutation(epoch)[offset : offset + take])
            position += take
        return torch.cat(out)

    def gather(self, index: Tensor) -> Float[Tensor, "n d_in"]:
        """Rows `index` (global row numbers) in that order, as float32."""
        out = torch.empty(len(index), self.d_in, dtype=torch.float32)
        index_np = index.numpy()
        which = np.searchsorted(self.starts, index_np, side="right") - 1
        for i in np.unique(which):
            mask = which == i
            local = index_np[mask] - self.starts[i]
            array = self.arrays[i]
            if isinstance(array, Tensor):
                rows = array[torch.from_numpy(local)].float()
            else:
                order = np.argsort(local)  # read the memmap in file order
                rows_sorted = torch.from_numpy(np.ascontiguousarray(array[local[order]]))
                if self.bfloat16:
                    rows_sorted = rows_sorted.view(torch.bfloat16)
                rows = torch.empty(len(local), self.d_in, dtype=torch.float32)
                rows[torch.from_numpy(order)] = rows_sorted.float()
            out[torch.from_numpy(mask)] = rows
        return out


class TensorActivations:
    """Activations `[n, d_in]` (or `[n, pos, d_in]`, flattened) held in memory."""

    def __init__(self, acts: Tensor, seed: int = 0):
        if not isinstance(acts, Tensor) or not acts.is_floating_point():
            raise TypeError(f"acts must be a float tensor [n, d_in], got {getattr(acts, 'dtype', type(acts).__name__)}")
        acts = acts.detach().reshape(-1, acts.shape[-1]).cpu()
        self._arrays = _PermutedArrays([acts], seed)
        self.d_in = self._arrays.d_in
        self.n = self._arrays.n
        self.seed = seed

    def batch(self, step: int, batch_size: int, rank: int = 0, world_size: int = 1) -> Float[Tensor, "batch d_in"]:
        """This rank's slice of the global batch of `step`."""
        start, end = _rank_slice(batch_size, rank, world_size)
        return self._arrays.gather(self._arrays.indices(step * batch_size + start, end - start))

    def sample(self, n: int) -> Float[Tensor, "n d_in"]:
        """The first `n` activations of the stream (the same on every rank)."""
        return self._arrays.gather(self._arrays.indices(0, min(n, self.n)))

    def describe(self) -> dict[str, Any]:
        return {"source": "tensor", "n": self.n, "d_in": self.d_in, "seed": self.seed}


def map_safetensors(path: PathLike, name: str) -> tuple[np.memmap, torch.dtype]:
    """Memory-map one tensor of a safetensors file (read-only; nothing is read until indexed);
    returns the map and the torch dtype its bytes hold (bfloat16 is mapped as uint16).

    The format is an 8-byte little-endian header length, a JSON header giving each tensor's dtype,
    shape and byte range, then the raw data."""
    path = Path(path)
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    if name not in header:
        raise KeyError(f"{path} holds no tensor {name!r}; it holds {sorted(k for k in header if k != '__metadata__')}")
    entry = header[name]
    if entry["dtype"] not in _SAFETENSORS_DTYPES:
        raise ValueError(f"{path}: {name} has dtype {entry['dtype']}; activations must be F64, F32, F16 or BF16")
    np_dtype, torch_dtype = _SAFETENSORS_DTYPES[entry["dtype"]]
    start, _ = entry["data_offsets"]
    shape = tuple(entry["shape"])
    return np.memmap(path, dtype=np_dtype, mode="r", offset=8 + header_len + start, shape=shape), torch_dtype


class ShardActivations:
    """The activations of `hook_name` in `analyses.collect` shards, memory-mapped.

    Args:
        source: a directory of shards (all ranks' shards, as `collect_activations` wrote them), or a list of files.
        hook_name: which stored activation to read.
        seed: the shuffle's seed.
    """

    def __init__(self, source: Union[PathLike, Sequence[PathLike]], hook_name: str, seed: int = 0):
        self.paths = _shard_paths(source)
        arrays, dtypes = [], set()
        for path in self.paths:
            mapped, dtype = map_safetensors(path, hook_name)
            arrays.append(mapped.reshape(-1, mapped.shape[-1]) if mapped.ndim > 2 else mapped)
            dtypes.add(dtype)
        if len(dtypes) > 1:
            raise ValueError(f"the shards store {hook_name} in different dtypes {sorted(map(str, dtypes))}")
        self._arrays = _PermutedArrays(arrays, seed, bfloat16=dtypes == {torch.bfloat16})
        self.hook_name, self.seed = hook_name, seed
        self.d_in, self.n = self._arrays.d_in, self._arrays.n

    batch = TensorActivations.batch
    sample = TensorActivations.sample

    def describe(self) -> dict[str, Any]:
        return {"source": "shards", "hook_name": self.hook_name, "n": self.n, "d_in": self.d_in, "seed": self.seed,
                "files": [p.name for p in self.paths]}


class ModelActivations:
    """Activations of `hook_name` streamed from `model` over token rows.

    Args:
        model: a HookedGPT (put it on the device you want the forward passes on).
        data: token ids `[n, seq]`, or a uint16 token file / flat array cut into rows of `seq_len`.
        hook_name: the hook to read (`[batch, pos, d_in]`).
        seq_len: row length for flat data.
        rows_per_chunk: token rows per forward chunk; the buffer holds `rows_per_chunk * seq_len` activations.
        forward_batch: rows per forward pass within a chunk.
        seed: which rows each chunk draws, and the buffer's shuffle.
    """

    def __init__(self, model: HookedGPT, data: DataSource, hook_name: str, seq_len: Optional[int] = None,
                 rows_per_chunk: int = 64, forward_batch: int = 16, seed: int = 0):
        if hook_name not in model.hook_dict:
            model._resolve(hook_name)  # raises KeyError with the closest names
        self.model, self.hook_name, self.seed = model, hook_name, seed
        self.rows = token_rows(data, seq_len)
        self.seq_len = int(self.rows.shape[1])
        self.rows_per_chunk, self.forward_batch = rows_per_chunk, forward_batch
        self.chunk_size = rows_per_chunk * self.seq_len
        self._stop = _stop_layer(model, [hook_name])
        self._chunk_index: Optional[int] = None
        self._chunk: Optional[Tensor] = None
        self.d_in = int(self._chunk_acts(0).shape[-1])

    def _chunk_acts(self, chunk: int) -> Float[Tensor, "chunk_size d_in"]:
        """The shuffled buffer of chunk `chunk`: its token rows' activations in a seeded order."""
        if chunk == self._chunk_index:
            return self._chunk
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + chunk)
        row_ids = torch.randint(0, self.rows.shape[0], (self.rows_per_chunk,), generator=generator)
        parts = []
        for first in range(0, self.rows_per_chunk, self.forward_batch):
            ids = row_ids[first : first + self.forward_batch].numpy()
            tokens = torch.as_tensor(np.asarray(self.rows[ids]).astype(np.int64)).to(self.model.device)
            with torch.no_grad():
                _, cache = self.model.run_with_cache(tokens, names_filter=[self.hook_name], return_type=None,
                                                     stop_at_layer=self._stop, return_cache_object=False)
            act = cache[self.hook_name]
            parts.append(act.reshape(-1, act.shape[-1]).float().cpu())
        acts = torch.cat(parts)
        acts = acts[torch.randperm(acts.shape[0], generator=generator)]
        self._chunk_index, self._chunk = chunk, acts
        return acts

    def _range(self, first: int, count: int) -> Float[Tensor, "count d_in"]:
        out = []
        position = first
        while position < first + count:
            chunk, offset = divmod(position, self.chunk_size)
            take = min(self.chunk_size - offset, first + count - position)
            out.append(self._chunk_acts(chunk)[offset : offset + take])
            position += take
        return torch.cat(out)

    def batch(self, step: int, batch_size: int, rank: int = 0, world_size: int = 1) -> Float[Tensor, "batch d_in"]:
        start, end = _rank_slice(batch_size, rank, world_size)
        return self._range(step * batch_size + start, end - start)

    def sample(self, n: int) -> Float[Tensor, "n d_in"]:
        return self._range(0, n)

    def describe(self) -> dict[str, Any]:
        return {"source": "model", "hook_name": self.hook_name, "model": str(getattr(self.model.cfg, "model_name", "")),
                "rows": int(self.rows.shape[0]), "seq_len": self.seq_len, "rows_per_chunk": self.rows_per_chunk, "seed": self.seed}
