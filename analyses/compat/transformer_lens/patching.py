"""TransformerLens's `patching` module (the `get_act_patch_*` family) over `analyses.patching`.

TL's functions take `(model, corrupted_tokens, clean_cache, patching_metric)`; the metric gets the
patched run's full logits `[batch, pos, d_vocab]`. analyses' engine runs the clean prompt itself,
so the clean tokens are read back from `clean_cache["hook_embed"]` (each row of it is one row of
`W_E`; a cache without it, or whose embeddings match no token, raises). The engine batches the
patches and reuses the corrupted run (see `analyses.patching`); the values equal TL's loop of
`run_with_hooks` up to floating-point rounding.

Results have TL's shapes: `[layer, pos]` for residual-stream activations, `[layer, head]` for a
head at every position, `[layer, pos, head]` by position, `[5, layer, head]` / `[5, layer, pos, head]`
for the `_every` variants (z, q, k, v, pattern), `[3, layer, pos]` for `get_act_patch_block_every`.
"""

from typing import Any, Callable

import torch
from torch import Tensor

from analyses.patching import Patch, PatchingResult, patch_activations, patch_heads, patch_residual  # noqa: F401

Metric = Callable[[Tensor], Tensor]


def _clean_tokens(model: Any, clean_cache: Any, corrupted_tokens: Tensor) -> Tensor:
    if "hook_embed" not in clean_cache.cache_dict:
        raise ValueError("clean_cache has no hook_embed: the compat patching functions read the clean tokens from it")
    embed = clean_cache["hook_embed"]
    embed = embed if embed.ndim == 3 else embed[None]
    W_E = model.W_E.detach()
    match = (embed[:, :, None, :] == W_E[None, None]).all(-1)  # [batch, pos, d_vocab]
    found = match.any(-1)
    if not bool(found.all()):
        raise ValueError("clean_cache's hook_embed rows are not rows of this model's W_E (another model, or an edited run?)")
    tokens = match.float().argmax(-1)
    if tokens.shape != corrupted_tokens.shape:
        raise ValueError(f"clean tokens {tuple(tokens.shape)} and corrupted tokens {tuple(corrupted_tokens.shape)} differ in shape")
    return tokens


def _run(model: Any, corrupted_tokens: Tensor, clean_cache: Any, metric: Metric, activation: str, by: str) -> Tensor:
    corrupted_tokens = corrupted_tokens if corrupted_tokens.ndim == 2 else corrupted_tokens[None]
    clean = _clean_tokens(model, clean_cache, corrupted_tokens)
    read = list(range(corrupted_tokens.shape[1]))  # TL's metric sees the logits of every position
    common = dict(read_positions=read, disable=True)
    if activation in ("resid_pre", "resid_mid", "attn_out", "mlp_out"):
        return patch_residual(model, clean, corrupted_tokens, metric, activation, by_position=by == "pos", **common).values
    result = patch_heads(model, clean, corrupted_tokens, metric, activation, by_position=by == "pos head", **common)
    return result.values


def get_act_patch_resid_pre(model: Any, corrupted_tokens: Tensor, clean_cache: Any, patching_metric: Metric) -> Tensor:
    return _run(model, corrupted_tokens, clean_cache, patching_metric, "resid_pre", "pos")


def get_act_patch_resid_mid(model: Any, corrupted_tokens: Tensor, clean_cache: Any, patching_metric: Metric) -> Tensor:
    return _run(model, corrupted_tokens, clean_cache, patching_metric, "resid_mid", "pos")


def get_act_patch_attn_out(model: Any, corrupted_tokens: Tensor, clean_cache: Any, patching_metric: Metric) -> Tensor:
    return _run(model, corrupted_tokens, clean_cache, patching_metric, "attn_out", "pos")


def get_act_patch_mlp_out(model: Any, corrupted_tokens: Tensor, clean_cache: Any, patching_metric: Metric) -> Tensor:
    return _run(model, corrupted_tokens, clean_cache, patching_metric, "mlp_out", "pos")


def get_act_patch_attn_head_out_all_pos(model: Any, corrupted_tokens: Tensor, clean_cache: Any, patching_metric: Metric) -> Tensor:
    return _run(model, corrupted_tokens, clean_cache, patching_metric, "z", "all")


def get_act_patch_attn_head_q_all_pos(model: Any, corrupted_tokens: Tensor, clean_cache: Any, patching_metric: Metric) -> Tensor:
    return _run(model, corrupted_tokens, clean_cache, patching_metric, "q", "all")


def get_act_patch_attn_head_k_all_pos(model: Any, corrupted_tokens: Tensor, clean_cache: Any, patching_metric: Metric) -> Tensor:
    return _run(model, corrupted_tokens, clean_cache, patching_metric, "k", "all")


def get_act_patch_attn_head_v_all_pos(model: Any, corrupted_tokens: Tensor, clean_cache: Any, patching_metric: Metric) -> Tensor:
    return _run(model, corrupted_tokens, clean_cache, patching_metric, "v", "all")


def get_act_patch_attn_head_pattern_all_pos(model: Any, corrupted_tokens: Tensor, clean_cache: Any, patching_metric: Metric) -> Tensor:
    return _run(model, corrupted_tokens, clean_cache, patching_metric, "pattern", "all")


def get_act_patch_attn_head_out_by_pos(model: Any, corrupted_tokens: Tensor, clean_cache: Any, patching_metric: Metric) -> Tensor:
    return _run(model, corrupted_tokens, clean_cache, patching_metric, "z", "pos head")


def get_act_patch_attn_head_q_by_pos(model: Any, corrupted_tokens: Tensor, clean_cache: Any, patching_metric: Metric) -> Tensor:
    return _run(model, corrupted_tokens, clean_cache, patching_metric, "q", "pos head")


def get_act_patch_attn_head_k_by_pos(model: Any, corrupted_tokens: Tensor, clean_cache: Any, patching_metric: Metric) -> Tensor:
    return _run(model, corrupted_tokens, clean_cache, patching_metric, "k", "pos head")


def get_act_patch_attn_head_v_by_pos(model: Any, corrupted_tokens: Tensor, clean_cache: Any, patching_metric: Metric) -> Tensor:
    return _run(model, corrupted_tokens, clean_cache, patching_metric, "v", "pos head")


def get_act_patch_attn_head_all_pos_every(model: Any, corrupted_tokens: Tensor, clean_cache: Any, metric: Metric) -> Tensor:
    """`[5, layer, head]`: head output (z), q, k, v and pattern, each patched at every position."""
    return torch.stack([_run(model, corrupted_tokens, clean_cache, metric, a, "all") for a in ("z", "q", "k", "v", "pattern")])


def get_act_patch_attn_head_by_pos_every(model: Any, corrupted_tokens: Tensor, clean_cache: Any, metric: Metric) -> Tensor:
    raise NotImplementedError(
        "get_act_patch_attn_head_by_pos_every is not supported (TL's pattern slice is by destination position); "
        "use get_act_patch_attn_head_out_by_pos / _q_ / _k_ / _v_by_pos, or analyses.patching.patch_heads(by_position=True)"
    )


def get_act_patch_block_every(model: Any, corrupted_tokens: Tensor, clean_cache: Any, metric: Metric) -> Tensor:
    """`[3, layer, pos]`: resid_pre, attn_out and mlp_out patched at each (layer, position)."""
    return torch.stack([_run(model, corrupted_tokens, clean_cache, metric, a, "pos") for a in ("resid_pre", "attn_out", "mlp_out")])


def generic_activation_patch(*args: Any, **kwargs: Any) -> Tensor:
    raise NotImplementedError(
        "generic_activation_patch (custom patch_setter / index_df) is not supported by hookgpt's TransformerLens layer; "
        "use the get_act_patch_* functions or analyses.patching.patch_activations"
    )
