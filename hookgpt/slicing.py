"""Slice: one way to say "these positions" (or batch rows, or neurons) everywhere hookgpt takes one.

The rules are TransformerLens's (`transformer_lens.utils.Slice`), so that the same argument gives
the same tensor in both libraries:

    None          everything (the dimension is kept)
    3, -1         that one index; the dimension is DROPPED, as `t[..., -1, :]` would
    (1, 4)        a range, `slice(*tuple)`: positions 1, 2, 3 (dimension kept)
    slice(1, 4)   the same range
    [0, 2], tensor, array   those indices, in that order (dimension kept)

`Slice.unwrap` is what `run_with_cache(pos_slice=...)` uses: there an int keeps its dimension
(`[i]`), so every cached activation keeps its shape apart from the sliced length.
"""

from typing import Any, Union

import numpy as np
import torch
from torch import Tensor

SliceInput = Union[None, int, tuple, slice, list, Tensor, np.ndarray]


class Slice:
    """A selection along one dimension; `apply(tensor, dim)` takes it."""

    def __init__(self, input_slice: Any = None):  # checked here, with a message saying what is accepted
        if isinstance(input_slice, Slice):
            self.slice, self.mode = input_slice.slice, input_slice.mode
        elif isinstance(input_slice, bool):
            raise TypeError(f"a slice cannot be a bool, got {input_slice!r}")
        elif isinstance(input_slice, (int, np.integer)):
            self.slice, self.mode = int(input_slice), "int"
        elif isinstance(input_slice, tuple):
            self.slice, self.mode = slice(*input_slice), "slice"
        elif isinstance(input_slice, slice):
            self.slice, self.mode = input_slice, "slice"
        elif isinstance(input_slice, (list, Tensor, np.ndarray)):
            indices = torch.as_tensor(np.asarray(input_slice.cpu() if isinstance(input_slice, Tensor) else input_slice))
            if indices.ndim == 0:  # a 0-d tensor is one index, like an int
                self.slice, self.mode = int(indices), "int"
            elif indices.ndim != 1 or indices.is_floating_point() or indices.dtype == torch.bool:
                raise TypeError(f"a list/tensor slice must be a 1-D sequence of integer indices, got {input_slice!r}")
            else:
                self.slice, self.mode = indices.long(), "array"
        elif input_slice is None:
            self.slice, self.mode = slice(None), "identity"
        else:
            raise TypeError(
                f"invalid slice {input_slice!r}: expected None, an int, a (start, stop[, step]) tuple, "
                "a slice, or a list/tensor of indices"
            )

    @classmethod
    def unwrap(cls, slice_input: Union["Slice", SliceInput]) -> "Slice":
        """A Slice from any slice input, where an int keeps its dimension (`[i]`)."""
        if isinstance(slice_input, Slice):
            return slice_input
        if isinstance(slice_input, (int, np.integer)) and not isinstance(slice_input, bool):
            slice_input = [int(slice_input)]
        return cls(slice_input)

    def apply(self, tensor: Tensor, dim: int = 0) -> Tensor:
        """`tensor` with this selection taken along `dim` (negative dims count from the end)."""
        if self.mode == "identity":
            return tensor
        index: list[Any] = [slice(None)] * tensor.ndim
        index[dim] = self.slice.to(tensor.device) if self.mode == "array" else self.slice
        return tensor[tuple(index)]

    def indices(self, max_ctx: Union[int, None] = None) -> np.ndarray:
        """The indices selected, as an array (`max_ctx`, the dimension's length, is needed unless an int)."""
        if self.mode == "int":
            return np.array([self.slice], dtype=np.int64)
        if max_ctx is None:
            raise ValueError("max_ctx (the length of the dimension) is needed for a slice that is not an int")
        return np.arange(max_ctx, dtype=np.int64)[self.slice.numpy() if self.mode == "array" else self.slice]

    @property
    def drops_dim(self) -> bool:
        return self.mode == "int"

    def __repr__(self) -> str:
        return f"Slice({self.slice!r}, mode={self.mode!r})"
