"""Putting an SAE into the model, and editing its features.

    with splice(model, sae):                          # blocks.1.hook_resid_pre -> the SAE's reconstruction
        loss = model(tokens, return_type="loss")
    with splice(model, sae, use_error_term=True):     # + (input - reconstruction): outputs unchanged
        with ablate_features(sae, [12, 40]):          # ... except for what features 12 and 40 wrote
            logits = model(tokens)
    with model.hooks([steering_hook(sae, 7, 4.0)]):   # add 4 x feature 7's direction, no splicing
        text = model.generate("ROMEO:", max_new_tokens=20)

Every piece here is a `with` block built on hook handles that are removed in `finally`, also when
the body raises, and that stay attached through `model.generate` (the SAE works position by
position, so the KV cache's one new position at a time is fine).

Feature edits are hooks on the SAE's own hook points: `ablate_features` and `clamp_features` on
`hook_sae_acts_post`, `steer_features` on `hook_sae_recons`. They change the model only while the
SAE is spliced in; with `use_error_term=True` the model then changes by exactly the edit's effect
on the reconstruction. `feature_attribution` is activation x gradient of a metric, per feature and
position, through the spliced SAE.

Splicing is an intervention of `hookgpt.interventions` (`splice`, what `model.saes(...)` applies),
so it composes with every other intervention and the batched engine treats a spliced model
exactly (fast path == naive loop).
"""

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence, Union

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from analyses._common import TokensLike, as_tokens

from .sae import SAE
from hookgpt.model import HookedGPT

Features = Union[int, Sequence[int], Tensor]
Positions = Union[None, int, Sequence[int]]


def _feature_ids(sae: SAE, features: Features) -> list[int]:
    ids = [int(f) for f in (features.flatten().tolist() if isinstance(features, Tensor) else [features] if isinstance(features, int) else features)]
    bad = [f for f in ids if not 0 <= f < sae.cfg.d_sae]
    if bad or not ids:
        raise IndexError(f"features must be ids in [0, d_sae={sae.cfg.d_sae}), got {bad or 'none'}")
    return ids


def _check_hook(model: HookedGPT, sae: SAE) -> str:
    name = sae.cfg.hook_name
    if not name:
        raise ValueError("this SAE has no hook_name; set SAEConfig.hook_name to the model hook it reads")
    model._resolve(name)  # KeyError naming the closest hook names
    return name


@contextlib.contextmanager
def splice(model: HookedGPT, *saes: SAE, use_error_term: bool = False) -> Iterator[Any]:
    """Run `model` with each SAE in place of its hook's activation (`sae.cfg.hook_name`).

    With `use_error_term=True` the SAE's output is reconstruction + error, which equals the input
    unless a hook edits the SAE's features: use it to intervene on features while keeping the rest
    of the model exact. Removed on exit, error or not."""
    if not saes:
        raise ValueError("splice needs at least one SAE")
    names = [_check_hook(model, sae) for sae in saes]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"two SAEs read the same hook {duplicates}; splice one SAE per hook")
    with model.saes(*saes, use_error_term=use_error_term):  # a splice intervention (hookgpt.interventions)
        yield model


def _position_index(positions: Positions) -> Any:
    if positions is None:
        return slice(None)
    return [positions] if isinstance(positions, int) else list(positions)


@contextlib.contextmanager
def _sae_hook(sae: SAE, name: str, fn: Callable[[Tensor, Any], Tensor]) -> Iterator[SAE]:
    handles = sae.add_hook(name, fn)
    try:
        yield sae
    finally:
        for handle in handles:
            handle.remove()


def ablate_features(sae: SAE, features: Features, positions: Positions = None) -> contextlib.AbstractContextManager:
    """Set `features` to 0 (at `positions` of `[batch, pos, d_sae]` activations, or everywhere)."""
    return clamp_features(sae, features, 0.0, positions)


def clamp_features(sae: SAE, features: Features, value: float, positions: Positions = None) -> contextlib.AbstractContextManager:
    """Set `features` to `value` (at `positions`, or everywhere) while the block runs."""
    ids, where = _feature_ids(sae, features), _position_index(positions)

    def clamp(acts: Tensor, hook: Any) -> Tensor:
        acts = acts.clone()
        if acts.ndim >= 2 and where != slice(None):
            acts[..., where, ids] = value
        else:
            acts[..., ids] = value
        return acts

    return _sae_hook(sae, "hook_sae_acts_post", clamp)


def steering_vector(sae: SAE, features: Features, coefficient: float) -> Float[Tensor, "d_in"]:
    """`coefficient` times the sum of the features' decoder directions."""
    return coefficient * sae.W_dec[_feature_ids(sae, features)].sum(0)


def steer_features(sae: SAE, features: Features, coefficient: float, positions: Positions = None) -> contextlib.AbstractContextManager:
    """Add `coefficient * W_dec[feature]` to the SAE's reconstruction (at `positions`, or everywhere)."""
    vector, where = steering_vector(sae, features, coefficient).detach(), _position_index(positions)

    def steer(recons: Tensor, hook: Any) -> Tensor:
        if recons.ndim >= 2 and where != slice(None):
            recons = recons.clone()
            recons[..., where, :] += vector.to(recons.dtype)
            return recons
        return recons + vector.to(recons.dtype)

    return _sae_hook(sae, "hook_sae_recons", steer)


def steering_hook(sae: SAE, features: Features, coefficient: float) -> tuple[str, Callable[[Tensor, Any], Tensor]]:
    """`(hook_name, fn)` adding `coefficient * W_dec[feature]` straight to the model's activation at
    the SAE's hook (no splicing): pass it to `model.hooks([...])` or `run_with_hooks`."""
    vector = steering_vector(sae, features, coefficient).detach()

    def steer(act: Tensor, hook: Any) -> Tensor:
        return act + vector.to(act.device, act.dtype)

    return sae.cfg.hook_name, steer


# ============================================================================ attribution


@dataclass
class FeatureAttribution:
    """Activation x gradient of a metric, per feature and position.

    `values [batch, pos, d_sae]`: the first-order estimate of how much the metric would drop if the
    feature were ablated there; `acts` and `grads` the same shape; `tokens [batch, pos]`.
    """

    values: Tensor
    acts: Tensor
    grads: Tensor
    tokens: Tensor
    metric_value: float

    def per_feature(self) -> Float[Tensor, "d_sae"]:
        """Summed over batch and positions."""
        return self.values.sum(dim=(0, 1))

    def top(self, k: int = 10) -> list[int]:
        """The `k` features with the largest |summed attribution|."""
        return self.per_feature().abs().topk(min(k, self.values.shape[-1])).indices.tolist()

    def to_df(self, k: int = 20) -> pd.DataFrame:
        total = self.per_feature()
        rows = []
        for f in self.top(k):
            where = self.values[..., f].abs().flatten().argmax()
            b, p = divmod(int(where), self.values.shape[1])
            rows.append({"feature": f, "attribution": float(total[f]), "max_activation": float(self.acts[..., f].max()),
                         "top_batch": b, "top_pos": p})
        return pd.DataFrame(rows)

    def figure(self, k: int = 20) -> Any:
        import plotly.express as px

        df = self.to_df(k)
        fig = px.bar(df, x=df["feature"].astype(str), y="attribution", title="feature attribution (activation x gradient)")
        fig.update_layout(xaxis_title="feature", template="plotly_white")
        return fig


def feature_attribution(model: HookedGPT, sae: SAE, input: TokensLike, metric: Callable[[Tensor], Tensor],
                        use_error_term: bool = True) -> FeatureAttribution:
    """Attribute `metric(logits)` (a scalar) to the SAE's features at every position: the features
    are made a leaf of the graph, the metric differentiated with `torch.autograd.grad` (no `.grad`
    is left on the model's parameters), and `acts * grad` returned. With `use_error_term` (the
    default) the rest of the model runs exactly as without the SAE."""
    tokens = as_tokens(model, input)
    saved: dict[str, Tensor] = {}

    def make_leaf(acts: Tensor, hook: Any) -> Tensor:
        leaf = acts.detach().requires_grad_(True)
        saved["acts"] = leaf
        return leaf

    with torch.enable_grad(), splice(model, sae, use_error_term=use_error_term), _sae_hook(sae, "hook_sae_acts_post", make_leaf):
        value = metric(model(tokens))
        if not isinstance(value, Tensor) or value.numel() != 1:
            raise ValueError(f"metric must return a scalar tensor, got {getattr(value, 'shape', type(value).__name__)}")
        (grad,) = torch.autograd.grad(value.reshape(()), saved["acts"])
    acts = saved["acts"].detach()
    return FeatureAttribution(values=acts * grad, acts=acts, grads=grad, tokens=tokens, metric_value=float(value.detach()))

