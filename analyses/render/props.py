"""Turning Python data into component props, and refusing data that cannot be right.

Every view function funnels its inputs through these helpers:

1. `as_array` accepts a torch tensor, a numpy array or nested lists and gives a
   float64 numpy array (a tensor is detached and moved to the CPU first, so a
   tensor straight out of a cache works).
2. `check_shape` / `check_finite` / `check_tokens` raise `ValueError` with a
   message that names the argument, what was expected and what was found.
3. `rounded_list` rounds and converts to nested Python lists, writing
   whole numbers (the zeros above a causal mask, mostly) as ints: `0` costs one
   character of HTML where `0.0` costs three.

Nothing here imports torch: tensors are recognised by their `detach` method.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def as_array(value: Any, name: str) -> np.ndarray:
    """`value` as a float64 numpy array; tensors are detached and copied to the CPU."""
    if hasattr(value, "detach"):  # a torch.Tensor, without importing torch
        value = value.detach().to("cpu").float().numpy()
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{name} must be a tensor, a numpy array or nested lists of numbers with a regular shape; "
            f"could not convert it to numbers ({error})"
        ) from None
    return array


def check_shape(array: np.ndarray, name: str, dims: str) -> None:
    """Require one axis per name in `dims` (e.g. "n_heads query_pos key_pos") and no empty axis."""
    names = dims.split()
    if array.ndim != len(names):
        hint = ""
        if array.ndim == len(names) + 1 and array.shape[0] == 1:
            hint = f"; it looks batched (leading axis of size 1): pass {name}[0]"
        raise ValueError(
            f"{name} must have {len(names)} dimension(s) [{', '.join(names)}], "
            f"got {array.ndim} with shape {tuple(array.shape)}{hint}"
        )
    if 0 in array.shape:
        raise ValueError(f"{name} has an empty axis: shape {tuple(array.shape)} for [{', '.join(names)}]")


def check_square(array: np.ndarray, name: str) -> None:
    """Require the last two axes (query_pos, key_pos) to have the same length."""
    query_pos, key_pos = array.shape[-2:]
    if query_pos != key_pos:
        raise ValueError(
            f"{name} must be square in its last two axes (query_pos == key_pos: every position is both "
            f"a query and a key), got query_pos={query_pos}, key_pos={key_pos} (shape {tuple(array.shape)})"
        )


def check_finite(array: np.ndarray, name: str) -> None:
    """Refuse NaN and ±inf, naming how many there are and where the first one is."""
    bad = ~np.isfinite(array)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        kind = "NaN" if np.isnan(array[first]) else "infinite"
        raise ValueError(
            f"{name} contains {int(bad.sum())} non-finite value(s) (first: {kind} at index {first}); "
            f"expected finite numbers"
        )


def check_tokens(tokens: Any, name: str = "tokens", length: int | None = None, what: str = "") -> list[str]:
    """`tokens` as a list of str, optionally of a required length (`what` says where that length comes from)."""
    if isinstance(tokens, str):
        raise ValueError(
            f"{name} must be a list of strings, one per position, got a single str; "
            f"split it into tokens first (e.g. model.to_str_tokens(text))"
        )
    if not isinstance(tokens, Sequence) and not hasattr(tokens, "tolist"):
        raise ValueError(f"{name} must be a list of strings, got {type(tokens).__name__}")
    tokens = list(tokens.tolist() if hasattr(tokens, "tolist") else tokens)
    not_str = [i for i, token in enumerate(tokens) if not isinstance(token, str)]
    if not_str:
        i = not_str[0]
        raise ValueError(f"{name} must contain only strings; {name}[{i}] is {type(tokens[i]).__name__} {tokens[i]!r}")
    if not tokens:
        raise ValueError(f"{name} is empty; expected at least one token")
    if length is not None and len(tokens) != length:
        raise ValueError(f"{name} has {len(tokens)} entries but {what} has {length}; expected one per position")
    return tokens


def rounded_list(array: np.ndarray, decimals: int) -> list:
    """Nested lists of `array` rounded to `decimals`, whole numbers as ints (shorter JSON)."""
    rounded = np.round(np.asarray(array, dtype=np.float64), decimals)
    rounded[rounded == 0] = 0.0  # no "-0"
    items = rounded.astype(object)  # Python floats
    whole = rounded == np.trunc(rounded)
    items[whole] = np.array(rounded[whole].astype(np.int64).tolist(), dtype=object)  # Python ints
    return items.tolist()


def significant_decimals(array: np.ndarray, digits: int = 4) -> int:
    """Decimals that keep `digits` significant digits of the largest |value| (values of any scale)."""
    largest = float(np.max(np.abs(array))) if array.size else 0.0
    if largest == 0.0:
        return 0
    return max(0, digits - 1 - int(np.floor(np.log10(largest))))


def jsonable(value: Any) -> Any:
    """`json.dumps` fallback for arrays and numpy scalars passed straight to `render`."""
    if hasattr(value, "detach"):
        value = value.detach().to("cpu").numpy()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    raise TypeError(f"cannot turn a {type(value).__name__} into a component prop (JSON)")
