"""Direct logit attribution: how much each component wrote, directly, into one logit.

The final residual stream is a sum of everything that wrote to it:

    resid_final = embed + pos_embed + sum_L (attn_out_L + mlp_out_L)
    attn_out_L  = sum_h z_Lh @ W_O[L, h] + b_O[L]           (each head, plus a bias)
    mlp_out_L   = sum_n post_Ln * W_out[L, n] + b_out[L]     (each neuron, plus a bias)

and the logit of token t is `ln_final(resid_final) @ W_U[:, t] + b_U[t]`. With `ln_final`'s
scale frozen at its value in this run, `ln_final` is linear (centre, divide by the scale, times
`w`, plus `b`), so the logit splits exactly into one term per component plus a constant:

    logit_t = sum_c (centre(c) / scale) @ (w * W_U[:, t])  +  (ln_final.b @ W_U[:, t] + b_U[t])

`ActivationCache.logit_attrs` computes the per-component terms; `direct_logit_attribution`
assembles the components (embeddings, each head or each layer's attention, each MLP or each
neuron) and reports the constant, so `result.attributions.sum(0) + result.constant` is the
actual logit (difference). "Direct" means only the path straight to the unembedding: a head
that matters by feeding a later layer gets no credit here (use patching for that).
"""

from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import pandas as pd
import plotly.graph_objects as go
import torch
from einops import einsum
from jaxtyping import Float, Int
from torch import Tensor

from analyses._common import TokensLike, as_tokens, position_list, token_id
from analyses.plotting import bar, heatmap
from hookgpt.errors import ArgumentError, ArgumentTypeError
from hookgpt.model import HookedGPT

TokenChoice = Union[int, str, Int[Tensor, "batch"]]


@dataclass
class LogitAttribution:
    """Each component's direct contribution to a logit (difference), at each prompt and position."""

    attributions: Float[Tensor, "component batch pos"]
    labels: list[str]  # "embed", "pos_embed", "L0H3", "0_attn_bias", "0_attn_out", "0_mlp_out", "L0N17", "0_mlp_bias"
    kinds: list[str]  # embed, pos_embed, head, attn_bias, attn, mlp, neuron, mlp_bias
    layers: list[Optional[int]]
    indices: list[Optional[int]]  # the head or neuron number
    constant: Float[Tensor, "batch pos"]  # ln_final.b @ W_U[:, t] + b_U[t] (difference)
    logits: Float[Tensor, "batch pos"]  # the model's actual logit (difference)
    positions: list[int]
    n_layers: int

    def total(self) -> Float[Tensor, "batch pos"]:
        """Sum of all attributions plus the constant: equals `logits`."""
        return self.attributions.sum(dim=0) + self.constant

    def mean(self) -> Float[Tensor, "component"]:
        """Each component's attribution averaged over prompts and positions."""
        return self.attributions.mean(dim=(1, 2))

    def _grid(self, kind: str, width: int) -> Float[Tensor, "layer index"]:
        grid = torch.full((self.n_layers, width), float("nan"))
        mean = self.mean()
        for i, (k, layer, index) in enumerate(zip(self.kinds, self.layers, self.indices)):
            if k == kind:
                grid[layer, index] = mean[i]
        return grid

    def head_attributions(self) -> Float[Tensor, "layer n_heads"]:
        """`[n_layers, n_heads]`, averaged over prompts and positions (needs `per_head=True`)."""
        if "head" not in self.kinds:
            raise ArgumentError("no per-head attributions: call direct_logit_attribution(..., per_head=True)")
        return self._grid("head", max(i for k, i in zip(self.kinds, self.indices) if k == "head") + 1)

    def neuron_attributions(self) -> Float[Tensor, "layer d_mlp"]:
        """`[n_layers, d_mlp]`, averaged over prompts and positions (needs `per_neuron=True`)."""
        if "neuron" not in self.kinds:
            raise ArgumentError("no per-neuron attributions: call direct_logit_attribution(..., per_neuron=True)")
        return self._grid("neuron", max(i for k, i in zip(self.kinds, self.indices) if k == "neuron") + 1)

    def to_df(self) -> pd.DataFrame:
        """One row per component and position: label, kind, layer, index, pos, attribution
        (mean over the batch)."""
        per_pos = self.attributions.mean(dim=1)  # [component, pos]
        rows = [
            dict(component=label, kind=kind, layer=layer, index=index, pos=pos, attribution=float(per_pos[c, j]))
            for c, (label, kind, layer, index) in enumerate(zip(self.labels, self.kinds, self.layers, self.indices))
            for j, pos in enumerate(self.positions)
        ]
        df = pd.DataFrame(rows)
        return df.astype({"layer": "Int64", "index": "Int64"})

    def figure(self, view: str = "components", title: Optional[str] = None) -> go.Figure:
        """"components": a bar per component (neurons summed per layer); "heads": heatmap layer x
        head; "neurons": heatmap layer x neuron. Values are means over prompts and positions."""
        if view == "heads":
            grid = self.head_attributions()
            title = title or "Direct logit attribution per head"
            layers = [str(l) for l in range(self.n_layers)]
            return heatmap(grid, y_labels=layers, title=title, x_title="head", y_title="layer", signed=True)
        if view == "neurons":
            grid = self.neuron_attributions()
            title = title or "Direct logit attribution per neuron"
            layers = [str(l) for l in range(self.n_layers)]
            return heatmap(grid, y_labels=layers, title=title, x_title="neuron", y_title="layer", signed=True)
        if view != "components":
            raise ArgumentError(f"view must be 'components', 'heads' or 'neurons', got {view!r}")
        mean = self.mean()
        values, labels, neuron_sums = [], [], {}
        for i, (label, kind, layer) in enumerate(zip(self.labels, self.kinds, self.layers)):
            if kind == "neuron":
                if layer not in neuron_sums:
                    neuron_sums[layer] = len(values)
                    values.append(0.0)
                    labels.append(f"{layer}_neurons")
                values[neuron_sums[layer]] += float(mean[i])
            else:
                values.append(float(mean[i]))
                labels.append(label)
        return bar(values, labels, title=title or "Direct logit attribution", y_title="logit (difference)")


def _as_token_ids(model: HookedGPT, tokens: TokenChoice, batch: int) -> Int[Tensor, "batch 1"]:
    if isinstance(tokens, (int, str)):
        return torch.full((batch, 1), token_id(model, tokens), dtype=torch.long, device=model.device)
    ids = torch.as_tensor(tokens, device=model.device)
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ArgumentTypeError(f"answer/wrong token ids must be integers, got dtype {ids.dtype}")
    ids = ids.long().flatten()
    if ids.shape[0] not in (1, batch):
        raise ArgumentError(f"answer/wrong tokens must be one token or one per prompt ({batch}), got {ids.shape[0]}")
    if bool(((ids < 0) | (ids >= model.cfg.d_vocab)).any()):
        raise ArgumentError(f"answer/wrong token ids must lie in [0, d_vocab={model.cfg.d_vocab}), got {ids.tolist()}")
    return ids.expand(batch)[:, None]


def _wanted(per_head: bool, per_neuron: bool):
    suffixes = ["hook_embed", "hook_pos_embed", "hook_attn_out", "hook_mlp_out", "ln_final.hook_scale"]
    if per_head:
        suffixes.append("attn.hook_z")
    if per_neuron:
        suffixes.append("mlp.hook_post")
    return lambda name: name.endswith(tuple(suffixes))


def direct_logit_attribution(
    model: HookedGPT,
    input: TokensLike,
    answer: TokenChoice,
    wrong: Optional[TokenChoice] = None,
    positions: Union[int, Sequence[int]] = -1,
    per_head: bool = True,
    per_neuron: bool = False,
    cache: Optional[Any] = None,
) -> LogitAttribution:
    """Split the logit of `answer` (minus the logit of `wrong`) at `positions` into each
    component's direct contribution.

    Args:
        model: a HookedGPT.
        input: text or token ids `[batch, pos]`.
        answer: the token whose logit is explained: an id, a one-token string, or ids `[batch]`.
        wrong: optional token(s) to subtract (a logit difference, e.g. IO vs S in IOI).
        positions: the position(s) whose logits are explained (default the last).
        per_head: one component per head (plus each layer's b_O) instead of per attention layer.
        per_neuron: one component per MLP neuron (post activation times its row of W_out, plus
            each layer's b_out) instead of per MLP layer.
        cache: an `ActivationCache` of this input (read, never modified) holding embed, pos_embed,
            attn_out, mlp_out, ln_final.hook_scale (and z / post for per_head / per_neuron);
            otherwise the model is run once.

    Returns a `LogitAttribution`; `attributions.sum(0) + constant` equals `logits`.
    """
    tokens = as_tokens(model, input)
    batch, seq_len = tokens.shape
    pos = position_list(positions, seq_len)
    answer_ids = _as_token_ids(model, answer, batch)
    wrong_ids = None if wrong is None else _as_token_ids(model, wrong, batch)
    cfg = model.cfg

    with torch.no_grad():
        if cache is None:
            logits, cache = model.run_with_cache(tokens, names_filter=_wanted(per_head, per_neuron))
        else:
            logits = model(tokens)

        def attrs(stack: Tensor) -> Float[Tensor, "component batch pos"]:
            return cache.logit_attrs(stack, answer_ids, wrong_ids, pos_slice=pos)

        parts, labels, kinds, layers, indices = [], [], [], [], []

        def add(values: Tensor, new_labels: list[str], kind: str, layer: Optional[int], new_indices: list[Optional[int]]) -> None:
            parts.append(values)
            labels.extend(new_labels)
            kinds.extend([kind] * len(new_labels))
            layers.extend([layer] * len(new_labels))
            indices.extend(new_indices)

        embeds = cache.decompose_resid(layer=0, pos_slice=pos)  # [embed, pos_embed]
        add(attrs(embeds[:1]), ["embed"], "embed", None, [None])
        add(attrs(embeds[1:]), ["pos_embed"], "pos_embed", None, [None])
        heads = cache.stack_head_results(pos_slice=pos) if per_head else None  # [layer * n_heads, batch, pos, d_model]
        for layer in range(cfg.n_layers):
            block = model.blocks[layer]
            if per_head:
                head_stack = heads[layer * cfg.n_heads : (layer + 1) * cfg.n_heads]
                add(attrs(head_stack), [f"L{layer}H{h}" for h in range(cfg.n_heads)], "head", layer, list(range(cfg.n_heads)))
                add(attrs(_bias_stack(block.attn.b_O, batch, len(pos))), [f"{layer}_attn_bias"], "attn_bias", layer, [None])
            else:
                add(attrs(cache["attn_out", layer][:, pos][None]), [f"{layer}_attn_out"], "attn", layer, [None])
            if cfg.attn_only:
                continue
            if per_neuron:
                post = cache["post", layer][:, pos]  # [batch, pos, d_mlp]
                neuron_stack = einsum(post, block.mlp.W_out.detach(), "batch pos d_mlp, d_mlp d_model -> d_mlp batch pos d_model")
                add(attrs(neuron_stack), [f"L{layer}N{n}" for n in range(cfg.d_mlp)], "neuron", layer, list(range(cfg.d_mlp)))
                add(attrs(_bias_stack(block.mlp.b_out, batch, len(pos))), [f"{layer}_mlp_bias"], "mlp_bias", layer, [None])
            else:
                add(attrs(cache["mlp_out", layer][:, pos][None]), [f"{layer}_mlp_out"], "mlp", layer, [None])

        bias_logits = model.ln_final.b.detach() @ model.W_U.detach() + model.b_U.detach()  # [d_vocab]
        constant = _logit_of(model, bias_logits, answer_ids, wrong_ids, len(pos))
        actual = _logit_of(model, logits[:, pos], answer_ids, wrong_ids, len(pos))

    return LogitAttribution(
        attributions=torch.cat(parts),
        labels=labels,
        kinds=kinds,
        layers=layers,
        indices=indices,
        constant=constant,
        logits=actual,
        positions=pos,
        n_layers=cfg.n_layers,
    )


def _bias_stack(bias: Float[Tensor, "d_model"], batch: int, n_pos: int) -> Float[Tensor, "1 batch pos d_model"]:
    return bias.detach().expand(1, batch, n_pos, bias.shape[-1])


def _logit_of(
    model: HookedGPT, logits: Tensor, answer_ids: Int[Tensor, "batch 1"], wrong_ids: Optional[Int[Tensor, "batch 1"]], n_pos: int
) -> Float[Tensor, "batch pos"]:
    """logits[..., answer] (- logits[..., wrong]) as `[batch, pos]`; `logits` is `[batch, pos, d_vocab]`
    or one `[d_vocab]` vector shared by all."""
    batch = answer_ids.shape[0]
    logits = logits.expand(batch, n_pos, logits.shape[-1])
    value = logits.gather(-1, answer_ids[:, :, None].expand(batch, n_pos, 1))[..., 0]
    if wrong_ids is not None:
        value = value - logits.gather(-1, wrong_ids[:, :, None].expand(batch, n_pos, 1))[..., 0]
    return value
