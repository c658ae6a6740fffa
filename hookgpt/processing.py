"""Weight processing: simpler weights, the same function (TransformerLens's `process_weights`).

Three rewrites, each leaving the model's log-probabilities unchanged:

- `fold_layer_norms`: every LayerNorm's gain and bias move into the weights that read its
  output, so the LayerNorm itself only normalises (w = 1, b = 0).
- `center_writing_weights_`: everything written into the residual stream gets mean zero over
  d_model (every reader is a LayerNorm, which subtracts the mean anyway).
- `center_unembed_`: the unembedding gets mean zero over the vocabulary (softmax ignores a
  shift shared by all logits).

`process_weights` applies them in place, after untying tied embeddings (folding changes W_U but
must not change W_E). The model's config records what was done (`folded_ln`, ...), so a saved
model says what it is.
"""

import torch
from einops import einsum
from torch import nn

from hookgpt.model import HookedGPT


@torch.no_grad()
def fold_layer_norms(model: HookedGPT) -> None:
    """Fold each LayerNorm's gain `w` and bias `b` into the weights that read its output.

    LN(x) = x_hat * w + b feeds `x_hat @ W + b_in`, which equals `x_hat @ (w[:, None] * W) + (b @ W + b_in)`.
    After folding, w = 1 and b = 0. The reading weights are also centred over d_model: `x_hat`
    has mean zero over d_model, so adding a constant to every row of W changes nothing.
    """
    for block in model.blocks:
        attn = block.attn
        for W, b_param in ((attn.W_Q, attn.b_Q), (attn.W_K, attn.b_K), (attn.W_V, attn.b_V)):
            b_param.add_(einsum(W, block.ln1.b, "n_heads d_model d_head, d_model -> n_heads d_head"))
            W.mul_(block.ln1.w[None, :, None])
            W.sub_(W.mean(dim=1, keepdim=True))
        _reset_layer_norm(block.ln1)
        if not model.cfg.attn_only:
            mlp = block.mlp
            mlp.b_in.add_(einsum(mlp.W_in, block.ln2.b, "d_model d_mlp, d_model -> d_mlp"))
            mlp.W_in.mul_(block.ln2.w[:, None])
            mlp.W_in.sub_(mlp.W_in.mean(dim=0, keepdim=True))
            _reset_layer_norm(block.ln2)
    unembed, ln_final = model.unembed, model.ln_final
    unembed.b_U.add_(einsum(unembed.W_U, ln_final.b, "d_model d_vocab, d_model -> d_vocab"))
    unembed.W_U.mul_(ln_final.w[:, None])
    unembed.W_U.sub_(unembed.W_U.mean(dim=0, keepdim=True))
    _reset_layer_norm(ln_final)
    model.cfg = model.cfg.replace(folded_ln=True)  # this model only: its config object is its own


def _reset_layer_norm(ln: nn.Module) -> None:
    ln.w.fill_(1.0)
    ln.b.zero_()


@torch.no_grad()
def center_writing_weights_(model: HookedGPT) -> None:
    """Make every vector written into the residual stream have mean zero over d_model.

    Every reader of the residual stream is a LayerNorm, which subtracts the mean first, so the
    mean component never matters. Applies to W_E, W_pos, each W_O/b_O and W_out/b_out.
    """
    params = [model.embed.W_E, model.pos_embed.W_pos]
    for block in model.blocks:
        params += [block.attn.W_O, block.attn.b_O]
        if not model.cfg.attn_only:
            params += [block.mlp.W_out, block.mlp.b_out]
    for param in params:
        param.sub_(param.mean(dim=-1, keepdim=True))
    model.cfg = model.cfg.replace(centered_writing_weights=True)  # this model only: its config object is its own


@torch.no_grad()
def center_unembed_(model: HookedGPT) -> None:
    """Give W_U and b_U mean zero over the vocabulary: softmax ignores a shift shared by all
    logits, so log-probabilities are unchanged."""
    model.unembed.W_U.sub_(model.unembed.W_U.mean(dim=-1, keepdim=True))
    model.unembed.b_U.sub_(model.unembed.b_U.mean())
    model.cfg = model.cfg.replace(centered_unembed=True)  # this model only: its config object is its own


def untie_embeddings(model: HookedGPT) -> None:
    """Give the unembedding its own copy of W_E.T, so W_E and W_U can be edited separately."""
    if model.unembed.tied:
        model.unembed.untie()
    model.cfg = model.cfg.replace(tie_embeddings=False)


def process_weights(
    model: HookedGPT, fold_ln: bool = True, center_writing_weights: bool = True, center_unembed: bool = True
) -> HookedGPT:
    """Simplify the weights without changing the model's log-probabilities (TransformerLens's
    `process_weights_`), in place. Any processing unties tied embeddings. Returns the model.

    A model without LayerNorm (`normalization_type=None`) has nothing to fold, and centring the
    writing weights would change it (only a LayerNorm ignores the mean): both are skipped, as in
    TransformerLens."""
    if model.cfg.normalization_type is None:
        fold_ln = center_writing_weights = False
    if not (fold_ln or center_writing_weights or center_unembed):
        return model
    untie_embeddings(model)
    if fold_ln:
        fold_layer_norms(model)
    if center_writing_weights:
        center_writing_weights_(model)
    if center_unembed:
        center_unembed_(model)
    return model
