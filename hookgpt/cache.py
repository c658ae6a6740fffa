"""ActivationCache: the activations of one forward pass, by hook name, plus residual-stream helpers.

Index by full name (`cache["blocks.3.attn.hook_pattern"]`), by shorthand (`cache["pattern", 3]`,
`cache["resid_post", -1]`, `cache["scale", 2, "ln2"]`, `cache["scale"]` for ln_final) or by
TransformerLens's compact names (`cache["k6"]`, `cache["scale4ln1"]`, `cache["pre2"]`). The
helpers split the residual stream into the pieces that wrote it:

- `accumulated_resid`: the residual stream as it stands before each layer;
- `decompose_resid`: embeddings + each attention/MLP output (they sum to the residual);
- `stack_head_results`: each head's output (from `hook_z` and `W_O`, or `hook_result` if cached);
- `stack_neuron_results`: each MLP neuron's output (`hook_post` times its row of `W_out`);
- `get_full_resid_decomposition`: heads + neurons (or MLPs) + embeddings + biases, all of it;
- `apply_ln_to_stack`: apply a LayerNorm's cached centring and scale to each piece, which makes
  the LayerNorm linear so the pieces' contributions add up exactly (or, with `recompute_ln`,
  normalise each piece on its own: the logit-lens view);
- `logit_attrs`: each piece's contribution to a token's logit (or a logit difference).

Positions are chosen with `pos_slice`, by TransformerLens's rules (`hookgpt.slicing.Slice`): an int
drops the position dimension (`pos_slice=-1` gives `[component, batch, d_model]`), a tuple is a
range (`(1, 4)`: positions 1..3), a list or tensor picks indices, None keeps everything.

The helpers return new tensors and leave the cache as it is. Three methods change the cache, as
their TransformerLens namesakes do: `remove_batch_dim()`, `to(device)` and `compute_head_results()`.
"""

import re
from typing import Any, Iterator, Optional, Union

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from hookgpt.hooks import LazyActivation, resolve
from hookgpt.slicing import Slice, SliceInput

PosSlice = Union[Slice, SliceInput]

# Short names -> where they live. "{L}" is the layer.
_BLOCK_HOOKS = {"resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "attn_in", "mlp_in", "q_input", "k_input", "v_input"}
_ATTN_HOOKS = {"q", "k", "v", "attn_scores", "pattern", "z", "result"}
_MLP_HOOKS = {"pre", "post"}
_LN_HOOKS = {"scale", "normalized"}
# TransformerLens's other spellings of the same activations
_NAME_ALIASES = {
    "attn": "pattern", "attn_logits": "attn_scores", "key": "k", "query": "q", "value": "v",
    "mlp_pre": "pre", "mlp_post": "post", "rot_q": "q", "rot_k": "k",
}
_LAYER_TYPE_ALIASES = {"a": "attn", "attention": "attn", "m": "mlp", "b": None, "block": None, "blocks": None, "": None}
_COMPACT = re.compile(r"([a-z]+)(\d+)([a-z]?.*)")  # "k6a", "scale4ln1", "pre2"


def get_act_name(name: str, layer: Optional[int] = None, layer_type: Optional[str] = None) -> str:
    """Expand a shorthand (`"pattern", 3`) into a full hook name (`blocks.3.attn.hook_pattern`).

    Full names pass through unchanged. Accepted short names: embed, pos_embed, resid_pre/mid/post,
    attn_out, mlp_out, attn_in/mlp_in, q/k/v_input, q/k/v/attn_scores/pattern/z/result (also
    `attn` for pattern), pre/post (also `mlp_pre`/`mlp_post`), scale/normalized with layer_type
    ln1/ln2 (ln_final when no layer); and TransformerLens's compact forms: `"k6"`, `"k6a"`,
    `"scale4ln1"`, `"pre5"` (name, layer, layer type in one string).
    """
    if ("." in name or name.startswith("hook_")) and layer is None and layer_type is None:
        return name
    compact = _COMPACT.fullmatch(name)
    if compact is not None and layer is None:
        name, layer_str, rest = compact.groups()
        layer, layer_type = int(layer_str), (rest or None)
    name = _NAME_ALIASES.get(name, name)
    if name in ("embed", "pos_embed", "tokens"):
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


def accumulated_bias(model: Any, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True) -> Float[Tensor, "d_model"]:
    """The sum of the output biases (attention `b_O`, MLP `b_out`) of the layers before `layer`:
    the part of the residual stream that no head or neuron wrote. With `mlp_input`, layer
    `layer`'s own `b_O` too (its MLP reads the residual after its attention)."""
    bias = torch.zeros(model.cfg.d_model, device=model.W_E.device, dtype=model.W_E.dtype)
    for l in range(layer):
        block = model.blocks[l]
        bias = bias + block.attn.b_O
        if include_mlp_biases and not model.cfg.attn_only:
            bias = bias + block.mlp.b_out
    if mlp_input:
        if layer >= model.cfg.n_layers:
            raise ValueError(f"mlp_input=True needs a layer below n_layers={model.cfg.n_layers}, got {layer}")
        bias = bias + model.blocks[layer].attn.b_O
    return bias


def _slice(pos_slice: PosSlice) -> Slice:
    return pos_slice if isinstance(pos_slice, Slice) else Slice(pos_slice)


class ActivationCache:
    """A mapping from hook names to cached activations of one forward pass.

    Some activations arrive lazily (`hook_result`, as a `LazyActivation` that keeps `hook_z`
    and a copy of `W_O`): they are computed on first access, so a cache that never reads them
    never pays for them.
    """

    def __init__(self, cache_dict: dict[str, Union[Tensor, LazyActivation]], model: Any, has_batch_dim: bool = True):
        self.cache_dict = cache_dict
        self.model = model
        self.has_batch_dim = has_batch_dim

    # ------------------------------------------------------------------ mapping

    @property
    def has_embed(self) -> bool:
        return "hook_embed" in self.cache_dict

    @property
    def has_pos_embed(self) -> bool:
        return "hook_pos_embed" in self.cache_dict

    def _key(self, key: Union[str, tuple]) -> str:
        if isinstance(key, str) and key in self.cache_dict:
            return key
        if isinstance(key, tuple):
            name, layer, *rest = key if len(key) > 1 else (key[0], None)
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
        return (self[name] for name in list(self.cache_dict))

    def items(self) -> Iterator[tuple[str, Tensor]]:
        return ((name, self[name]) for name in list(self.cache_dict))

    def __repr__(self) -> str:
        return f"ActivationCache with {len(self)} activations: {list(self.cache_dict)[:6]}{'...' if len(self) > 6 else ''}"

    # ------------------------------------------------------------------ changing the cache (as TransformerLens)

    def to(self, device: Union[str, torch.device]) -> "ActivationCache":
        """Move every activation to `device`, in place; returns the cache (lazy entries stay lazy)."""
        self.cache_dict = {k: v.to(device) for k, v in self.cache_dict.items()}
        return self

    def remove_batch_dim(self) -> "ActivationCache":
        """Drop the batch dimension of every activation, in place (only for a batch of one); returns
        the cache. A second call changes nothing."""
        if not self.has_batch_dim:
            return self
        sizes = {v.shape[0] for v in self.cache_dict.values() if isinstance(v, Tensor)}
        if sizes - {1}:
            raise ValueError(f"remove_batch_dim needs a batch of 1, this cache has batch sizes {sorted(sizes)}")
        self.cache_dict = {
            k: v.then(lambda t: t[0]) if isinstance(v, LazyActivation) else v[0] for k, v in self.cache_dict.items()
        }
        self.has_batch_dim = False
        return self

    def apply_slice_to_batch_dim(self, batch_slice: PosSlice) -> "ActivationCache":
        """A new cache holding only some batch rows (an int drops the batch dimension)."""
        batch_slice = _slice(batch_slice)
        if not self.has_batch_dim and batch_slice.mode != "identity":
            raise ValueError("apply_slice_to_batch_dim: this cache has no batch dimension (remove_batch_dim was applied)")
        sliced = {k: batch_slice.apply(self[k], dim=0) for k in list(self.cache_dict)}
        return type(self)(sliced, self.model, has_batch_dim=self.has_batch_dim and not batch_slice.drops_dim)

    def toggle_autodiff(self, mode: bool = False) -> None:
        """`torch.set_grad_enabled(mode)`: global autograd state, as TransformerLens's method."""
        torch.set_grad_enabled(mode)

    def compute_head_results(self) -> None:
        """Store each head's output (`blocks.{L}.attn.hook_result`, `[*batch, pos, n_heads, d_model]`)
        in the cache, for the layers where it is not there yet."""
        for layer in range(self.model.cfg.n_layers):
            name = f"blocks.{layer}.attn.hook_result"
            if name in self.cache_dict:
                self[name]  # a lazy one becomes a tensor
                continue
            self.cache_dict[name] = self._head_results(layer)

    def _head_results(self, layer: int) -> Tensor:
        if ("result", layer) in self:
            return self["result", layer]
        z = self["z", layer]  # [*batch, pos, n_heads, d_head]
        W_O = self.model.blocks[layer].attn.W_O
        return torch.einsum("...hd,hdm->...hm", z, W_O.to(z))

    # ------------------------------------------------------------------ residual stream

    @property
    def _n_layers(self) -> int:
        return self.model.cfg.n_layers

    def _layer(self, layer: Optional[int]) -> int:
        """None and -1 mean n_layers (the input to the unembedding); other negatives count back."""
        if layer is None:
            return self._n_layers
        layer = layer + self._n_layers + 1 if layer < 0 else layer
        if not 0 <= layer <= self._n_layers:
            raise ValueError(f"layer must be in [0, n_layers={self._n_layers}] (or None/-1 for n_layers), got {layer}")
        return layer

    def _empty_stack(self, pos_slice: Slice) -> Tensor:
        like = self["embed"] if self.has_embed else self["resid_pre", 0]
        return like.new_zeros((0, *pos_slice.apply(like, dim=-2).shape))

    def accumulated_resid(
        self,
        layer: Optional[int] = None,
        incl_mid: bool = False,
        apply_ln: bool = False,
        pos_slice: PosSlice = None,
        mlp_input: bool = False,
        return_labels: bool = False,
        recompute_ln: Optional[bool] = None,
    ) -> Union[Float[Tensor, "component *batch_and_pos d_model"], tuple[Tensor, list[str]]]:
        """The residual stream before each layer up to `layer` (None or -1: all of them plus the
        final output "final_post"; `mlp_input` adds that layer's resid_mid).

        Labels: "0_pre", "0_mid", ..., "final_post". With `apply_ln`, the stack goes through
        `apply_ln_to_stack` for `layer`; at the final layer `recompute_ln` defaults to True, as in
        TransformerLens 2.18: each component is normalised by its own statistics (the logit lens).
        Pass `recompute_ln=False` for the cached scale of this run instead (linear, so the
        components keep adding up).
        """
        layer = self._layer(layer)
        pos_slice = _slice(pos_slice)
        parts, labels = [], []
        for l in range(layer + 1):
            if l == self._n_layers:
                parts.append(self["resid_post", l - 1])
                labels.append("final_post")
                break
            parts.append(self["resid_pre", l])
            labels.append(f"{l}_pre")
            if ((incl_mid and l < layer) or (mlp_input and l == layer)) and ("resid_mid", l) in self:
                parts.append(self["resid_mid", l])
                labels.append(f"{l}_mid")
        stack = torch.stack([pos_slice.apply(p, dim=-2) for p in parts])
        if apply_ln:
            if recompute_ln is None:
                recompute_ln = layer == self._n_layers
            stack = self.apply_ln_to_stack(stack, layer, mlp_input=mlp_input, pos_slice=pos_slice, recompute_ln=recompute_ln)
        return (stack, labels) if return_labels else stack

    def decompose_resid(
        self,
        layer: Optional[int] = None,
        mlp_input: bool = False,
        mode: str = "all",
        apply_ln: bool = False,
        pos_slice: PosSlice = None,
        incl_embeds: bool = True,
        return_labels: bool = False,
    ) -> Union[Float[Tensor, "component *batch_and_pos d_model"], tuple[Tensor, list[str]]]:
        """The pieces that sum to the residual stream before `layer` (None/-1: the final output):
        embed, pos_embed, then each layer's attn_out and mlp_out (`mode` "attn"/"mlp" keeps one
        kind; `mlp_input` adds layer `layer`'s attn_out, for the input of its MLP)."""
        if mode not in ("all", "attn", "mlp"):
            raise ValueError(f"mode must be 'all', 'attn' or 'mlp', got {mode!r}")
        layer = self._layer(layer)
        pos_slice = _slice(pos_slice)
        incl_attn, incl_mlp = mode != "mlp", mode != "attn" and not self.model.cfg.attn_only
        parts, labels = [], []
        if incl_embeds:
            for name in ("embed", "pos_embed"):
                if f"hook_{name}" in self.cache_dict:
                    parts.append(self[name])
                    labels.append(name)
        for l in range(layer):
            if incl_attn:
                parts.append(self["attn_out", l])
                labels.append(f"{l}_attn_out")
            if incl_mlp:
                parts.append(self["mlp_out", l])
                labels.append(f"{l}_mlp_out")
        if mlp_input and incl_attn:
            parts.append(self["attn_out", layer])
            labels.append(f"{layer}_attn_out")
        stack = torch.stack([pos_slice.apply(p, dim=-2) for p in parts]) if parts else self._empty_stack(pos_slice)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input=mlp_input, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def stack_head_results(
        self,
        layer: Optional[int] = -1,
        return_labels: bool = False,
        incl_remainder: bool = False,
        pos_slice: PosSlice = None,
        apply_ln: bool = False,
    ) -> Union[Float[Tensor, "component *batch_and_pos d_model"], tuple[Tensor, list[str]]]:
        """Each head's output in the residual stream, for layers below `layer` (None/-1: all).

        Labels "L{layer}H{head}". Computed from the cached `hook_z` and the model's `W_O`
        (or taken from `hook_result` when that was cached). `incl_remainder` adds one more
        component: the residual before `layer` minus all heads (embeddings, MLPs, biases).
        """
        layer = self._layer(layer)
        pos_slice = _slice(pos_slice)
        parts, labels = [], []
        for l in range(layer):
            result = pos_slice.apply(self._head_results(l), dim=-3)  # [*batch, (pos,) n_heads, d_model]
            parts.append(result.movedim(-2, 0))  # [n_heads, *batch, (pos,) d_model]
            labels += [f"L{l}H{h}" for h in range(result.shape[-2])]
        stack = torch.cat(parts) if parts else self._empty_stack(pos_slice)
        return self._finish_stack(stack, labels, layer, pos_slice, incl_remainder, apply_ln, return_labels)

    def _finish_stack(
        self, stack: Tensor, labels: list[str], layer: int, pos_slice: Slice, incl_remainder: bool, apply_ln: bool, return_labels: bool
    ) -> Any:
        """A stack of components of the residual stream before `layer`: with `incl_remainder`, the
        rest of that residual stream as one more component; with `apply_ln`, each normalised."""
        if incl_remainder:
            remainder = pos_slice.apply(self._resid_before(layer), dim=-2) - stack.sum(0)
            stack = torch.cat([stack, remainder[None]])
            labels.append("remainder")
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def _resid_before(self, layer: int) -> Tensor:
        return self["resid_post", layer - 1] if layer == self._n_layers else self["resid_pre", layer]

    def stack_activation(self, activation_name: str, layer: Optional[int] = -1, sublayer_type: Optional[str] = None) -> Tensor:
        """One activation of every layer below `layer` (None/-1: all), stacked: `[layer, ...]`."""
        layer = self._layer(layer)
        return torch.stack([self[activation_name, l, sublayer_type] for l in range(layer)])

    def get_neuron_results(
        self, layer: int, neuron_slice: PosSlice = None, pos_slice: PosSlice = None
    ) -> Float[Tensor, "*batch_pos_and_neuron d_model"]:
        """Each MLP neuron's output in the residual stream: `hook_post` times its row of `W_out`,
        `[*batch, pos, neuron, d_model]` (not cached: cheap to compute, large to keep). An int
        `neuron_slice` (or `pos_slice`) drops that dimension."""
        neuron_slice, pos_slice = _slice(neuron_slice), _slice(pos_slice)
        post = pos_slice.apply(self["post", layer], dim=-2)  # positions first: the neuron dim stays last
        W_out = self.model.blocks[layer].mlp.W_out
        post, W_out = neuron_slice.apply(post, dim=-1), neuron_slice.apply(W_out, dim=0)
        return post[..., None] * W_out.to(post)

    def stack_neuron_results(
        self,
        layer: Optional[int],
        pos_slice: PosSlice = None,
        neuron_slice: PosSlice = None,
        return_labels: bool = False,
        incl_remainder: bool = False,
        apply_ln: bool = False,
    ) -> Union[Float[Tensor, "component *batch_and_pos d_model"], tuple[Tensor, list[str]]]:
        """Each MLP neuron's output, for layers below `layer` (labels "L{layer}N{neuron}");
        `incl_remainder` adds the residual minus all of them. Memory: d_mlp components per layer."""
        layer = self._layer(layer)
        pos_slice, neuron_slice = _slice(pos_slice), _slice(neuron_slice)
        if neuron_slice.drops_dim:  # one neuron: still one component per layer
            neuron_slice = Slice([neuron_slice.slice])
        neurons = neuron_slice.indices(self.model.cfg.d_mlp).tolist()
        parts, labels = [], []
        for l in range(layer):
            parts.append(self.get_neuron_results(l, neuron_slice, pos_slice).movedim(-2, 0))
            labels += [f"L{l}N{n}" for n in neurons]
        stack = torch.cat(parts) if parts else self._empty_stack(pos_slice)
        return self._finish_stack(stack, labels, layer, pos_slice, incl_remainder, apply_ln, return_labels)

    def get_full_resid_decomposition(
        self,
        layer: Optional[int] = None,
        mlp_input: bool = False,
        expand_neurons: bool = True,
        apply_ln: bool = False,
        pos_slice: PosSlice = None,
        return_labels: bool = False,
    ) -> Union[Float[Tensor, "component *batch_and_pos d_model"], tuple[Tensor, list[str]]]:
        """Everything that wrote the residual stream before `layer` (None/-1: the final one): each
        head, each neuron (or each MLP, `expand_neurons=False`), embed, pos_embed, and the summed
        biases ("bias"). The components sum to the residual stream exactly."""
        layer = self._layer(layer)
        pos_slice = _slice(pos_slice)
        heads, labels = self.stack_head_results(layer + int(mlp_input), pos_slice=pos_slice, return_labels=True)
        parts = [heads]
        if not self.model.cfg.attn_only and layer > 0:
            if expand_neurons:
                neurons, neuron_labels = self.stack_neuron_results(layer, pos_slice=pos_slice, return_labels=True)
            else:
                neurons, neuron_labels = self.decompose_resid(layer, pos_slice=pos_slice, incl_embeds=False, mode="mlp", return_labels=True)
            parts.append(neurons)
            labels += neuron_labels
        for name in ("embed", "pos_embed"):
            if f"hook_{name}" in self.cache_dict:
                parts.append(pos_slice.apply(self[name], dim=-2)[None])
                labels.append(name)
        bias = accumulated_bias(self.model, layer, mlp_input, include_mlp_biases=expand_neurons)
        parts.append(bias.to(heads).expand((1, *heads.shape[1:])))
        labels.append("bias")
        stack = torch.cat(parts)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input=mlp_input, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def apply_ln_to_stack(
        self,
        residual_stack: Float[Tensor, "component *batch_and_pos_in d_model"],
        layer: Optional[int] = None,
        mlp_input: bool = False,
        pos_slice: PosSlice = None,
        batch_slice: PosSlice = None,
        has_batch_dim: bool = True,
        recompute_ln: bool = False,
    ) -> Float[Tensor, "component *batch_and_pos_out d_model"]:
        """Treat each component as the input of a LayerNorm and normalise it.

        Default: centre each component and divide by the scale cached in this run. With the scale
        frozen at its value in this run, LayerNorm is linear, so the normalised components sum to
        the normalised residual (before the gain `w` and bias `b`).
        `layer=None`/-1/n_layers uses ln_final; otherwise ln1 of that layer (ln2 with `mlp_input`).
        `pos_slice` (and `batch_slice`) say which positions (rows) of the run the stack holds; the
        stack is assumed already sliced by position, `batch_slice` is applied to it here.
        `recompute_ln=True` (final layer only): apply ln_final to each component with statistics of
        its own, gain and bias included (TransformerLens's logit lens).
        """
        layer = self._layer(layer)
        pos_slice, batch_slice = _slice(pos_slice), _slice(batch_slice)
        if has_batch_dim:
            residual_stack = batch_slice.apply(residual_stack, dim=1)
        if recompute_ln and layer == self._n_layers:
            ln = self.model.ln_final
            return F.layer_norm(residual_stack, (residual_stack.shape[-1],), ln.w.to(residual_stack), ln.b.to(residual_stack), ln.cfg.layer_norm_eps)
        if layer == self._n_layers:
            if mlp_input:
                raise ValueError("mlp_input=True needs a layer below n_layers: the final layer has no MLP")
            scale = self["scale"]
        else:
            scale = self["scale", layer, "ln2" if mlp_input else "ln1"]
        scale = pos_slice.apply(scale, dim=-2)
        if self.has_batch_dim:
            scale = batch_slice.apply(scale, dim=0)
        centered = residual_stack - residual_stack.mean(dim=-1, keepdim=True)
        return centered / scale

    def logit_attrs(
        self,
        residual_stack: Float[Tensor, "component *batch_and_pos d_model"],
        tokens: Union[int, str, Tensor],
        incorrect_tokens: Union[None, int, str, Tensor] = None,
        pos_slice: PosSlice = None,
        batch_slice: PosSlice = None,
        has_batch_dim: bool = True,
    ) -> Tensor:
        """Each component's direct contribution to the logit of `tokens` (minus `incorrect_tokens`).

        Components are passed through the final LayerNorm with the scale of this run, then
        projected on `ln_final.w * W_U[:, token]`. Summed over a complete decomposition of the
        residual they give the logit (difference) minus the constant `ln_final.b @ W_U + b_U` term:
        exact, not an approximation, because the scale is this run's actual scale.
        `tokens` is one id/string or a tensor broadcastable to the components' `[*batch, pos]`;
        `incorrect_tokens` must have the same shape. `pos_slice`/`batch_slice`/`has_batch_dim` as
        in `apply_ln_to_stack`.
        """
        if incorrect_tokens is not None and self._token_shape(tokens) != self._token_shape(incorrect_tokens):
            raise ValueError(
                f"tokens and incorrect_tokens must have the same shape, got {tuple(self._token_shape(tokens))} "
                f"and {tuple(self._token_shape(incorrect_tokens))}"
            )
        direction = self._logit_direction(tokens)
        if incorrect_tokens is not None:
            direction = direction - self._logit_direction(incorrect_tokens)
        scaled = self.apply_ln_to_stack(residual_stack, None, pos_slice=pos_slice, batch_slice=batch_slice, has_batch_dim=has_batch_dim)
        return (scaled * direction.to(scaled)).sum(dim=-1)

    @staticmethod
    def _token_shape(tokens: Union[int, str, Tensor]) -> torch.Size:
        return tokens.shape if isinstance(tokens, Tensor) else torch.Size([])

    def _logit_direction(self, tokens: Union[int, str, Tensor]) -> Tensor:
        model = self.model
        directions = model.tokens_to_residual_directions(tokens)
        return directions * model.ln_final.w
