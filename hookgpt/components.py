"""The pieces of GPT-2, one short class each.

Each component owns its weights (in the layout of DESIGN.md: heads are a separate axis) and
passes every interesting intermediate through a named `HookPoint`. Read top to bottom, this file
is the whole architecture:

    LayerNorm -> Embed, PosEmbed -> Attention, MLP -> TransformerBlock -> Unembed

Fast paths keep the hooks free when nobody listens (or only observe-only hooks such as caches
do), and each is the same maths as the explicit code next to it (tests check both give the same
outputs). Each choice is one test, `only_observed(...)` or `Attention.pattern_observed`:
- `LayerNorm` uses `F.layer_norm` unless a hook that may edit `hook_scale`/`hook_normalized`
  is attached;
- `Attention` uses `F.scaled_dot_product_attention` unless `hook_attn_scores`/`hook_pattern`
  have hooks (q, k, v and z are computed either way, so their hooks never force the slow path);
- `hook_result` (each head's output) is computed in the main path only when a hook may edit it;
  observe-only hooks receive it on the side (caches lazily, computed when read).
"""

import functools
import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from einops import einsum, rearrange, repeat
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from hookgpt.config import GPTConfig
from hookgpt.hooks import HookPoint
from hookgpt.kv_cache import KVCacheEntry

# A mask of which key positions each query may attend to; `None` means plain causal masking.
AttentionMask = Optional[Bool[Tensor, "batch 1 query_pos key_pos"]]


def only_observed(*hook_points: HookPoint) -> bool:
    """The fast-path test: True when no hook attached to any of `hook_points` can change its
    activation (none attached, or only observe-only ones such as caches; see `hookgpt.hooks`).
    A component may then compute those activations off its main path, in a fused kernel."""
    return all(hp.only_observed for hp in hook_points)


class LayerNorm(nn.Module):
    """Centre, scale to unit variance, then apply a learned gain `w` and bias `b`.

    With `cfg.normalization_type=None` it is the identity, without weights: `hook_normalized`
    sees the residual unchanged and `hook_scale` (when observed) a scale of 1.
    """

    def __init__(self, cfg: GPTConfig, length: Optional[int] = None):
        super().__init__()
        self.cfg = cfg
        self.length = length or cfg.d_model
        if cfg.normalization_type == "LN":
            self.w = nn.Parameter(torch.ones(self.length, dtype=cfg.dtype))
            self.b = nn.Parameter(torch.zeros(self.length, dtype=cfg.dtype))
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, length], after w and b (as TransformerLens)

    def forward(self, residual: Float[Tensor, "batch pos *heads length"]) -> Float[Tensor, "batch pos *heads length"]:
        """`[batch, pos, length]`, or per-head inputs `[batch, pos, n_heads, length]` (each normalised alone)."""
        if self.cfg.normalization_type is None:  # an architecture without LayerNorm: the identity
            if self.hook_scale.has_hooks:
                self.hook_scale(residual.new_ones(*residual.shape[:-1], 1))
            return self.hook_normalized(residual)
        if only_observed(self.hook_scale, self.hook_normalized):
            return self.fused(residual)
        residual = residual - residual.mean(dim=-1, keepdim=True)
        scale = self.hook_scale((residual.pow(2).mean(dim=-1, keepdim=True) + self.cfg.layer_norm_eps).sqrt())
        return self.hook_normalized(residual / scale * self.w + self.b)

    def fused(self, residual: Float[Tensor, "batch pos *heads length"]) -> Float[Tensor, "batch pos *heads length"]:
        """The same maths in PyTorch's kernel, for when no hook can edit the scale; the scale is
        computed on the side only if someone observes it."""
        eps = self.cfg.layer_norm_eps
        if self.hook_scale.has_hooks:
            # the kernel returns 1 / scale on the side (computing the variance again with
            # Tensor.var costs ~15x the whole layer norm on a CPU)
            normalized, _, rstd = torch.native_layer_norm(residual, (self.length,), self.w, self.b, eps)
            self.hook_scale(rstd.reciprocal().to(residual.dtype))
            return self.hook_normalized(normalized)
        return self.hook_normalized(F.layer_norm(residual, (self.length,), self.w, self.b, eps))


class Embed(nn.Module):
    """Token embedding: row `t` of `W_E` is the vector for token id `t`."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model, dtype=cfg.dtype))

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        return self.W_E[tokens]


class PosEmbed(nn.Module):
    """Learned positional embedding: row `p` of `W_pos` is added at position `p`."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model, dtype=cfg.dtype))

    def forward(self, positions: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        return self.W_pos[positions]


class Attention(nn.Module):
    """Multi-head causal self-attention with per-head weight matrices."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        h, m, d = cfg.n_heads, cfg.d_model, cfg.d_head
        self.W_Q = nn.Parameter(torch.empty(h, m, d, dtype=cfg.dtype))
        self.W_K = nn.Parameter(torch.empty(h, m, d, dtype=cfg.dtype))
        self.W_V = nn.Parameter(torch.empty(h, m, d, dtype=cfg.dtype))
        self.W_O = nn.Parameter(torch.empty(h, d, m, dtype=cfg.dtype))
        self.b_Q = nn.Parameter(torch.zeros(h, d, dtype=cfg.dtype))
        self.b_K = nn.Parameter(torch.zeros(h, d, dtype=cfg.dtype))
        self.b_V = nn.Parameter(torch.zeros(h, d, dtype=cfg.dtype))
        self.b_O = nn.Parameter(torch.zeros(m, dtype=cfg.dtype))

        self.hook_q = HookPoint()  # [batch, pos, n_heads, d_head]
        self.hook_k = HookPoint()  # [batch, pos, n_heads, d_head]
        self.hook_v = HookPoint()  # [batch, pos, n_heads, d_head]
        self.hook_attn_scores = HookPoint()  # [batch, n_heads, query_pos, key_pos], masked, pre-softmax
        self.hook_pattern = HookPoint()  # [batch, n_heads, query_pos, key_pos]
        self.hook_z = HookPoint()  # [batch, pos, n_heads, d_head]
        self.hook_result = HookPoint()  # [batch, pos, n_heads, d_model], computed only when observed (lazily for caches)

    @property
    def pattern_observed(self) -> bool:
        return self.hook_attn_scores.has_hooks or self.hook_pattern.has_hooks

    @property
    def pattern_only_lazily_observed(self) -> bool:
        """Every hook on the scores and the pattern is a lazy observer (a cache)."""
        return all(hp.only_lazily_observed for hp in (self.hook_attn_scores, self.hook_pattern) if hp.has_hooks)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask) -> Float[Tensor, "batch query_pos n_heads d_head"]:
        """The fast-path choice: the written-out attention when a hook may edit the scores or the
        pattern; otherwise the fused kernel (caches on the pattern get it lazily)."""
        if self.pattern_observed and not self.pattern_only_lazily_observed:
            return self.explicit_attention(q, k, v, mask)
        if self.pattern_observed:
            self.record_pattern_lazily(q, k, mask)
        return self.fused_attention(q, k, v, mask)

    def record_pattern_lazily(self, q: Tensor, k: Tensor, mask: AttentionMask) -> None:
        """Hand the caches on `hook_attn_scores`/`hook_pattern` LazyActivations, computed from
        copies of q and k only if read (a cache's own q and k may be edited in place later).
        The pattern read is softmax(scores), bit for bit; the fused kernel's z equals
        pattern @ v to float precision, as in every forward without hooks."""
        if mask is None:
            mask = causal_mask(q.shape[1], k.shape[1], q.device)
        q, k = q.detach().clone(), k.detach().clone()
        if self.hook_attn_scores.has_hooks:
            self.hook_attn_scores.record_lazily(self.attention_scores, q, k, mask)
        if self.hook_pattern.has_hooks:
            self.hook_pattern.record_lazily(self.attention_pattern, q, k, mask)

    def forward(
        self,
        query_input: Union[Float[Tensor, "batch pos d_model"], Float[Tensor, "batch pos n_heads d_model"]],
        mask: AttentionMask = None,
        kv_cache_entry: Optional[KVCacheEntry] = None,
        key_input: Optional[Float[Tensor, "batch pos n_heads d_model"]] = None,
        value_input: Optional[Float[Tensor, "batch pos n_heads d_model"]] = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        """`query_input` is the normalised residual stream `[batch, pos, d_model]` that every head
        reads, or (with `key_input` and `value_input`) each head's own normalised query input
        `[batch, pos, n_heads, d_model]` (see `TransformerBlock`'s per-head input hooks)."""
        if key_input is None:
            key_input = value_input = query_input
        q = self.hook_q(project_to_heads(query_input, self.W_Q) + self.b_Q)
        k = self.hook_k(project_to_heads(key_input, self.W_K) + self.b_K)
        v = self.hook_v(project_to_heads(value_input, self.W_V) + self.b_V)
        if kv_cache_entry is not None:
            k, v = kv_cache_entry.append(k, v)  # keys/values of all positions, past and new

        z = self.hook_z(self.attend(q, k, v, mask))

        if not only_observed(self.hook_result):
            result = self.hook_result(head_results(z, self.W_O))  # a hook may edit each head's output
            return result.sum(dim=-2) + self.b_O
        if self.hook_result.has_hooks:
            # Only observers listen: they get each head's output on the side, caches as a
            # LazyActivation computed if read (it is n_heads times the size of the residual stream;
            # most analyses never read it). W_O is copied: later weight edits don't change it.
            self.hook_result.record_lazily(head_results, z.detach().clone(), self.W_O.detach().clone())
        return einsum(z, self.W_O, "batch pos n_heads d_head, n_heads d_head d_model -> batch pos d_model") + self.b_O

    def explicit_attention(
        self,
        q: Float[Tensor, "batch query_pos n_heads d_head"],
        k: Float[Tensor, "batch key_pos n_heads d_head"],
        v: Float[Tensor, "batch key_pos n_heads d_head"],
        mask: AttentionMask,
    ) -> Float[Tensor, "batch query_pos n_heads d_head"]:
        """Attention written out: scores, mask, softmax, weighted sum of values."""
        if mask is None:
            mask = causal_mask(q.shape[1], k.shape[1], q.device)
        attn_scores = self.hook_attn_scores(self.attention_scores(q, k, mask))
        pattern = attn_scores.softmax(dim=-1)
        if not self.hook_attn_scores.only_observed:
            # a hook may have masked a whole row to -inf, which has no softmax (NaN): that query
            # attends to nothing, as in TransformerLens (the model's own masks never empty a row)
            pattern = torch.where(pattern.isnan(), 0.0, pattern)
        pattern = self.hook_pattern(pattern)
        return einsum(
            pattern, v, "batch n_heads query_pos key_pos, batch key_pos n_heads d_head -> batch query_pos n_heads d_head"
        )

    def attention_scores(
        self,
        q: Float[Tensor, "batch query_pos n_heads d_head"],
        k: Float[Tensor, "batch key_pos n_heads d_head"],
        mask: Bool[Tensor, "#batch 1 query_pos key_pos"],
    ) -> Float[Tensor, "batch n_heads query_pos key_pos"]:
        """Scaled dot products of queries and keys, -inf where `mask` is False."""
        q = q / math.sqrt(self.cfg.d_head)  # scaling q costs less than scaling the scores
        attn_scores = einsum(
            q, k, "batch query_pos n_heads d_head, batch key_pos n_heads d_head -> batch n_heads query_pos key_pos"
        )
        return attn_scores.masked_fill_(~mask, float("-inf"))  # fresh: edit in place

    def attention_pattern(
        self,
        q: Float[Tensor, "batch query_pos n_heads d_head"],
        k: Float[Tensor, "batch key_pos n_heads d_head"],
        mask: Bool[Tensor, "#batch 1 query_pos key_pos"],
    ) -> Float[Tensor, "batch n_heads query_pos key_pos"]:
        return self.attention_scores(q, k, mask).softmax(dim=-1)

    def fused_attention(
        self,
        q: Float[Tensor, "batch query_pos n_heads d_head"],
        k: Float[Tensor, "batch key_pos n_heads d_head"],
        v: Float[Tensor, "batch key_pos n_heads d_head"],
        mask: AttentionMask,
    ) -> Float[Tensor, "batch query_pos n_heads d_head"]:
        """The same attention as `explicit_attention`, in PyTorch's fused kernel."""
        q, k, v = (rearrange(t, "batch pos n_heads d_head -> batch n_heads pos d_head") for t in (q, k, v))
        query_len, key_len = q.shape[2], k.shape[2]
        if mask is None and query_len == key_len:
            z = F.scaled_dot_product_attention(q, k, v, is_causal=query_len > 1)
        else:
            # with cached keys (key_len > query_len) the causal mask is aligned to the last key;
            # SDPA's is_causal would align it to the first, so pass the mask explicitly
            mask = causal_mask(query_len, key_len, q.device) if mask is None else mask
            z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return rearrange(z, "batch n_heads pos d_head -> batch pos n_heads d_head")


def head_results(
    z: Float[Tensor, "batch pos n_heads d_head"], W_O: Float[Tensor, "n_heads d_head d_model"]
) -> Float[Tensor, "batch pos n_heads d_model"]:
    """Each head's output in the residual stream (`hook_result`); they sum to attn_out - b_O."""
    return einsum(z, W_O, "batch pos n_heads d_head, n_heads d_head d_model -> batch pos n_heads d_model")


def project_to_heads(
    x: Union[Float[Tensor, "batch pos d_model"], Float[Tensor, "batch pos n_heads d_model"]],
    W: Float[Tensor, "n_heads d_model d_head"],
) -> Float[Tensor, "batch pos n_heads d_head"]:
    """`einsum(x, W, "batch pos d_model, n_heads d_model d_head -> batch pos n_heads d_head")`, as one
    matmul per head. (torch.einsum would first copy W into a `[d_model, n_heads * d_head]` matrix on
    every call, which costs more than the product itself when decoding one token at a time.)
    With per-head inputs `x` `[batch, pos, n_heads, d_model]`, head h reads its own `x[:, :, h]`."""
    if x.ndim == 4:
        return einsum(x, W, "batch pos n_heads d_model, n_heads d_model d_head -> batch pos n_heads d_head")
    per_head = x.reshape(1, -1, x.shape[-1]) @ W  # [n_heads, batch * pos, d_head]
    return rearrange(per_head, "n_heads (batch pos) d_head -> batch pos n_heads d_head", batch=x.shape[0])


def causal_mask(query_len: int, key_len: int, device: torch.device) -> Bool[Tensor, "1 1 query_pos key_pos"]:
    """True where query `i` may attend to key `j`: the last `query_len` of `key_len` positions
    each see themselves and everything before."""
    offset = key_len - query_len
    return torch.ones(query_len, key_len, dtype=torch.bool, device=device).tril(diagonal=offset)[None, None]


ACTIVATIONS = {
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2's tanh approximation of GELU
    "gelu": F.gelu,
    "relu": F.relu,
}


class MLP(nn.Module):
    """Two linear maps with a nonlinearity between: d_model -> d_mlp -> d_model."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.W_in = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp, dtype=cfg.dtype))
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp, dtype=cfg.dtype))
        self.W_out = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model, dtype=cfg.dtype))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model, dtype=cfg.dtype))
        self.act_fn = ACTIVATIONS[cfg.act_fn]
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]

    def forward(self, normalized_resid_mid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        pre = self.hook_pre(einsum(normalized_resid_mid, self.W_in, "batch pos d_model, d_model d_mlp -> batch pos d_mlp") + self.b_in)
        post = self.hook_post(self.act_fn(pre))
        return einsum(post, self.W_out, "batch pos d_mlp, d_mlp d_model -> batch pos d_model") + self.b_out


class TransformerBlock(nn.Module):
    """resid_mid = resid_pre + attn(ln1(resid_pre)); resid_post = resid_mid + mlp(ln2(resid_mid)).

    An attention-only block has no ln2/MLP: resid_post = resid_pre + attn_out.

    Inputs have hooks of their own: `hook_attn_in` and `hook_mlp_in` (`[batch, pos, d_model]`),
    and per head `hook_q_input`, `hook_k_input`, `hook_v_input` (`[batch, pos, n_heads, d_model]`:
    the residual stream that head's query, key or value reads, before ln1). The per-head inputs are
    built in the main path only when a hook that may edit one of them is attached (observers such
    as caches get them on the side, lazily); the block then applies ln1 to each head's input
    separately (the same maths: every copy is the same vector until a hook edits one), so editing
    one head's `hook_k_input` changes only that head's keys. This is what edge-level circuit
    analysis needs (`analyses.circuits`).
    """

    def __init__(self, cfg: GPTConfig, layer: int):
        super().__init__()
        self.cfg = cfg
        self.layer = layer
        self.ln1 = LayerNorm(cfg)
        self.attn = Attention(cfg)
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        self.hook_attn_in = HookPoint()  # [batch, pos, d_model]
        self.hook_q_input = HookPoint()  # [batch, pos, n_heads, d_model], built only when observed
        self.hook_k_input = HookPoint()  # [batch, pos, n_heads, d_model]
        self.hook_v_input = HookPoint()  # [batch, pos, n_heads, d_model]
        self.hook_attn_out = HookPoint()  # [batch, pos, d_model]
        if not cfg.attn_only:
            self.ln2 = LayerNorm(cfg)
            self.mlp = MLP(cfg)
            self.hook_resid_mid = HookPoint()  # [batch, pos, d_model]
            self.hook_mlp_in = HookPoint()  # [batch, pos, d_model]
            self.hook_mlp_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_post = HookPoint()  # [batch, pos, d_model]


    def forward(
        self,
        resid_pre: Float[Tensor, "batch pos d_model"],
        mask: AttentionMask = None,
        kv_cache_entry: Optional[KVCacheEntry] = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        resid_pre = self.hook_resid_pre(resid_pre)
        attn_in = self.hook_attn_in(resid_pre)
        per_head_hooks = (self.hook_q_input, self.hook_k_input, self.hook_v_input)
        if not only_observed(*per_head_hooks):  # a hook may edit one head's input: each head its own
            q_in, k_in, v_in = (self.ln1(hook(per_head(attn_in, self.cfg.n_heads))) for hook in per_head_hooks)
            attn_out = self.attn(q_in, mask, kv_cache_entry, key_input=k_in, value_input=v_in)
        else:
            for hook in per_head_hooks:  # only observers (caches): the same vector for every head,
                if hook.has_hooks:  # as a broadcast view (no copy: reading it costs no memory)
                    hook.record_lazily(functools.partial(per_head, n_heads=self.cfg.n_heads, copy=False), attn_in.detach())
            attn_out = self.attn(self.ln1(attn_in), mask, kv_cache_entry)
        attn_out = self.hook_attn_out(attn_out)
        if self.cfg.attn_only:
            return self.hook_resid_post(resid_pre + attn_out)
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(self.hook_mlp_in(resid_mid))))
        return self.hook_resid_post(resid_mid + mlp_out)


def per_head(x: Float[Tensor, "batch pos d_model"], n_heads: int, copy: bool = True) -> Float[Tensor, "batch pos n_heads d_model"]:
    """One copy of `x` per head (each head's query/key/value input, `hook_q_input` etc.); with
    `copy=False` a read-only broadcast view of `x` instead."""
    view = repeat(x, "batch pos d_model -> batch pos n_heads d_model", n_heads=n_heads)
    return view.clone() if copy else x[:, :, None, :].expand_as(view)


class Unembed(nn.Module):
    """Map the final residual stream to logits over the vocabulary.

    With tied embeddings (GPT-2's choice) `W_U` is `W_E` transposed and not a parameter of its
    own; `unembed.W_U` still reads as the `[d_model, d_vocab]` matrix. Untied, it predicts
    `cfg.d_vocab_out` ids (`d_vocab` unless the config says otherwise).
    """

    def __init__(self, cfg: GPTConfig, tied_embed: Optional[Embed] = None):
        super().__init__()
        if tied_embed is None:
            self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab_out, dtype=cfg.dtype))
        else:
            self._tied_embed = (tied_embed,)  # a tuple, so it is not registered as a child module
        self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab_out, dtype=cfg.dtype))

    @property
    def tied(self) -> bool:
        return "_tied_embed" in self.__dict__

    def __getattr__(self, name: str):
        if name == "W_U" and "_tied_embed" in self.__dict__:
            return self.__dict__["_tied_embed"][0].W_E.T
        return super().__getattr__(name)

    def untie(self) -> None:
        """Give `W_U` its own parameter, a copy of `W_E.T` (weight processing edits them separately)."""
        if self.tied:
            W_E = self.__dict__.pop("_tied_embed")[0].W_E
            self.W_U = nn.Parameter(W_E.detach().T.clone(memory_format=torch.contiguous_format), requires_grad=W_E.requires_grad)

    def forward(self, normalized_resid_final: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]:
        return einsum(normalized_resid_final, self.W_U, "batch pos d_model, d_model d_vocab -> batch pos d_vocab") + self.b_U
