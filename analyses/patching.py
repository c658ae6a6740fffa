"""Activation patching: copy one activation from a clean run into a corrupted run and see how
much of the clean behaviour comes back.

Two prompts differ in one detail ("When John and Mary went to the store, Mary gave a bottle to"
vs the same with John and Mary swapped). A metric (e.g. the logit difference between the two
names) separates them. Patching the clean value of one activation (the residual stream at layer
L, position p; head h's output; ...) into the corrupted run and measuring the metric tells how
much of the difference that activation carries.

A sweep patches every (layer, position) or every head, one at a time: hundreds of forward passes.
Each patch is one intervention set (`hookgpt.interventions.patch` of a `Site`), and the sweep runs
through the interventions engine (`hookgpt.interventions.evaluate`), which batches the patches,
starts each at its layer, skips the positions before it, unembeds only the read positions, and
skips patches whose clean value equals the corrupted one (as at every position before the first
token where the prompts differ). Its results equal the plain loop of `run_with_hooks` patches
(`method="naive"`), also with hooks of your own attached to the model.

**The metric** is a function of the logits at the read positions, `[batch, n_read, d_vocab]` (by
default `read_positions=-1`, the last position, so `[batch, 1, d_vocab]`), returning a scalar
(averaged over the prompts of the batch, if you like); see `analyses.metrics`.
`logit_diff_metric` builds the usual normalised logit difference.

Clean and corrupted inputs must be token ids (or texts) of the same shape, without padding.
"""

from dataclasses import dataclass
from typing import Any, Literal, Optional, Sequence, Union

import pandas as pd
import plotly.graph_objects as go
import torch
from jaxtyping import Float
from torch import Tensor

from analyses._common import TokensLike, as_tokens, head_list, layer_list, position_list, token_strings
from analyses.metrics import Metric, TokenChoice, logit_diff, logit_diff_metric  # noqa: F401 (re-exported)
from analyses.plotting import heatmap
from hookgpt import interventions as iv
from hookgpt.interventions import Site
from hookgpt.model import HookedGPT

# ------------------------------------------------------------------ what a patch is

# activation name -> (hook name template, layout of the activation after the batch dimension)
ACTIVATIONS: dict[str, tuple[str, str]] = {
    "resid_pre": ("blocks.{layer}.hook_resid_pre", "pos"),
    "resid_mid": ("blocks.{layer}.hook_resid_mid", "pos"),
    "attn_out": ("blocks.{layer}.hook_attn_out", "pos"),
    "mlp_out": ("blocks.{layer}.hook_mlp_out", "pos"),
    "z": ("blocks.{layer}.attn.hook_z", "pos head"),
    "q": ("blocks.{layer}.attn.hook_q", "pos head"),
    "k": ("blocks.{layer}.attn.hook_k", "pos head"),
    "v": ("blocks.{layer}.attn.hook_v", "pos head"),
    "pattern": ("blocks.{layer}.attn.hook_pattern", "head pos"),  # pos = the query position
}


@dataclass(frozen=True)
class Patch:
    """One patch: the activation at `layer`, at `position` (None: every position), of `head`
    (None: the whole activation; required for head activations z/q/k/v/pattern)."""

    layer: int
    position: Optional[int] = None
    head: Optional[int] = None

    @property
    def first_position(self) -> int:
        """The first position this patch can change."""
        return 0 if self.position is None else self.position


def site_of(activation: str, patch: Patch) -> Site:
    """The interventions-layer site of `patch` on `activation`."""
    layer, pos, head = patch.layer, patch.position, patch.head
    if activation.startswith("resid_"):
        return Site.resid(activation[len("resid_"):], layer, pos)
    if activation == "attn_out":
        return Site.attn_out(layer, pos)
    if activation == "mlp_out":
        return Site.mlp_out(layer, pos)
    if activation == "pattern":
        return Site.pattern(layer, head, query=pos)
    return Site.head(layer, head, pos, act=activation)


def _check(model: HookedGPT, activation: str, patches: Sequence[Patch], seq_len: int) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; patchable: {sorted(ACTIVATIONS)}")
    if activation in ("resid_mid", "mlp_out") and model.cfg.attn_only:
        raise ValueError(f"an attention-only model has no {activation}")
    per_head = ACTIVATIONS[activation][1] != "pos"
    for patch in patches:
        if per_head != (patch.head is not None):
            raise ValueError(f"{patch}: {activation} patches need {'a head in [0, n_heads)' if per_head else 'head=None'}")
        site_of(activation, patch).check(model, seq_len)


# ------------------------------------------------------------------ the engine


def patch_activations(
    model: HookedGPT,
    clean: TokensLike,
    corrupted: TokensLike,
    metric: Metric,
    activation: str,
    patches: Sequence[Patch],
    read_positions: Union[int, Sequence[int]] = -1,
    method: Literal["fast", "naive"] = "fast",
    batch_size: Optional[int] = None,
    memory_mb: float = 1024,
    disable: Optional[bool] = None,
) -> tuple[Float[Tensor, "patch"], float, float]:
    """Run each patch (clean `activation` into the corrupted run); returns
    (metric per patch, clean metric, corrupted metric).

    Args:
        model: a HookedGPT.
        clean, corrupted: texts or token ids `[batch, pos]` of the same shape, unpadded.
        metric: logits at `read_positions` `[batch, n_read, d_vocab]` -> scalar.
        activation: one of `ACTIVATIONS` (resid_pre, resid_mid, attn_out, mlp_out, z, q, k, v, pattern).
        patches: what to patch, one forward's worth each.
        read_positions: the positions whose logits the metric reads (default: the last).
        method: "fast" (batched, see `hookgpt.interventions`) or "naive" (one `run_with_hooks`
            per patch; the reference).
        batch_size: rows (patches x prompts) per forward in the fast method; default from `memory_mb`.
        disable: hide the progress bar (default: shown only in a terminal, after a few seconds).
    """
    if method not in ("fast", "naive"):
        raise ValueError(f"method must be 'fast' or 'naive', got {method!r}")
    clean_tokens, corrupted_tokens = as_tokens(model, clean), as_tokens(model, corrupted)
    if clean_tokens.shape != corrupted_tokens.shape:
        raise ValueError(
            f"clean {tuple(clean_tokens.shape)} and corrupted {tuple(corrupted_tokens.shape)} inputs must have the same "
            "shape (same prompts count, same token length)"
        )
    seq_len = corrupted_tokens.shape[1]
    _check(model, activation, patches, seq_len)
    read = position_list(read_positions, seq_len, "read_positions")
    sites = [site_of(activation, patch) for patch in patches]
    with torch.no_grad():
        clean_logits, clean_cache = model.run_with_cache(clean_tokens, names_filter=sorted({s.hook_name for s in sites}))
        clean_metric = float(metric(clean_logits[:, read]))
        sets = [[iv.patch(s, clean_cache)] for s in sites]
        values, corrupted_metric = iv.evaluate(
            model, corrupted_tokens, sets, metric, read, method, batch_size, memory_mb, disable, desc=f"patching {activation}"
        )
    return values, clean_metric, corrupted_metric


# ------------------------------------------------------------------ sweeps and their results


@dataclass
class PatchingResult:
    """The metric after each patch, shaped by what was swept: `[layer, pos]`, `[layer]`,
    `[layer, head]` or `[layer, pos, head]` (as TransformerLens' `patching` module)."""

    values: Tensor
    dims: tuple[str, ...]  # e.g. ("layer", "pos")
    activation: str
    layers: list[int]
    positions: Optional[list[int]]
    heads: Optional[list[int]]
    clean_metric: float
    corrupted_metric: float
    position_labels: Optional[list[str]] = None

    def to_df(self) -> pd.DataFrame:
        """One row per patch: layer, pos, head (where swept) and the metric."""
        axes = {"layer": self.layers, "pos": self.positions, "head": self.heads}
        index = pd.MultiIndex.from_product([axes[d] for d in self.dims], names=list(self.dims))
        df = pd.DataFrame({"metric": self.values.flatten().tolist()}, index=index).reset_index()
        df.insert(0, "activation", self.activation)
        # the site of each patch, labelled as everywhere (resid_pre 3 @ pos 5, L1H2 @ pos 5, ...)
        patches = [Patch(int(r.layer), int(r.pos) if "pos" in self.dims else None, int(r.head) if "head" in self.dims else None) for r in df.itertuples()]
        df.insert(1, "label", [site_of(self.activation, p).label for p in patches])
        return df

    def figure(self, title: Optional[str] = None) -> go.Figure:
        """Heatmap of the metric: layer x position, layer x head, or (layer, head) x position."""
        title = title or f"Patching {self.activation} (clean {self.clean_metric:.3g}, corrupted {self.corrupted_metric:.3g})"
        pos_labels = self.position_labels or ([str(p) for p in self.positions] if self.positions else None)
        layer_labels = [str(l) for l in self.layers]
        if self.dims == ("layer",):
            return heatmap(self.values[:, None], x_labels=["all positions"], y_labels=layer_labels, title=title, y_title="layer")
        if self.dims == ("layer", "pos"):
            return heatmap(self.values, x_labels=pos_labels, y_labels=layer_labels, title=title, x_title="position", y_title="layer")
        if self.dims == ("layer", "head"):
            head_labels = [str(h) for h in self.heads]
            return heatmap(self.values, x_labels=head_labels, y_labels=layer_labels, title=title, x_title="head", y_title="layer")
        rows = self.values.permute(0, 2, 1).reshape(len(self.layers) * len(self.heads), len(self.positions))
        row_labels = [f"L{l}H{h}" for l in self.layers for h in self.heads]
        return heatmap(rows, x_labels=pos_labels, y_labels=row_labels, title=title, x_title="position", y_title="head")


def _position_labels(model: HookedGPT, clean: Tensor, corrupted: Tensor, positions: list[int]) -> list[str]:
    """"3: ' Mary'", or "3: ' Mary'/' John'" where the first clean and corrupted prompts differ."""
    clean_strings, corrupted_strings = token_strings(model, clean[0]), token_strings(model, corrupted[0])
    return [
        f"{p}: {clean_strings[p]!r}" + ("" if clean_strings[p] == corrupted_strings[p] else f"/{corrupted_strings[p]!r}")
        for p in positions
    ]


def patch_residual(
    model: HookedGPT,
    clean: TokensLike,
    corrupted: TokensLike,
    metric: Metric,
    activation: Literal["resid_pre", "resid_mid", "attn_out", "mlp_out"] = "resid_pre",
    layers: Optional[Sequence[int]] = None,
    positions: Optional[Sequence[int]] = None,
    by_position: bool = True,
    **kwargs: Any,
) -> PatchingResult:
    """Patch a residual-stream-shaped activation (resid_pre, resid_mid, attn_out, mlp_out) at
    each (layer, position): values `[layer, pos]`; with `by_position=False` all positions at once:
    `[layer]`. `kwargs` go to `patch_activations` (read_positions, method, batch_size, memory_mb, disable)."""
    if ACTIVATIONS.get(activation, ("", ""))[1] != "pos":
        raise ValueError(f"patch_residual patches resid_pre, resid_mid, attn_out or mlp_out, not {activation!r}; use patch_heads")
    clean_tokens, corrupted_tokens = as_tokens(model, clean), as_tokens(model, corrupted)
    _n_layers, seq_len = model.cfg.n_layers, corrupted_tokens.shape[1]
    layers = layer_list(model, layers)
    if by_position:
        positions = position_list(positions, seq_len)
        patches = [Patch(l, p) for l in layers for p in positions]
    else:
        positions = None
        patches = [Patch(l) for l in layers]
    values, clean_metric, corrupted_metric = patch_activations(
        model, clean_tokens, corrupted_tokens, metric, activation, patches, **kwargs
    )
    if by_position:
        labels = _position_labels(model, clean_tokens, corrupted_tokens, positions)
        values = values.view(len(layers), len(positions))
        return PatchingResult(values, ("layer", "pos"), activation, layers, positions, None, clean_metric, corrupted_metric, labels)
    return PatchingResult(values, ("layer",), activation, layers, None, None, clean_metric, corrupted_metric)


def patch_heads(
    model: HookedGPT,
    clean: TokensLike,
    corrupted: TokensLike,
    metric: Metric,
    activation: Literal["z", "q", "k", "v", "pattern"] = "z",
    layers: Optional[Sequence[int]] = None,
    heads: Optional[Sequence[int]] = None,
    by_position: bool = False,
    positions: Optional[Sequence[int]] = None,
    **kwargs: Any,
) -> PatchingResult:
    """Patch one head's activation (z, q, k, v, or pattern) at every position: values
    `[layer, head]`; with `by_position=True` one position at a time (for the pattern: one query
    row): `[layer, pos, head]`. `kwargs` go to `patch_activations`."""
    if ACTIVATIONS.get(activation, ("", "pos"))[1] == "pos":
        raise ValueError(f"patch_heads patches z, q, k, v or pattern, not {activation!r}; use patch_residual")
    clean_tokens, corrupted_tokens = as_tokens(model, clean), as_tokens(model, corrupted)
    _n_layers, seq_len = model.cfg.n_layers, corrupted_tokens.shape[1]
    layers = layer_list(model, layers)
    heads = head_list(model, heads)
    if by_position:
        positions = position_list(positions, seq_len)
        patches = [Patch(l, p, h) for l in layers for p in positions for h in heads]
    else:
        positions = None
        patches = [Patch(l, None, h) for l in layers for h in heads]
    values, clean_metric, corrupted_metric = patch_activations(
        model, clean_tokens, corrupted_tokens, metric, activation, patches, **kwargs
    )
    if by_position:
        labels = _position_labels(model, clean_tokens, corrupted_tokens, positions)
        values = values.view(len(layers), len(positions), len(heads))
        dims = ("layer", "pos", "head")
        return PatchingResult(values, dims, activation, layers, positions, heads, clean_metric, corrupted_metric, labels)
    values = values.view(len(layers), len(heads))
    return PatchingResult(values, ("layer", "head"), activation, layers, None, heads, clean_metric, corrupted_metric)
