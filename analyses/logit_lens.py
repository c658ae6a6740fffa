"""The logit lens: read the residual stream after every layer as if it were the last one.

The model turns its final residual stream into logits with `unembed(ln_final(resid))`. The logit
lens applies the same map to the residual stream *before* each layer (and, with `incl_mid`,
between each layer's attention and MLP):

    lens_logits[layer] = unembed(ln_final(resid[layer]))

`ln_final` is applied for real to each intermediate residual: each one is centred and divided by
its *own* norm. That is what the logit lens means: "what would the model predict if it stopped
here" (what `cache.accumulated_resid(apply_ln=True)` also does, as in TransformerLens 2.18).
(The alternative, `cache.accumulated_resid(apply_ln=True, recompute_ln=False)`, divides every
layer by the final layer's scale. That keeps `ln_final` linear, which is what direct logit attribution needs,
but an early residual with a small norm then gives washed-out probabilities. The two differ by a
positive factor per position, so when `ln_final.b` and `b_U` are zero (e.g. after folding and
centring) they rank the tokens alike; the probabilities still differ.)

`logit_lens` returns a `LogitLensResult` with the top-k predictions and the probability and rank
of a target token (by default the actual next token) at every layer and position; `.to_df()`,
`.figure()` and `.grid_props()` (the props of the `LogitLensGrid` view) present it.
"""

from dataclasses import dataclass
from typing import Any, Optional, Union

import pandas as pd
import plotly.graph_objects as go
import torch
from jaxtyping import Float, Int
from torch import Tensor

from analyses._common import TokensLike, as_tokens, check_count, token_id, token_strings
from analyses.plotting import heatmap
from hookgpt.errors import ArgumentError, ArgumentTypeError
from hookgpt.model import HookedGPT


def _resid_names(name: str) -> bool:
    return name.endswith(("hook_resid_pre", "hook_resid_mid", "hook_resid_post"))


def residual_stack(
    model: HookedGPT, tokens: Int[Tensor, "batch pos"], incl_mid: bool = True, cache: Optional[Any] = None
) -> tuple[Float[Tensor, "layer batch pos d_model"], list[str]]:
    """The residual stream before every layer and after the last: `[layer, batch, pos, d_model]`
    with labels "0_pre", ("0_mid",) "1_pre", ..., "final_post". Uses `cache` if given (it must hold
    the resid_pre/mid/post activations), else runs the model caching only those."""
    if cache is None:
        _, cache = model.run_with_cache(tokens, names_filter=_resid_names, return_type=None)
    return cache.accumulated_resid(incl_mid=incl_mid, return_labels=True)


def _lens_logits(model: HookedGPT, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]:
    """The model's own final LayerNorm and unembedding, applied to one residual stream."""
    return model.unembed(model.ln_final(resid))


def logit_lens_logits(
    model: HookedGPT, input: TokensLike, incl_mid: bool = True, cache: Optional[Any] = None
) -> tuple[Float[Tensor, "layer batch pos d_vocab"], list[str]]:
    """The logit lens for a batch, as logits `[layer, batch, pos, d_vocab]` with layer labels.

    This holds `n_layers * (2 if incl_mid) + 1` full sets of logits in memory; for long inputs or
    big vocabularies use `logit_lens`, which keeps only the top-k and the target per layer.
    """
    tokens = as_tokens(model, input)
    with torch.no_grad():
        stack, labels = residual_stack(model, tokens, incl_mid, cache)
        return torch.stack([_lens_logits(model, resid) for resid in stack]), labels


@dataclass
class LogitLensResult:
    """The logit lens of one sequence. Positions without a target have id -1, prob NaN, rank -1."""

    tokens: list[str]  # [pos] the input tokens
    token_ids: Int[Tensor, "pos"]
    layer_labels: list[str]  # [layer] "0_pre", "0_mid", ..., "final_post"
    top_token_ids: Int[Tensor, "layer pos k"]
    top_tokens: list[list[list[str]]]  # [layer][pos][k], most likely first
    top_probs: Float[Tensor, "layer pos k"]
    target_ids: Int[Tensor, "pos"]
    target_tokens: list[str]  # [pos], "" where there is no target
    target_probs: Float[Tensor, "layer pos"]
    target_ranks: Int[Tensor, "layer pos"]  # 0 = the top prediction

    @property
    def has_target(self) -> Tensor:
        return self.target_ids >= 0

    def to_df(self) -> pd.DataFrame:
        """One row per (layer, position): the top-1 prediction, the top-k, and the target's prob/rank."""
        rows = []
        for layer, label in enumerate(self.layer_labels):
            for pos, token in enumerate(self.tokens):
                has_target = bool(self.has_target[pos])
                rows.append(
                    dict(
                        layer=label,
                        layer_index=layer,
                        pos=pos,
                        token=token,
                        top_token=self.top_tokens[layer][pos][0],
                        top_prob=float(self.top_probs[layer, pos, 0]),
                        target=self.target_tokens[pos] if has_target else None,
                        target_prob=float(self.target_probs[layer, pos]) if has_target else float("nan"),
                        target_rank=int(self.target_ranks[layer, pos]) if has_target else None,
                        top_tokens=self.top_tokens[layer][pos],
                        top_probs=self.top_probs[layer, pos].tolist(),
                    )
                )
        return pd.DataFrame(rows)

    def figure(self, value: str = "auto", title: Optional[str] = None) -> go.Figure:
        """Heatmap layer x position. `value`: "target_prob", "target_rank" or "top_prob"
        ("auto": the target's probability if there are targets). Each cell shows the top-1 token;
        hovering shows the top-k."""
        if value == "auto":
            value = "target_prob" if bool(self.has_target.any()) else "top_prob"
        values = {"target_prob": self.target_probs, "target_rank": self.target_ranks.float(), "top_prob": self.top_probs[..., 0]}
        if value not in values:
            raise ArgumentError(f"value must be one of {sorted(values)} or 'auto', got {value!r}")
        z = values[value].clone()
        if value == "target_rank":
            z[:, ~self.has_target] = float("nan")
        text = [[_short(self.top_tokens[l][p][0]) for p in range(len(self.tokens))] for l in range(len(self.layer_labels))]
        hover = [[self._hover(l, p) for p in range(len(self.tokens))] for l in range(len(self.layer_labels))]
        return heatmap(
            z,
            x_labels=[repr(t)[1:-1] for t in self.tokens],
            y_labels=self.layer_labels,
            title=title or f"Logit lens ({value.replace('_', ' ')})",
            x_title="position (input token)",
            y_title="residual stream before layer",
            text=text,
            hover=hover,
            signed=False,
            zmin=0.0,
            zmax=1.0 if value != "target_rank" else None,
            colorbar_title=value,
        )

    def _hover(self, layer: int, pos: int) -> str:
        lines = [f"{t!r}: {float(p):.3f}" for t, p in zip(self.top_tokens[layer][pos], self.top_probs[layer, pos])]
        if self.has_target[pos]:
            prob, rank = float(self.target_probs[layer, pos]), int(self.target_ranks[layer, pos])
            lines.append(f"target {self.target_tokens[pos]!r}: p={prob:.3g}, rank {rank}")
        return "<br>".join(lines)

    def grid_props(self) -> dict[str, Any]:
        """The props of the `LogitLensGrid` view, as keyword arguments of
        `analyses.render.logit_lens_grid` (tokens, layer_labels, top_tokens, top_probs, target_tokens)."""
        return dict(
            tokens=self.tokens,
            layer_labels=self.layer_labels,
            top_tokens=self.top_tokens,
            top_probs=self.top_probs.cpu().numpy(),
            target_tokens=[t if ok else "" for t, ok in zip(self.target_tokens, self.has_target.tolist())],
        )


def _short(token: str, width: int = 6) -> str:
    token = repr(token)[1:-1]
    return token if len(token) <= width else token[: width - 1] + "…"


def _targets(model: HookedGPT, tokens: Int[Tensor, "pos"], target: Union[None, str, int, Tensor]) -> Int[Tensor, "pos"]:
    """Target id per position; "next" (the default) is the actual next token, none at the last position."""
    n = tokens.shape[0]
    if target is None:
        return torch.full((n,), -1, dtype=torch.long, device=tokens.device)
    if isinstance(target, str) and target == "next":
        return torch.cat([tokens[1:], tokens.new_full((1,), -1)])
    if isinstance(target, (int, str)):
        return torch.full((n,), token_id(model, target), dtype=torch.long, device=tokens.device)
    target = torch.as_tensor(target, device=tokens.device)
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ArgumentTypeError(f"target ids must be integers, got dtype {target.dtype}")
    target = target.long().flatten()
    if target.shape != (n,):
        raise ArgumentError(f"target must be 'next', a token, or ids of shape [pos]=({n},), got shape {tuple(target.shape)}")
    if bool(((target < -1) | (target >= model.cfg.d_vocab)).any()):
        raise ArgumentError(f"target ids must lie in [0, d_vocab={model.cfg.d_vocab}) or be -1 (no target)")
    return target


def logit_lens(
    model: HookedGPT,
    input: TokensLike,
    target: Union[None, str, int, Tensor] = "next",
    k: int = 5,
    incl_mid: bool = True,
    cache: Optional[Any] = None,
) -> LogitLensResult:
    """The logit lens of one sequence: top-k predictions and a target token's probability and
    rank at every layer and position.

    Args:
        model: a HookedGPT.
        input: text (BOS prepended) or token ids `[pos]` / `[1, pos]`.
        target: "next" (the actual next token; none at the last position), one token (id or
            string) for every position, ids `[pos]` (-1 = no target), or None.
        k: how many top predictions to keep.
        incl_mid: also read the residual stream between attention and MLP ("{L}_mid").
        cache: an `ActivationCache` of this input holding resid_pre/mid/post (not modified);
            otherwise the model is run once.
    """
    check_count(k, "k", high=model.cfg.d_vocab)
    tokens = as_tokens(model, input)
    if tokens.shape[0] != 1:
        raise ArgumentError(f"logit_lens reads one sequence, got a batch of {tokens.shape[0]}; use logit_lens_logits for batches")
    targets = _targets(model, tokens[0], target)
    has_target = targets >= 0
    safe_targets = targets.clamp(min=0)

    top_ids, top_probs, target_probs, target_ranks = [], [], [], []
    with torch.no_grad():
        stack, labels = residual_stack(model, tokens, incl_mid, cache)
        for resid in stack:  # one layer at a time: only [pos, d_vocab] logits in memory
            logits = _lens_logits(model, resid)[0]  # [pos, d_vocab]
            log_probs = logits.float().log_softmax(dim=-1)
            probs, ids = log_probs.exp().topk(k, dim=-1)
            top_ids.append(ids)
            top_probs.append(probs)
            target_logit = logits.gather(-1, safe_targets[:, None])  # [pos, 1]
            target_probs.append(torch.where(has_target, log_probs.gather(-1, safe_targets[:, None])[:, 0].exp(), float("nan")))
            target_ranks.append(torch.where(has_target, (logits > target_logit).sum(dim=-1), -1))

    top_ids_t = torch.stack(top_ids).cpu()
    flat_strings = token_strings(model, top_ids_t)
    n_layers, n_pos, _ = top_ids_t.shape
    top_tokens = [[flat_strings[(l * n_pos + p) * k : (l * n_pos + p + 1) * k] for p in range(n_pos)] for l in range(n_layers)]
    target_strings = token_strings(model, safe_targets)
    return LogitLensResult(
        tokens=token_strings(model, tokens[0]),
        token_ids=tokens[0].cpu(),
        layer_labels=labels,
        top_token_ids=top_ids_t,
        top_tokens=top_tokens,
        top_probs=torch.stack(top_probs).cpu(),
        target_ids=targets.cpu(),
        target_tokens=[s if ok else "" for s, ok in zip(target_strings, has_target.tolist())],
        target_probs=torch.stack(target_probs).cpu(),
        target_ranks=torch.stack(target_ranks).cpu(),
    )
