"""Small helpers every analysis needs: turning inputs into token ids, ids into labels,
positions into indices, and a progress bar that stays quiet where nobody watches it."""

from typing import Any, Iterable, Optional, Sequence, Union

import torch
from jaxtyping import Int
from torch import Tensor
from tqdm import tqdm  # text bars: work in terminals and notebooks alike, no ipywidgets needed

from hookgpt.errors import ArgumentError, ArgumentTypeError, IndexRangeError
from hookgpt.model import HookedGPT

TokensLike = Union[str, list[str], Tensor]


def as_tokens(model: HookedGPT, input: TokensLike) -> Int[Tensor, "batch pos"]:
    """Text (BOS prepended, as the model does) or token ids `[pos]`/`[batch, pos]` -> `[batch, pos]`
    ids on the model's device."""
    if isinstance(input, (str, list)):
        return model.to_tokens(input)
    if not isinstance(input, Tensor):
        raise ArgumentTypeError(f"input: expected text or a tensor of token ids, got {type(input).__name__}")
    if input.is_floating_point() or input.is_complex() or input.dtype == torch.bool:
        raise ArgumentTypeError(f"input: token ids must be an integer tensor, got {input.dtype}")
    if input.ndim == 1:
        input = input[None]
    if input.ndim != 2 or 0 in input.shape:
        raise ArgumentError(f"input: token ids must have shape [batch, pos] or [pos] with at least one token, got {tuple(input.shape)}")
    input = input.long()
    if int(input.min()) < 0 or int(input.max()) >= model.cfg.d_vocab:
        raise ArgumentError(f"input: token ids must lie in [0, d_vocab={model.cfg.d_vocab}), got {int(input.min())}..{int(input.max())}")
    return input.to(model.device)


def token_strings(model: HookedGPT, ids: Union[Tensor, Sequence[int]]) -> list[str]:
    """The text of each token id, or `"#<id>"` where the model has no tokenizer that knows it."""
    ids = [int(i) for i in (ids.flatten().tolist() if isinstance(ids, Tensor) else ids)]
    try:
        tokenizer = model.tokenizer
    except (ValueError, AttributeError):
        return [f"#{i}" for i in ids]
    strings = {}
    for i in set(ids):
        try:
            strings[i] = tokenizer.decode_tokens([i])[0]
        except Exception:  # an id outside the tokenizer's vocabulary (e.g. padded d_vocab)
            strings[i] = f"#{i}"
    return [strings[i] for i in ids]


def token_id(model: HookedGPT, token: Union[int, str]) -> int:
    """One token id from an id or a string that is exactly one token."""
    if isinstance(token, str):
        return model.to_single_token(token)
    if isinstance(token, bool) or not isinstance(token, int):
        raise ArgumentTypeError(f"a token must be an id (int) or a one-token string, got {type(token).__name__} {token!r}")
    if not 0 <= token < model.cfg.d_vocab:
        raise ArgumentError(f"token id {token} is out of range for d_vocab={model.cfg.d_vocab}")
    return token


def check_count(value: Any, name: str, low: int = 1, high: Optional[int] = None) -> int:
    """An integer argument in [low, high] (`k`, `seq_len`, `batch`, ...), or an error naming it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentTypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ArgumentError(f"{name} must be {bound}, got {value}")
    return value


def _index_list(values: Union[None, int, Sequence[int], Tensor], size: int, what: str, field: str) -> list[int]:
    """Indices into range(size) (negative ones count from the end, as in Python); None means all.
    Anything outside -size..size-1 is an error, never wrapped."""
    if values is None:
        return list(range(size))
    if isinstance(values, Tensor):
        values = values.flatten().tolist()
    if isinstance(values, int) and not isinstance(values, bool):
        values = [values]
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{what} must be ints, got {v!r}")
        if not -size <= v < size:
            raise ValueError(f"{what}: {v} is out of range for a model with {field}={size}")
        out.append(v % size)
    return out


def layer_list(model: HookedGPT, layers: Union[None, int, Sequence[int]]) -> list[int]:
    """Layer indices of `model` (None: all); out of range is an error, never wrapped."""
    return _index_list(layers, model.cfg.n_layers, "layers", "n_layers")


def head_list(model: HookedGPT, heads: Union[None, int, Sequence[int]]) -> list[int]:
    """Head indices of `model` (None: all); out of range is an error."""
    return _index_list(heads, model.cfg.n_heads, "heads", "n_heads")


def position_list(positions: Union[None, int, Sequence[int], Tensor], seq_len: int, what: str = "positions") -> list[int]:
    """Positions as non-negative ints (negative ones count from the end); None means all."""
    if positions is None:
        return list(range(seq_len))
    if isinstance(positions, Tensor):
        if positions.is_floating_point() or positions.dtype == torch.bool:
            raise ArgumentTypeError(f"{what}: positions must be integers, got a {positions.dtype} tensor")
        positions = positions.flatten().tolist()
    if isinstance(positions, int):
        positions = [positions]
    if not isinstance(positions, (list, tuple, range)):
        raise ArgumentTypeError(f"{what}: expected a position (int), a list of positions or None, got {type(positions).__name__} {positions!r}")
    out = []
    for p in positions:
        if isinstance(p, bool) or not isinstance(p, int):
            raise ArgumentTypeError(f"{what}: positions must be integers, got {type(p).__name__} {p!r}")
        if not -seq_len <= p < seq_len:
            raise IndexRangeError(f"{what}: position {p} is out of range for a sequence of {seq_len} tokens")
        out.append(p % seq_len)
    if not out:
        raise ArgumentError(f"{what}: got an empty list of positions (pass None for all of them)")
    return out


def progress(iterable: Optional[Iterable] = None, disable: Optional[bool] = None, **kwargs: Any) -> Any:
    """A tqdm progress bar; `disable=None` (the default everywhere) hides it when not in a terminal."""
    return tqdm(iterable, disable=disable, **kwargs)
