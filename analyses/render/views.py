"""One function per view: check the data, shape it into props, call `render`.

Each function takes tensors or numpy arrays with the shapes in its signature
(the dimension names are the project's: `n_heads query_pos key_pos`, `layer
pos`, ...), raises `ValueError` when a shape, a length or a value cannot be
right, rounds the numbers (a 12-head × 256-token layer is ~790k numbers; three
decimals keeps the HTML to a few MB) and returns a `RenderedHTML`, which shows
itself in a notebook and has `.save(path)` / `.show()`.

`attention(model, text, layer)` is the shortcut from a model to a picture:
it runs the model once, caching only that layer's attention pattern.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from .html import RenderedHTML, render
from .props import (
    as_array,
    check_finite,
    check_shape,
    check_square,
    check_tokens,
    rounded_list,
    significant_decimals,
)

Array = Tensor | np.ndarray


def _attention_array(value: Any, name: str, dims: str) -> np.ndarray:
    """An attention tensor checked for rank, squareness and finiteness."""
    array = as_array(value, name)
    check_shape(array, name, dims)
    check_square(array, name)
    check_finite(array, name)
    return array


def attention_heads(
    tokens: Sequence[str],
    attention: Float[Array, "n_heads query_pos key_pos"],
    head_names: Sequence[str] | None = None,
    *,
    title: str | None = None,
    decimals: int = 3,
) -> RenderedHTML:
    """All heads of one layer: a grid of thumbnails, one enlarged, token-level hover.

    Args:
        tokens: `[pos]` token strings (e.g. `model.to_str_tokens(text)`).
        attention: `[n_heads, query_pos, key_pos]` attention weights of one
            prompt, `query_pos == key_pos == len(tokens)`; e.g.
            `cache["pattern", layer][0]`.
        head_names: `[n_heads]` labels; default "Head 0", "Head 1", ...
        title: heading shown above the view.
        decimals: rounding of the weights in the HTML.

    Component props: `tokens [pos]`, `attention [n_heads][query_pos][key_pos]`,
    `headNames [n_heads]`, `title`.
    """
    array = _attention_array(attention, "attention", "n_heads query_pos key_pos")
    n_heads, n_pos, _ = array.shape
    tokens = check_tokens(tokens, length=n_pos, what=f"attention (shape {tuple(array.shape)}) query_pos/key_pos")
    if head_names is None:
        head_names = [f"Head {h}" for h in range(n_heads)]
    head_names = check_tokens(head_names, "head_names", length=n_heads, what="attention n_heads")
    props = {"tokens": tokens, "attention": rounded_list(array, decimals), "headNames": head_names}
    if title:
        props["title"] = title
    return render("AttentionHeads", **props)


def attention_pattern(
    tokens: Sequence[str],
    pattern: Float[Array, "query_pos key_pos"],
    *,
    title: str | None = None,
    decimals: int = 3,
) -> RenderedHTML:
    """One head as a query × key heatmap with token labels; hover a cell for its value.

    Args:
        tokens: `[pos]` token strings, used for both axes.
        pattern: `[query_pos, key_pos]` attention weights of one head,
            `query_pos == key_pos == len(tokens)`; e.g. `cache["pattern", layer][0, head]`.
        title: heading shown above the view.
        decimals: rounding of the weights in the HTML.

    Component props: `tokens [pos]`, `pattern [query_pos][key_pos]`, `title`.
    """
    array = _attention_array(pattern, "pattern", "query_pos key_pos")
    tokens = check_tokens(tokens, length=array.shape[0], what=f"pattern (shape {tuple(array.shape)}) query_pos/key_pos")
    props = {"tokens": tokens, "pattern": rounded_list(array, decimals)}
    if title:
        props["title"] = title
    return render("AttentionPattern", **props)


def colored_tokens(
    tokens: Sequence[str],
    values: Float[Array, "pos"] | Mapping[str, Float[Array, "pos"]],
    *,
    min_value: float | None = None,
    max_value: float | None = None,
    title: str | None = None,
    decimals: int | None = None,
) -> RenderedHTML:
    """Text coloured per token on a blue–white–red scale; hover for the value.

    Args:
        tokens: `[pos]` token strings.
        values: `[pos]` one number per token (a neuron's activation, a
            direct logit attribution, a loss...), or a dict `name -> [pos]`
            of several such sets, switchable in the view.
        min_value, max_value: ends of the colour scale; default symmetric
            around zero at the largest |value| of the set shown.
        title: heading shown above the view.
        decimals: rounding in the HTML; default keeps 4 significant digits
            of the largest |value|.

    Component props: `tokens [pos]`, `values [pos] | {name: [pos]}`,
    `minValue`, `maxValue`, `title`.
    """
    tokens = check_tokens(tokens)
    named = isinstance(values, Mapping)
    sets = dict(values) if named else {"values": values}
    if not sets:
        raise ValueError("values is an empty dict; expected at least one name -> [pos] array")
    converted = {}
    for name, value in sets.items():
        if not isinstance(name, str):
            raise ValueError(f"values keys must be strings (names of the value sets), got {name!r}")
        label = f"values[{name!r}]" if named else "values"
        array = as_array(value, label)
        check_shape(array, label, "pos")
        check_finite(array, label)
        check_tokens(tokens, length=array.shape[0], what=label)
        converted[name] = rounded_list(array, significant_decimals(array) if decimals is None else decimals)
    if min_value is not None and max_value is not None and not min_value < max_value:
        raise ValueError(f"min_value must be below max_value, got min_value={min_value}, max_value={max_value}")
    props: dict[str, Any] = {"tokens": tokens, "values": converted if named else converted["values"]}
    if min_value is not None:
        props["minValue"] = float(min_value)
    if max_value is not None:
        props["maxValue"] = float(max_value)
    if title:
        props["title"] = title
    return render("ColoredTokens", **props)


def _probabilities(value: Any, name: str, dims: str) -> np.ndarray:
    """Probabilities checked for rank, finiteness and range [0, 1]."""
    array = as_array(value, name)
    check_shape(array, name, dims)
    check_finite(array, name)
    if array.min() < -1e-6 or array.max() > 1 + 1e-6:
        raise ValueError(
            f"{name} must hold probabilities in [0, 1], got values from {array.min():.4g} to {array.max():.4g} "
            f"(pass softmax(logits), not logits)"
        )
    return np.clip(array, 0.0, 1.0)


def top_k_tokens(
    tokens: Sequence[str],
    probs: Float[Array, "k"],
    *,
    title: str | None = None,
    decimals: int = 4,
) -> RenderedHTML:
    """A ranked list of predicted tokens with probability bars.

    Args:
        tokens: `[k]` predicted token strings, most likely first.
        probs: `[k]` their probabilities.
        title: heading, e.g. "next token after ' the'".
        decimals: rounding of the probabilities in the HTML.

    Component props: `tokens [k]`, `probs [k]`, `title`.
    """
    array = _probabilities(probs, "probs", "k")
    tokens = check_tokens(tokens, length=array.shape[0], what="probs")
    props = {"tokens": tokens, "probs": rounded_list(array, decimals)}
    if title:
        props["title"] = title
    return render("TopKTokens", **props)


def logit_lens_grid(
    tokens: Sequence[str],
    layer_labels: Sequence[str],
    top_tokens: Sequence[Sequence[Sequence[str]]],
    top_probs: Float[Array, "layer pos k"],
    *,
    target_tokens: Sequence[str] | None = None,
    title: str | None = None,
    decimals: int = 4,
) -> RenderedHTML:
    """The logit lens: top-k next-token predictions per layer (rows) and position (columns).

    Args:
        tokens: `[pos]` input token strings (column headers).
        layer_labels: `[layer]` row labels, e.g. `["embed", "L0", ..., "final"]`.
        top_tokens: `[layer][pos][k]` predicted token strings, most likely first.
        top_probs: `[layer, pos, k]` their probabilities.
        target_tokens: `[pos]` optional true next tokens; cells whose top
            prediction matches are outlined.
        title: heading shown above the view.
        decimals: rounding of the probabilities in the HTML.

    Component props: `tokens [pos]`, `layerLabels [layer]`,
    `topTokens [layer][pos][k]`, `topProbs [layer][pos][k]`, `targetTokens [pos]`, `title`.
    """
    probs = _probabilities(top_probs, "top_probs", "layer pos k")
    n_layers, n_pos, k = probs.shape
    shape = f"top_probs (shape {tuple(probs.shape)})"
    tokens = check_tokens(tokens, length=n_pos, what=f"{shape} pos")
    layer_labels = check_tokens(layer_labels, "layer_labels", length=n_layers, what=f"{shape} layer")
    if hasattr(top_tokens, "tolist"):
        top_tokens = top_tokens.tolist()
    if isinstance(top_tokens, str) or len(top_tokens) != n_layers:
        raise ValueError(f"top_tokens must be nested lists [layer][pos][k] matching {shape}; got {len(top_tokens)} layers")
    checked: list[list[list[str]]] = []
    for layer, row in enumerate(top_tokens):
        if isinstance(row, str) or len(row) != n_pos:
            raise ValueError(f"top_tokens[{layer}] must have {n_pos} positions to match {shape}, got {len(row)}")
        checked.append(
            [check_tokens(cell, f"top_tokens[{layer}][{pos}]", length=k, what=f"{shape} k") for pos, cell in enumerate(row)]
        )
    props: dict[str, Any] = {
        "tokens": tokens,
        "layerLabels": layer_labels,
        "topTokens": checked,
        "topProbs": rounded_list(probs, decimals),
    }
    if target_tokens is not None:
        props["targetTokens"] = check_tokens(target_tokens, "target_tokens", length=n_pos, what=f"{shape} pos")
    if title:
        props["title"] = title
    return render("LogitLensGrid", **props)


def attention(model: Any, text: str, layer: int = 0, *, title: str | None = None) -> RenderedHTML:
    """Run `model` on `text` and show every head of `layer` (an `attention_heads` view).

    Uses only the TransformerLens-style API: `model.cfg.n_layers`,
    `model.to_str_tokens(text)` (with the BOS token the model prepends) and
    `model.run_with_cache(text, names_filter=...)`, caching just
    `blocks.{layer}.attn.hook_pattern`; heads are named `L{layer}H{head}`.
    """
    n_layers = model.cfg.n_layers
    if not isinstance(layer, int) or not 0 <= layer < n_layers:
        raise ValueError(f"layer must be an int in [0, {n_layers}) for a model with n_layers={n_layers}, got {layer!r}")
    hook_name = f"blocks.{layer}.attn.hook_pattern"
    tokens = model.to_str_tokens(text)
    with torch.no_grad():
        _, cache = model.run_with_cache(text, names_filter=lambda name: name == hook_name)
    pattern = cache["pattern", layer]  # [batch, n_heads, query_pos, key_pos]
    if pattern.ndim != 4 or pattern.shape[0] != 1:
        raise ValueError(f"expected cache['pattern', {layer}] of shape [1, n_heads, query_pos, key_pos], got {tuple(pattern.shape)}")
    pattern = pattern[0]
    head_names = [f"L{layer}H{head}" for head in range(pattern.shape[0])]
    return attention_heads(tokens, pattern, head_names, title=title or f"Attention heads of layer {layer}")
