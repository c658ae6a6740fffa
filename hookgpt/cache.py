"""ActivationCache: the activations of one forward pass, by hook name, plus residual-stream helpers.

Index by full name (`cache["blocks.3.attn.hook_pattern"]`) or by shorthand
(`cache["pattern", 3]`, `cache["resid_post", -1]`, `cache["scale", 2, "ln2"]`, `cache["scale"]`
for ln_final). The helpers split the residual stream into the pieces that wrote it:

- `accumulated_resid`: the residual stream as it stands before each layer;
- `decompose_resid`: embeddings + each attention/MLP output (they sum to the residual);
- `stack_head_results`: each head's output (from `hook_z` and `W_O`, or `hook_result` if cached);
- `apply_ln_to_stack`: apply a LayerNorm's cached centring and scale to each piece, which makes
  the final LayerNorm linear so the pieces' contributions to the logits add up exactly;
- `logit_attrs`: each piece's contribution to a token's logit (or a logit difference).

A cache never changes under your feet: helpers return new tensors.
"""

from typing import Any, Iterator, Optional, Union

import torch
from jaxtyping import Float
from torch import Tensor

from hookgpt.hooks import LazyActivation, resolve

# Short names -> where they live. "{L}" is the layer.
_BLOCK_HOOKS = {"resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"}
_ATTN_HOOKS = {"q", "k", "v", "attn_scores", "pattern", "z", "result"}
_MLP_HOOKS = {"pre", "post"}
_LN_HOOKS = {"scale", "normalized"}


def get_act_name(name: str, layer: Optional[int] = None, layer_type: Optional[str] = None) -> str:
    """Expand a shorthand (`"pattern", 3`) into a full hook name (`blocks.3.attn.hook_pattern`).

    Full names pass through unchanged. Accepted short names: embed, pos_embed, resid_pre/mid/post,
    attn_out, mlp_out, q/k/v/attn_scores/pattern/z/result (also `attn` for pattern), pre/post
    (also `mlp_pre`/`mlp_post`), scale/normalized with layer_type ln1/ln2 (ln_final when no layer).
    """
    if "." in name or name.startswith("hook_"):
        return name
    aliases = {"attn": "pattern", "mlp_pre": "pre", "mlp_post": "post", "rot_q": "q", "rot_k": "k"}
    name = aliases.get(name, name)
    if name in ("embed", "pos_embed"):
        return f"hook_{name}"
    if name in _LN_HOOKS:
        if layer is None:
            return f"ln_final.hook_{name}"
        return f"blocks.{layer}.{layer_type or 'ln1'}.hook_{name}"
    if layer is None:
        raise KeyError(f"{name!r} needs a layer: use cache[{name!r}, layer]")
    if name in _BLOCK_HOOKS:
        return f"blocks.{layer}.hook_{name}"
    if name in _ATTN_HOOKS:
        return f"blocks.{layer}.attn.hook_{name}"
    if name in _MLP_HOOKS:
        return f"blocks.{layer}.mlp.hook_{name}"
    raise KeyError(
        f"unknown activation name {name!r}; short names are "
        f"{sorted(_BLOCK_HOOKS | _ATTN_HOOKS | _MLP_HOOKS | _LN_HOOKS | {'embed', 'pos_embed'})}"
    )


class ActivationCache:
    """A read-only mapping from hook names to cached activations of one forward pass.

    Some activations arrive lazily (`hook_result`, as a `LazyActivation` that keeps `hook_z`
    and a copy of `W_O`): they are computed on first access, so a cache that never reads them
    never pays for them.
    """

    def __init__(self, cache_dict: dict[str, Union[Tensor, LazyActivation]], model: Any, has_batch_dim: bool = True):
        self.cache_dict = cache_dict
        self.model = model
        self.has_batch_dim = has_batch_dim

    # ------------------------------------------------------------------ mapping

    def _key(self, key: Union[str, tuple]) -> str:
        if isinstance(key, tuple):
            name, layer, *rest = key
            if layer is not None and layer < 0:
                layer += self.model.cfg.n_layers
            return get_act_name(name, layer, rest[0] if rest else None)
        return get_act_name(key)

    def __getitem__(self, key: Union[str, tuple]) -> Tensor:
        name = self._key(key)
        if name not in self.cache_dict:
            import difflib

            close = difflib.get_close_matches(name, self.cache_dict.keys(), n=5, cutoff=0.5)
            raise KeyError(
                f"{name!r} is not in this cache ({len(self.cache_dict)} activations); "
                f"close matches: {close}. Was it excluded by names_filter?"
            )
        act = self.cache_dict[name] = resolve(self.cache_dict[name])  # a lazy one is computed once, then kept
        return act

    def __contains__(self, key: Union[str, tuple]) -> bool:
        try:
            return self._key(key) in self.cache_dict
        except KeyError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self.cache_dict)

    def __len__(self) -> int:
        return len(self.cache_dict)

    def keys(self):
        return self.cache_dict.keys()

    def values(self) -> Iterator[Tensor]:
        return (self[name] for name in self.cache_dict)

    def items(self) -> Iterator[tuple[str, Tensor]]:
        return ((name, self[name]) for name in self.cache_dict)

    def __repr__(self) -> str:
        return f"ActivationCache with {len(self)} activations: {list(self.cache_dict)[:6]}{'...' if len(self) > 6 else ''}"

    def to(self, device: Union[str, torch.device]) -> "ActivationCache":
        """A copy of the cache with every activation on `device`."""
        moved = {k: v.to(device) for k, v in self.cache_dict.items()}  # lazy ones stay lazy, on `device`
        return ActivationCache(moved, self.model, self.has_batch_dim)

    def remove_batch_dim(self) -> "ActivationCache":
        """A copy without the batch dimension (only for a batch of one)."""
        if not self.has_batch_dim:
            return self
        sizes = {v.shape[0] for v in self.values()}
        if sizes != {1}:
            raise ValueError(f"remove_batch_dim needs a batch of 1, this cache has batch sizes {sorted(sizes)}")
        return ActivationCache({k: v[0] for k, v in self.items()}, self.model, has_batch_dim=False)

    # ------------------------------------------------------------------ residual stream

    @property
    def _n_layers(self) -> int:
        return self.model.cfg.n_layers

    def _layer(self, layer: Optional[int]) -> int:
        if layer is None:
            return self._n_layers
        return layer + self._n_layers + 1 if layer < 0 else layer

    @staticmethod
    def _pos(t: Tensor, pos_slice: Any) -> Tensor:
        """Select positions (an int, a list of ints, or a slice) of a tensor shaped [..., pos, last]."""
        if pos_slice is None:
            return t
        if isinstance(pos_slice, slice):
            return t[..., pos_slice, :]
        if isinstance(pos_slice, int):
            pos_slice = [pos_slice]
        index = torch.as_tensor(pos_slice, dtype=torch.long, device=t.device) % t.shape[-2]  # negative positions count from the end
        return t.index_select(t.ndim - 2, index)

    def accumulated_resid(
        self,
        layer: Optional[int] = None,
        incl_mid: bool = False,
        apply_ln: bool = False,
        pos_slice: Any = None,
        return_labels: bool = False,
    ) -> Union[Float[Tensor, "component *batch_and_pos d_model"], tuple[Tensor, list[str]]]:
        """The residual stream before each layer up to `layer` (None: all, plus the final output).

        Labels: "0_pre", "0_mid", ..., "final_post". With `apply_ln`, each is passed through the
        cached final LayerNorm scale (the logit lens view).
        """
        layer = self._layer(layer)
        parts, labels = [], []
        for l in range(layer + 1):
            if l == self._n_layers:
                parts.append(self["resid_post", l - 1])
                labels.append("final_post")
                break
            parts.append(self["resid_pre", l])
            labels.append(f"{l}_pre")
            if incl_mid and l < layer and ("resid_mid", l) in self:
                parts.append(self["resid_mid", l])
                labels.append(f"{l}_mid")
        stack = torch.stack([self._pos(p, pos_slice) for p in parts])
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer=None, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def decompose_resid(
        self,
        layer: Optional[int] = None,
        mode: str = "all",
        apply_ln: bool = False,
        pos_slice: Any = None,
        incl_embeds: bool = True,
        return_labels: bool = False,
    ) -> Union[Float[Tensor, "component *batch_and_pos d_model"], tuple[Tensor, list[str]]]:
        """The pieces that sum to the residual stream before `layer` (None: the final output):
        embed, pos_embed, then each layer's attn_out and mlp_out (`mode` "attn"/"mlp" keeps one kind)."""
        if mode not in ("all", "attn", "mlp"):
            raise ValueError(f"mode must be 'all', 'attn' or 'mlp', got {mode!r}")
        layer = self._layer(layer)
        parts, labels = [], []
        if incl_embeds:
            parts += [self["embed"], self["pos_embed"]]
            labels += ["embed", "pos_embed"]
        for l in range(layer):
            if mode in ("all", "attn"):
                parts.append(self["attn_out", l])
                labels.append(f"{l}_attn_out")
            if mode in ("all", "mlp") and not self.model.cfg.attn_only:
                parts.append(self["mlp_out", l])
                labels.append(f"{l}_mlp_out")
        stack = torch.stack([self._pos(p, pos_slice) for p in parts])
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer=None if layer == self._n_layers else layer, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def stack_head_results(
        self,
        layer: Optional[int] = None,
        return_labels: bool = False,
        incl_remainder: bool = False,
        pos_slice: Any = None,
        apply_ln: bool = False,
    ) -> Union[Float[Tensor, "component *batch_and_pos d_model"], tuple[Tensor, list[str]]]:
        """Each head's output in the residual stream, for layers below `layer` (None: all).

        Labels "L{layer}H{head}". Computed from the cached `hook_z` and the model's `W_O`
        (or taken from `hook_result` when that was cached). `incl_remainder` adds one more
        component: the residual minus all heads (embeddings, MLPs, biases).
        """
        layer = self._layer(layer)
        parts, labels = [], []
        for l in range(layer):
            if ("result", l) in self:
                result = self["result", l]  # [*batch, pos, n_heads, d_model]
            else:
                W_O = self.model.blocks[l].attn.W_O.detach()
                result = torch.einsum("...phd,hdm->...phm", self["z", l], W_O.to(self["z", l]))
            parts.append(result.movedim(-2, 0))  # [n_heads, *batch, pos, d_model]
            labels += [f"L{l}H{h}" for h in range(result.shape[-2])]
        stack = torch.cat(parts) if parts else torch.empty(0)
        stack = self._pos(stack, pos_slice)
        if incl_remainder:
            resid = self["resid_post", layer - 1] if layer == self._n_layers else self["resid_pre", layer]
            remainder = self._pos(resid, pos_slice) - stack.sum(0)
            stack = torch.cat([stack, remainder[None]])
            labels.append("remainder")
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer=None if layer == self._n_layers else layer, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def apply_ln_to_stack(
        self,
        residual_stack: Float[Tensor, "component *batch_and_pos d_model"],
        layer: Optional[int] = None,
        mlp_input: bool = False,
        pos_slice: Any = None,
    ) -> Float[Tensor, "component *batch_and_pos d_model"]:
        """Centre each component and divide by the LayerNorm scale cached in this run.

        With the scale frozen at its value in this run, LayerNorm is linear, so the normalised
        components sum to the normalised residual (before the gain `w` and bias `b`).
        `layer=None` uses ln_final; otherwise ln1 of that layer (ln2 with `mlp_input`).
        """
        if layer is None or layer == self._n_layers or layer == -1:
            scale = self["scale"]
        else:
            scale = self["scale", layer, "ln2" if mlp_input else "ln1"]
        scale = self._pos(scale, pos_slice)
        centered = residual_stack - residual_stack.mean(dim=-1, keepdim=True)
        return centered / scale

    def logit_attrs(
        self,
        residual_stack: Float[Tensor, "component *batch_and_pos d_model"],
        tokens: Union[int, str, Tensor],
        incorrect_tokens: Union[None, int, str, Tensor] = None,
        pos_slice: Any = None,
    ) -> Tensor:
        """Each component's direct contribution to the logit of `tokens` (minus `incorrect_tokens`).

        Components are passed through the final LayerNorm with the scale of this run, then
        projected on `ln_final.w * W_U[:, token]`. Summed over a complete decomposition of the
        residual they give the logit (difference) minus the constant `ln_final.b @ W_U + b_U` term:
        exact, not an approximation, because the scale is this run's actual scale.
        `tokens` is one id/string or a tensor broadcastable to the components' `[*batch, pos]`.
        """
        direction = self._logit_direction(tokens)
        if incorrect_tokens is not None:
            direction = direction - self._logit_direction(incorrect_tokens)
        scaled = self.apply_ln_to_stack(residual_stack, layer=None, pos_slice=pos_slice)
        return (scaled * direction.to(scaled)).sum(dim=-1)

    def _logit_direction(self, tokens: Union[int, str, Tensor]) -> Tensor:
        model = self.model
        directions = model.tokens_to_residual_directions(tokens).detach()
        return directions * model.ln_final.w.detach()
