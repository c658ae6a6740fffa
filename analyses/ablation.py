"""Ablation: knock out one unit at a time and measure how much a metric moves.

A unit is a head (its `hook_z`, before W_O), an MLP layer (`hook_mlp_out`), a neuron
(`mlp.hook_post`), or one position of the residual stream (`hook_resid_pre`). Knocking out means
replacing the unit's activation by

- "zero":     0;
- "mean":     its mean over a reference batch, at each position (the reference must have the
              same length as the input; by default the input batch itself);
- "resample": its value on another prompt: each prompt of the input takes a random (seeded)
              prompt of the reference batch.

Zero ablation is the crudest (0 may be far off the activations' usual range); mean and resample
ablation keep the activation "typical" and remove only the information specific to the prompt.

Many units run in one forward pass: the input batch is repeated once per unit (rows
`i * batch ... (i + 1) * batch` belong to unit i) and each unit's hook edits only its own rows.
`batch_size` bounds the rows per forward. The metric is called on each unit's logits
`[batch, pos, d_vocab]`, exactly as it would see them from a plain `model(tokens)`.
"""

from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional, Sequence

import pandas as pd
import plotly.graph_objects as go
import torch
from jaxtyping import Float
from torch import Tensor

from analyses._common import TokensLike, as_tokens, position_list, progress, rows_per_forward, token_strings
from analyses.plotting import bar, heatmap

Metric = Callable[[Float[Tensor, "batch pos d_vocab"]], Float[Tensor, ""]]
Method = Literal["zero", "mean", "resample"]


@dataclass(frozen=True)
class Unit:
    """One ablatable unit: a hook point and the index of the unit in its activation (after the
    batch dimension), e.g. `("blocks.3.attn.hook_z", (slice(None), 5))` is head 3.5 at every position."""

    hook_name: str
    index: tuple
    label: str


@dataclass
class AblationResult:
    """The metric change (ablated - baseline) per unit, shaped like the units: `[layer, n_heads]`
    for heads, `[layer]` for MLPs, `[layer, d_mlp]` for neurons, `[layer, pos]` for positions."""

    effects: Tensor
    baseline: float  # the metric with nothing ablated
    kind: str  # head, mlp, neuron, position
    method: str
    layers: list[int]  # the layer of each row of `effects`
    column_labels: Optional[list[str]] = None  # e.g. the tokens for positions

    @property
    def ablated(self) -> Tensor:
        """The metric itself (not the change) with each unit ablated."""
        return self.effects + self.baseline

    def to_df(self) -> pd.DataFrame:
        """One row per unit: layer, index (head / neuron / position; absent for MLPs), effect, metric."""
        rows = []
        for r, layer in enumerate(self.layers):
            if self.effects.ndim == 1:
                rows.append(dict(kind=self.kind, layer=layer, effect=float(self.effects[r]), metric=float(self.ablated[r])))
                continue
            for c in range(self.effects.shape[1]):
                row = dict(kind=self.kind, layer=layer, index=c, effect=float(self.effects[r, c]), metric=float(self.ablated[r, c]))
                if self.column_labels is not None:
                    row["label"] = self.column_labels[c]
                rows.append(row)
        return pd.DataFrame(rows)

    def figure(self, title: Optional[str] = None) -> go.Figure:
        """Heatmap layer x unit (a bar chart for MLP layers) of the metric change."""
        title = title or f"{self.method} ablation of each {self.kind}: metric change (baseline {self.baseline:.4g})"
        if self.effects.ndim == 1:
            return bar(self.effects, [f"mlp {l}" for l in self.layers], title=title, y_title="metric change")
        x_title = {"head": "head", "neuron": "neuron", "position": "position"}[self.kind]
        layers = [str(l) for l in self.layers]
        return heatmap(
            self.effects, x_labels=self.column_labels, y_labels=layers, title=title, x_title=x_title, y_title="layer", signed=True
        )


# ------------------------------------------------------------------ the engine


def ablate_units(
    model: Any,
    input: TokensLike,
    metric: Metric,
    units: Sequence[Unit],
    method: Method = "zero",
    reference: Optional[TokensLike] = None,
    seed: int = 0,
    batch_size: Optional[int] = None,
    memory_mb: float = 1024,
    disable: Optional[bool] = None,
) -> tuple[Float[Tensor, "unit"], float]:
    """Ablate each unit separately; returns (metric change per unit, baseline metric).

    Args:
        model: a HookedGPT.
        input: text or token ids `[batch, pos]`.
        metric: logits `[batch, pos, d_vocab]` -> scalar tensor.
        units: what to ablate, one at a time.
        method: "zero", "mean" or "resample" (see the module docstring).
        reference: the batch that mean/resample values come from (default: the input).
        seed: for resampling.
        batch_size: rows (units x prompts) per forward; default from `memory_mb`.
        disable: hide the progress bar (default: hidden when not in a terminal).
    """
    if method not in ("zero", "mean", "resample"):
        raise ValueError(f"method must be 'zero', 'mean' or 'resample', got {method!r}")
    tokens = as_tokens(model, input)
    batch, seq_len = tokens.shape
    replacement = _replacement_values(model, tokens, units, method, reference, seed)
    rows = batch_size or rows_per_forward(model, seq_len, memory_mb)
    units_per_forward = max(1, rows // batch)

    effects = torch.zeros(len(units))
    with torch.no_grad():
        baseline = metric(model(tokens))
        chunks = [range(start, min(start + units_per_forward, len(units))) for start in range(0, len(units), units_per_forward)]
        for chunk in progress(chunks, disable=disable, desc=f"{method} ablation"):
            fwd_hooks = _ablation_hooks([units[i] for i in chunk], replacement, batch)
            with model.hooks(fwd_hooks=fwd_hooks):
                logits = model(tokens.repeat(len(chunk), 1))
            for j, i in enumerate(chunk):
                effects[i] = (metric(logits[j * batch : (j + 1) * batch]) - baseline).item()
    return effects, float(baseline)


def _replacement_values(
    model: Any, tokens: Tensor, units: Sequence[Unit], method: Method, reference: Optional[TokensLike], seed: int
) -> dict[str, Optional[Tensor]]:
    """Per hook name, what an ablated unit is set to: None (zero), `[pos, ...]` (mean, broadcast
    over the batch) or `[batch, pos, ...]` (resample)."""
    names = sorted({u.hook_name for u in units})
    if method == "zero":
        return {name: None for name in names}
    ref_tokens = tokens if reference is None else as_tokens(model, reference)
    if ref_tokens.shape[1] != tokens.shape[1]:
        raise ValueError(
            f"{method} ablation takes values position by position, so the reference must have the input's "
            f"length {tokens.shape[1]}; it has {ref_tokens.shape[1]}"
        )
    with torch.no_grad():
        _, ref_cache = model.run_with_cache(ref_tokens, names_filter=names, return_type=None)
    if method == "mean":
        return {name: ref_cache[name].mean(dim=0) for name in names}
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(ref_tokens.shape[0], (tokens.shape[0],), generator=generator).to(ref_tokens.device)
    return {name: ref_cache[name][picks] for name in names}


def _ablation_hooks(units: Sequence[Unit], replacement: dict[str, Optional[Tensor]], batch: int) -> list[tuple[str, Callable]]:
    """One hook per hook point; unit j of the chunk edits rows j*batch..(j+1)*batch."""
    by_name: dict[str, list[tuple[int, Unit]]] = {}
    for j, unit in enumerate(units):
        by_name.setdefault(unit.hook_name, []).append((j, unit))

    def make_hook(name: str) -> Callable:
        value = replacement[name]

        def ablate(activation: Tensor, hook: Any) -> Tensor:
            activation = activation.clone()  # never edit a tensor someone else may hold
            for j, unit in by_name[name]:
                rows = activation[j * batch : (j + 1) * batch]
                where = (slice(None),) + unit.index
                if value is None:
                    rows[where] = 0.0
                elif value.ndim == activation.ndim:  # resample: one value per prompt
                    rows[where] = value[where]
                else:  # mean: one value per position, shared by all prompts
                    rows[where] = value[unit.index]
            return activation

        return ablate

    return [(name, make_hook(name)) for name in by_name]


def _layers(model: Any, layers: Optional[Sequence[int]]) -> list[int]:
    n = model.cfg.n_layers
    return list(range(n)) if layers is None else [l % n for l in layers]


# ------------------------------------------------------------------ what to ablate


def ablate_heads(
    model: Any, input: TokensLike, metric: Metric, method: Method = "zero", layers: Optional[Sequence[int]] = None, **kwargs: Any
) -> AblationResult:
    """Ablate each attention head (its `hook_z` at every position): effects `[layer, n_heads]`.
    `kwargs` go to `ablate_units` (reference, seed, batch_size, memory_mb, disable)."""
    layers = _layers(model, layers)
    n_heads = model.cfg.n_heads
    units = [Unit(f"blocks.{l}.attn.hook_z", (slice(None), h), f"L{l}H{h}") for l in layers for h in range(n_heads)]
    effects, baseline = ablate_units(model, input, metric, units, method, **kwargs)
    return AblationResult(effects.view(len(layers), n_heads), baseline, "head", method, layers)


def ablate_mlps(
    model: Any, input: TokensLike, metric: Metric, method: Method = "zero", layers: Optional[Sequence[int]] = None, **kwargs: Any
) -> AblationResult:
    """Ablate each MLP layer (`hook_mlp_out` at every position): effects `[layer]`."""
    if model.cfg.attn_only:
        raise ValueError("this model is attention-only: it has no MLP layers to ablate")
    layers = _layers(model, layers)
    units = [Unit(f"blocks.{l}.hook_mlp_out", (), f"mlp{l}") for l in layers]
    effects, baseline = ablate_units(model, input, metric, units, method, **kwargs)
    return AblationResult(effects, baseline, "mlp", method, layers)


def ablate_neurons(
    model: Any,
    input: TokensLike,
    metric: Metric,
    method: Method = "zero",
    layers: Optional[Sequence[int]] = None,
    neurons: Optional[Sequence[int]] = None,
    **kwargs: Any,
) -> AblationResult:
    """Ablate each MLP neuron (`mlp.hook_post` at every position): effects `[layer, n_neurons]`
    (all `d_mlp` neurons unless `neurons` picks some)."""
    if model.cfg.attn_only:
        raise ValueError("this model is attention-only: it has no MLP neurons to ablate")
    layers = _layers(model, layers)
    neurons = list(range(model.cfg.d_mlp)) if neurons is None else list(neurons)
    units = [Unit(f"blocks.{l}.mlp.hook_post", (slice(None), n), f"L{l}N{n}") for l in layers for n in neurons]
    effects, baseline = ablate_units(model, input, metric, units, method, **kwargs)
    return AblationResult(effects.view(len(layers), len(neurons)), baseline, "neuron", method, layers, [str(n) for n in neurons])


def ablate_positions(
    model: Any,
    input: TokensLike,
    metric: Metric,
    method: Method = "zero",
    layers: Optional[Sequence[int]] = None,
    positions: Optional[Sequence[int]] = None,
    **kwargs: Any,
) -> AblationResult:
    """Ablate the residual stream at one position before one layer (`hook_resid_pre`):
    effects `[layer, n_positions]`."""
    tokens = as_tokens(model, input)
    layers = _layers(model, layers)
    positions = position_list(positions, tokens.shape[1])
    units = [Unit(f"blocks.{l}.hook_resid_pre", (p,), f"L{l}P{p}") for l in layers for p in positions]
    effects, baseline = ablate_units(model, tokens, metric, units, method, **kwargs)
    strings = token_strings(model, tokens[0])
    labels = [f"{p}: {strings[p]!r}" for p in positions]
    return AblationResult(effects.view(len(layers), len(positions)), baseline, "position", method, layers, labels)
