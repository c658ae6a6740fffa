"""Steering: add a direction to the residual stream and watch the output move.

Activation addition (Turner et al. 2023, "ActAdd"; Rimsky et al. 2024, "contrastive activation
addition") finds a direction from contrastive prompts, the difference of the mean activations at
one hook for prompts that have a property and prompts that don't, and adds it, scaled, at a site
while the model runs. If the direction carries the property, the output shifts toward it.

    direction = steering.direction_from_prompts(model, ["I love", ...], ["I hate", ...], "blocks.1.hook_resid_pre")
    result = steering.steer(model, "The movie was", Site.resid("pre", 1), direction, scales=[0, 2, 4, 8],
                            metric=lambda logits: logits[:, -1, good] - logits[:, -1, bad], max_new_tokens=20)
    result.to_df(); result.figure(); result.texts[8.0]

Every steered run is an `add` intervention (`hookgpt.interventions`), so the metric per scale comes
from the batched engine and the steered generations from `model.interventions(...)`, which hold
through the KV-cached generation loop and are gone afterwards.
"""

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import pandas as pd
import plotly.graph_objects as go
import torch
from jaxtyping import Float
from torch import Tensor

from analyses._common import TokensLike, as_tokens, token_strings
from analyses.metrics import Metric
from hookgpt import interventions as iv
from hookgpt.interventions import Site
from hookgpt.model import HookedGPT


def direction_from_prompts(
    model: HookedGPT, positive: TokensLike, negative: TokensLike, hook_name: str, pos: int = -1
) -> Float[Tensor, "d_model"]:
    """The mean activation at `hook_name` (at position `pos` of each prompt, by default the last)
    over the `positive` prompts minus the mean over the `negative` ones.

    Prompts are texts (each tokenised on its own, so they may differ in length) or token ids."""
    def mean_activation(prompts: TokensLike, what: str) -> Tensor:
        batches = [as_tokens(model, p) for p in prompts] if isinstance(prompts, list) and prompts and isinstance(prompts[0], str) else [as_tokens(model, prompts)]
        acts = []
        for tokens in batches:
            if not -tokens.shape[1] <= pos < tokens.shape[1]:
                raise ValueError(f"pos={pos} is out of range for a {what} prompt of {tokens.shape[1]} tokens")
            with torch.no_grad():
                _, cache = model.run_with_cache(tokens, names_filter=hook_name, return_type=None)
            acts.append(cache[hook_name][:, pos])
        return torch.cat(acts).mean(dim=0)

    model._resolve(hook_name)  # a clear KeyError for a misspelt name
    return mean_activation(positive, "positive") - mean_activation(negative, "negative")


@dataclass
class SteeringResult:
    """What steering did, per scale: the metric (if one was given), the top tokens' probability
    change at the last position, and the steered continuations (if asked for)."""

    scales: list[float]
    values: Optional[Tensor]  # [n_scales] the metric at each scale (scale 0: unsteered)
    top_tokens: list[str]  # the tokens whose probabilities are reported
    probs: Tensor  # [n_scales, n_top] their probability at the last position of the first prompt
    texts: dict[float, str] = field(default_factory=dict)  # scale -> the steered continuation
    site: str = ""

    def to_df(self) -> pd.DataFrame:
        """One row per scale: scale, metric (if any), each top token's probability, the text."""
        rows = []
        for i, s in enumerate(self.scales):
            row = {"scale": s}
            if self.values is not None:
                row["metric"] = float(self.values[i])
            row.update({f"p({t!r})": float(self.probs[i, j]) for j, t in enumerate(self.top_tokens)})
            if s in self.texts:
                row["text"] = self.texts[s]
            rows.append(row)
        return pd.DataFrame(rows)

    def figure(self, title: Optional[str] = None) -> go.Figure:
        """The probability of each top token against the steering scale (and the metric, if any)."""
        fig = go.Figure()
        for j, t in enumerate(self.top_tokens):
            fig.add_scatter(x=self.scales, y=self.probs[:, j].tolist(), mode="lines+markers", name=f"p({t!r})")
        if self.values is not None:
            fig.add_scatter(x=self.scales, y=self.values.tolist(), mode="lines+markers", name="metric", yaxis="y2")
            fig.update_layout(yaxis2=dict(title="metric", overlaying="y", side="right"))
        fig.update_layout(title=title or f"Steering at {self.site}", xaxis_title="scale", yaxis_title="probability")
        return fig


def steer(
    model: HookedGPT,
    input: TokensLike,
    site: Union[Site, str],
    direction: Tensor,
    scales: Sequence[float] = (0.0, 1.0, 2.0, 4.0, 8.0),
    metric: Optional[Metric] = None,
    read_positions: Union[None, int, Sequence[int]] = -1,
    top_k: int = 5,
    max_new_tokens: int = 0,
    seed: int = 0,
    **generate_kwargs: Any,
) -> SteeringResult:
    """Add `scale * direction` at `site` for each scale and report what changes.

    Args:
        model: a HookedGPT.
        input: text or token ids `[batch, pos]`.
        site: where to add (e.g. `Site.resid("pre", 1)`: every position of resid_pre 1).
        direction: `[d_model]` (e.g. from `direction_from_prompts`).
        scales: the steering strengths; include 0 for the unsteered run.
        metric: optional, logits at `read_positions` -> scalar (see `analyses.metrics`); run for
            every scale through the batched interventions engine.
        top_k: report the probabilities of the tokens most changed by the largest scale.
        max_new_tokens: if > 0, also generate a continuation of the first prompt at every scale
            (greedy unless `do_sample=True` is passed; seeded with `seed`).
    """
    tokens = as_tokens(model, input)
    scales = [float(s) for s in scales]
    if not scales:
        raise ValueError("scales is empty: give at least one steering scale")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive int, got {top_k!r}")
    sets = [[iv.add(site, direction, scale=s)] for s in scales]
    values = None
    if metric is not None:
        values, _ = iv.evaluate(model, tokens, sets, metric, read_positions, desc="steering")

    with torch.no_grad():
        last_probs = []
        for ivs in sets:
            with model.interventions(*ivs):
                last_probs.append(model(tokens[:1], logit_positions=[-1])[0, -1].softmax(-1))
        last_probs = torch.stack(last_probs)  # [n_scales, d_vocab]
        moved = (last_probs[-1] - last_probs[0]).abs() if len(scales) > 1 else last_probs[0]
        top = moved.topk(min(top_k, moved.shape[0])).indices

    texts = {}
    if max_new_tokens > 0:
        for s, ivs in zip(scales, sets):
            with model.interventions(*ivs):
                out = model.generate(tokens[:1], max_new_tokens=max_new_tokens, seed=seed, **generate_kwargs)
            texts[s] = "".join(token_strings(model, out[0, tokens.shape[1] :]))
    return SteeringResult(scales, values, token_strings(model, top), last_probs[:, top].cpu(), texts, site=str(site))
