"""Loading and saving: Hugging Face GPT-2 checkpoints <-> hookgpt, and hookgpt's own format.

hookgpt's format is a directory with `config.json` (a `GPTConfig`) and `model.safetensors`
(the state dict in the layout of DESIGN.md). Hugging Face GPT-2 stores attention as one fused
`Conv1D` (`c_attn`, `[d_model, 3 * d_model]`, used as `x @ W`); `convert_hf_state_dict` splits
it into per-head `W_Q/W_K/W_V` and `to_hf_state_dict` fuses it back.

Loading never holds two copies of the weights: the model is built on the `meta` device (no
memory), the safetensors file is memory-mapped, and `load_state_dict(assign=True)` adopts the
tensors. Weight processing (`fold_ln`, `center_writing_weights`, `center_unembed`) follows
TransformerLens and leaves the model's log-probabilities unchanged.
"""

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

import torch
from einops import rearrange
from torch import Tensor

from hookgpt.config import GPTConfig
from hookgpt.model import HookedGPT

SHIPPED_DIR = Path(__file__).parent / "data" / "models"
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not match its config."""


# ---------------------------------------------------------------------------------------------
# Hugging Face GPT-2 <-> hookgpt
# ---------------------------------------------------------------------------------------------


def config_from_hf(hf_config: dict[str, Any], model_name: str = "custom") -> GPTConfig:
    """A `GPTConfig` from the fields of a Hugging Face GPT-2 `config.json`."""
    if hf_config.get("model_type", "gpt2") != "gpt2":
        raise CheckpointError(f"only GPT-2 checkpoints are supported, this one has model_type={hf_config.get('model_type')!r}")
    act = hf_config.get("activation_function", "gelu_new")
    act = {"gelu_pytorch_tanh": "gelu_new", "gelu_fast": "gelu_new"}.get(act, act)
    d_model = hf_config["n_embd"]
    return GPTConfig(
        n_layers=hf_config["n_layer"],
        d_model=d_model,
        n_heads=hf_config["n_head"],
        d_mlp=hf_config.get("n_inner") or 4 * d_model,
        d_vocab=hf_config["vocab_size"],
        n_ctx=hf_config["n_positions"],
        act_fn=act,
        layer_norm_eps=hf_config.get("layer_norm_epsilon", 1e-5),
        tie_embeddings=hf_config.get("tie_word_embeddings", True),
        init_range=hf_config.get("initializer_range", 0.02),
        model_name=model_name,
    )


def config_to_hf(cfg: GPTConfig) -> dict[str, Any]:
    """The Hugging Face `config.json` fields for a (non-attention-only) hookgpt config."""
    if cfg.attn_only:
        raise ValueError("transformers' GPT-2 has MLPs in every block; an attention-only model cannot be exported")
    if cfg.d_head * cfg.n_heads != cfg.d_model:
        raise ValueError(f"transformers' GPT-2 needs d_head * n_heads == d_model, got {cfg.d_head} * {cfg.n_heads} != {cfg.d_model}")
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "n_layer": cfg.n_layers,
        "n_embd": cfg.d_model,
        "n_head": cfg.n_heads,
        "n_inner": cfg.d_mlp,
        "vocab_size": cfg.d_vocab,
        "n_positions": cfg.n_ctx,
        "activation_function": cfg.act_fn,
        "layer_norm_epsilon": cfg.layer_norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": cfg.init_range,
        "bos_token_id": 50256,
        "eos_token_id": 50256,
    }


def convert_hf_state_dict(hf_sd: dict[str, Tensor], cfg: GPTConfig) -> dict[str, Tensor]:
    """Hugging Face GPT-2 weights (`transformer.h.0.attn.c_attn.weight`, ...) -> hookgpt names and layout."""
    sd = {k.removeprefix("transformer."): v for k, v in hf_sd.items()}
    n_heads = cfg.n_heads

    def need(key: str) -> Tensor:
        if key not in sd:
            raise CheckpointError(f"the checkpoint has no weight {key!r} (n_layers={cfg.n_layers} in the config)")
        return sd[key]

    out = {
        "embed.W_E": need("wte.weight"),
        "pos_embed.W_pos": need("wpe.weight"),
        "ln_final.w": need("ln_f.weight"),
        "ln_final.b": need("ln_f.bias"),
        "unembed.b_U": torch.zeros(cfg.d_vocab, dtype=need("wte.weight").dtype),
    }
    if not cfg.tie_embeddings:
        out["unembed.W_U"] = sd.get("lm_head.weight", need("wte.weight")).T
    for l in range(cfg.n_layers):
        h, b = f"h.{l}.", f"blocks.{l}."
        W_Q, W_K, W_V = need(h + "attn.c_attn.weight").chunk(3, dim=1)  # each [d_model, n_heads * d_head]
        b_Q, b_K, b_V = need(h + "attn.c_attn.bias").chunk(3, dim=0)
        for name, W, bias in (("Q", W_Q, b_Q), ("K", W_K, b_K), ("V", W_V, b_V)):
            out[b + f"attn.W_{name}"] = rearrange(W, "d_model (n_heads d_head) -> n_heads d_model d_head", n_heads=n_heads)
            out[b + f"attn.b_{name}"] = rearrange(bias, "(n_heads d_head) -> n_heads d_head", n_heads=n_heads)
        out[b + "attn.W_O"] = rearrange(
            need(h + "attn.c_proj.weight"), "(n_heads d_head) d_model -> n_heads d_head d_model", n_heads=n_heads
        )
        out[b + "attn.b_O"] = need(h + "attn.c_proj.bias")
        out[b + "ln1.w"], out[b + "ln1.b"] = need(h + "ln_1.weight"), need(h + "ln_1.bias")
        out[b + "ln2.w"], out[b + "ln2.b"] = need(h + "ln_2.weight"), need(h + "ln_2.bias")
        out[b + "mlp.W_in"], out[b + "mlp.b_in"] = need(h + "mlp.c_fc.weight"), need(h + "mlp.c_fc.bias")
        out[b + "mlp.W_out"], out[b + "mlp.b_out"] = need(h + "mlp.c_proj.weight"), need(h + "mlp.c_proj.bias")
    return {k: v.contiguous() for k, v in out.items()}


def to_hf_state_dict(model: HookedGPT) -> dict[str, Tensor]:
    """hookgpt weights -> a `GPT2LMHeadModel` state dict (the inverse of `convert_hf_state_dict`).

    `unembed.b_U` has no place in GPT-2; exporting a model whose b_U is non-zero (e.g. after
    `center_unembed`... which keeps it zero, or training with a bias) raises an error.
    """
    cfg = model.cfg
    config_to_hf(cfg)  # raises for configs transformers cannot express
    if model.b_U.detach().abs().max() > 0:
        raise ValueError("this model has a non-zero unembedding bias b_U, which transformers' GPT-2 cannot hold")
    sd = {
        "transformer.wte.weight": model.W_E,
        "transformer.wpe.weight": model.W_pos,
        "transformer.ln_f.weight": model.ln_final.w,
        "transformer.ln_f.bias": model.ln_final.b,
        "lm_head.weight": model.W_U.T,
    }
    for l, block in enumerate(model.blocks):
        h, attn = f"transformer.h.{l}.", block.attn
        sd[h + "attn.c_attn.weight"] = torch.cat(
            [rearrange(W, "n_heads d_model d_head -> d_model (n_heads d_head)") for W in (attn.W_Q, attn.W_K, attn.W_V)], dim=1
        )
        sd[h + "attn.c_attn.bias"] = torch.cat([rearrange(b, "n_heads d_head -> (n_heads d_head)") for b in (attn.b_Q, attn.b_K, attn.b_V)])
        sd[h + "attn.c_proj.weight"] = rearrange(attn.W_O, "n_heads d_head d_model -> (n_heads d_head) d_model")
        sd[h + "attn.c_proj.bias"] = attn.b_O
        sd[h + "ln_1.weight"], sd[h + "ln_1.bias"] = block.ln1.w, block.ln1.b
        sd[h + "ln_2.weight"], sd[h + "ln_2.bias"] = block.ln2.w, block.ln2.b
        sd[h + "mlp.c_fc.weight"], sd[h + "mlp.c_fc.bias"] = block.mlp.W_in, block.mlp.b_in
        sd[h + "mlp.c_proj.weight"], sd[h + "mlp.c_proj.bias"] = block.mlp.W_out, block.mlp.b_out
    return {k: v.detach().contiguous() for k, v in sd.items()}
