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

Each unit is a `hookgpt.interventions.Site`, each ablation one intervention set (`zero`, `mean`
or `resample` of that site), and the sweep runs through the interventions engine
(`hookgpt.interventions.evaluate`): many units per batched forward, each starting at its own layer,
equal to one `run_with_hooks` per unit (also with hooks of your own attached). The metric is
called on each unit's logits at `read_positions` (default: every position, `[batch, pos,
d_vocab]`, exactly as from a plain `model(tokens)`); see `analyses.metrics`.
"""

from dataclasses import dataclass
from typing import Any, Literal, Optional, Sequence, Union

import pandas as pd
import plotly.graph_objects as go
from jaxtyping import Float
from torch import Tensor

from analyses._common import TokensLike, as_tokens, layer_list, position_list, token_strings
from analyses.metrics import Metric
from analyses.plotting import bar, heatmap
from hookgpt import interventions as iv
from hookgpt.interventions import Site
from hookgpt.model import HookedGPT

Method = Literal["zero", "mean", "resample"]
Unit = Site  # an ablatable unit is a site: Site.head(L, h), Site.mlp_out(L), Site.neuron(L, n), ...


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
    unit_labels: Optional[list[str]] = None  # each unit's site label (L1H2, mlp1, L1N30, resid_pre 3 @ pos 5), row-major

    @property
    def ablated(self) -> Tensor:
        """The metric itself (not the change) with each unit ablated."""
        return self.effects + self.baseline

    def to_df(self) -> pd.DataFrame:
        """One row per unit: layer, index (head / neuron / position; absent for MLPs), effect, metric."""
        rows = []
        labels = iter(self.unit_labels or [])
        for r, layer in enumerate(self.layers):
            if self.effects.ndim == 1:
                rows.append(dict(kind=self.kind, label=next(labels, None), layer=layer, effect=float(self.effects[r]), metric=float(self.ablated[r])))
                continue
            for c in range(self.effects.shape[1]):
                row = dict(kind=self.kind, label=next(labels, None), layer=layer, index=c, effect=float(self.effects[r, c]), metric=float(self.ablated[r, c]))
                if self.column_labels is not None:
                    row["token" if self.kind == "position" else "column"] = self.column_labels[c]
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


# ------------------------------------------------------------------ the sweep


def ablate_units(
    model: HookedGPT,
    input: TokensLike,
    metric: Metric,
    units: Sequence[Site],
    method: Method = "zero",
    reference: Optional[TokensLike] = None,
    seed: int = 0,
    read_positions: Union[None, int, Sequence[int]] = None,
    batch_size: Optional[int] = None,
    memory_mb: float = 1024,
    disable: Optional[bool] = None,
    engine: Literal["fast", "naive"] = "fast",
) -> tuple[Float[Tensor, "unit"], float]:
    """Ablate each unit separately; returns (metric change per unit, baseline metric).

    Args:
        model: a HookedGPT.
        input: text or token ids `[batch, pos]`.
        metric: logits at `read_positions` (default: all, `[batch, pos, d_vocab]`) -> scalar tensor.
        units: the sites to ablate, one at a time.
        method: "zero", "mean" or "resample" (see the module docstring).
        reference: the batch that mean/resample values come from (default: the input).
        seed: for resampling.
        batch_size: rows (units x prompts) per forward; default from `memory_mb`.
        disable: hide the progress bar (default: shown only in a terminal, after a few seconds).
        engine: "fast" (batched) or "naive" (one forward per unit; the reference).
    """
    if method not in ("zero", "mean", "resample"):
        raise ValueError(f"method must be 'zero', 'mean' or 'resample', got {method!r}")
    tokens = as_tokens(model, input)
    ref_tokens = tokens if reference is None else as_tokens(model, reference)
    if method != "zero" and ref_tokens.shape[1] != tokens.shape[1]:
        raise ValueError(
            f"{method} ablation takes values position by position, so the reference must have the input's "
            f"length {tokens.shape[1]}; it has {ref_tokens.shape[1]}"
        )
    make = {"zero": lambda s: iv.zero(s), "mean": lambda s: iv.mean(s, ref_tokens), "resample": lambda s: iv.resample(s, ref_tokens, seed)}
    sets = [[make[method](unit)] for unit in units]
    values, baseline = iv.evaluate(
        model, tokens, sets, metric, read_positions, engine, batch_size, memory_mb, disable, desc=f"{method} ablation"
    )
    return values - baseline, baseline


# ------------------------------------------------------------------ what to ablate


def ablate_heads(
    model: HookedGPT, input: TokensLike, metric: Metric, method: Method = "zero", layers: Optional[Sequence[int]] = None, **kwargs: Any
) -> AblationResult:
    """Ablate each attention head (its `hook_z` at every position): effects `[layer, n_heads]`.
    `kwargs` go to `ablate_units` (reference, seed, batch_size, memory_mb, disable)."""
    layers = layer_list(model, layers)
    n_heads = model.cfg.n_heads
    units = [Site.head(l, h) for l in layers for h in range(n_heads)]
    effects, baseline = ablate_units(model, input, metric, units, method, **kwargs)
    return AblationResult(effects.view(len(layers), n_heads), baseline, "head", method, layers, unit_labels=[u.label for u in units])


def ablate_mlps(
    model: HookedGPT, input: TokensLike, metric: Metric, method: Method = "zero", layers: Optional[Sequence[int]] = None, **kwargs: Any
) -> AblationResult:
    """Ablate each MLP layer (`hook_mlp_out` at every position): effects `[layer]`."""
    if model.cfg.attn_only:
        raise ValueError("this model is attention-only: it has no MLP layers to ablate")
    layers = layer_list(model, layers)
    units = [Site.mlp_out(l) for l in layers]
    effects, baseline = ablate_units(model, input, metric, units, method, **kwargs)
    return AblationResult(effects, baseline, "mlp", method, layers, unit_labels=[u.label for u in units])


def ablate_neurons(
    model: HookedGPT,
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
    layers = layer_list(model, layers)
    neurons = list(range(model.cfg.d_mlp)) if neurons is None else list(neurons)
    units = [Site.neuron(l, n) for l in layers for n in neurons]
    effects, baseline = ablate_units(model, input, metric, units, method, **kwargs)
    return AblationResult(
        effects.view(len(layers), len(neurons)), baseline, "neuron", method, layers, [str(n) for n in neurons], [u.label for u in units]
    )


def ablate_positions(
    model: HookedGPT,
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
    layers = layer_list(model, layers)
    positions = position_list(positions, tokens.shape[1])
    units = [Site.resid("pre", l, pos=p) for l in layers for p in positions]
    effects, baseline = ablate_units(model, tokens, metric, units, method, **kwargs)
    strings = token_strings(model, tokens[0])
    labels = [f"{p}: {strings[p]!r}" for p in positions]
    return AblationResult(effects.view(len(layers), len(positions)), baseline, "position", method, layers, labels, [u.label for u in units])
