"""GPTConfig's architecture fields beyond GPT-2: no LayerNorm, fewer output ids than input ids.

GPT-2's own architecture (normalization_type "LN", d_vocab_out = d_vocab) is checked against
Hugging Face in tests/test_parity.py; these are the other architectures the shipped models use.
"""

import pytest
import torch
import torch.nn.functional as F
from einops import einsum

from hookgpt import GPTConfig, HookedGPT

CFG = dict(n_layers=1, d_model=16, n_heads=2, d_mlp=32, d_vocab=12, n_ctx=4, act_fn="relu")


def test_defaults_are_gpt2s():
    cfg = GPTConfig()
    assert cfg.normalization_type == "LN" and cfg.d_vocab_out == cfg.d_vocab == 50257
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg


def test_without_layer_norm_every_layer_norm_is_the_identity_and_its_hooks_still_fire():
    torch.manual_seed(0)
    model = HookedGPT(GPTConfig(**CFG, normalization_type=None)).eval()
    assert not [name for name in model.state_dict() if "ln" in name]  # no LayerNorm weights at all
    tokens = torch.tensor([[1, 5, 7, 2]])
    logits, cache = model.run_with_cache(tokens)
    for name in ("blocks.0.ln1", "blocks.0.ln2", "ln_final"):
        assert f"{name}.hook_normalized" in cache and f"{name}.hook_scale" in cache
    torch.testing.assert_close(cache["blocks.0.ln1.hook_normalized"], cache["blocks.0.hook_resid_pre"])
    torch.testing.assert_close(cache["ln_final.hook_normalized"], cache["blocks.0.hook_resid_post"])
    assert (cache["blocks.0.ln2.hook_scale"] == 1).all()
    # the whole forward written out: embeddings, attention, ReLU MLP, unembedding, nothing normalised
    block = model.blocks[0]
    resid = model.W_E[tokens] + model.W_pos[:4]
    q, k, v = (einsum(resid, W, "b p d, h d e -> b p h e") + bias
               for W, bias in ((block.attn.W_Q, block.attn.b_Q), (block.attn.W_K, block.attn.b_K), (block.attn.W_V, block.attn.b_V)))
    scores = einsum(q, k, "b q h e, b k h e -> b h q k") / 8**0.5
    scores = scores.masked_fill(~torch.ones(4, 4, dtype=torch.bool).tril(), float("-inf"))
    z = einsum(scores.softmax(-1), v, "b h q k, b k h e -> b q h e")
    resid = resid + einsum(z, block.attn.W_O, "b q h e, h e d -> b q d") + block.attn.b_O
    resid = resid + F.relu(resid @ block.mlp.W_in + block.mlp.b_in) @ block.mlp.W_out + block.mlp.b_out
    torch.testing.assert_close(logits, resid @ model.W_U + model.b_U, atol=1e-5, rtol=1e-5)


def test_d_vocab_out_sizes_the_unembedding():
    model = HookedGPT(GPTConfig(**CFG, d_vocab_out=9))
    assert model.W_U.shape == (16, 9) and model.b_U.shape == (9,)
    tokens = torch.tensor([[11, 3, 8, 2]])  # every input id may be read ...
    assert model(tokens).shape == (1, 4, 9)  # ... and 9 are predicted
    loss = model(torch.tensor([[11, 3, 8, 2]]), return_type="loss")  # targets 3, 8, 2 are all below 9
    assert torch.isfinite(loss)


@pytest.mark.parametrize("changes, message", [
    (dict(normalization_type="RMS"), "normalization_type='RMS' is not supported"),
    (dict(d_vocab_out=9, tie_embeddings=True), "tie_embeddings needs d_vocab_out == d_vocab"),
    (dict(d_vocab_out=0), "d_vocab_out must be a positive integer"),
])
def test_bad_architecture_fields(changes, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**{**CFG, **changes})


def test_a_model_without_layer_norm_round_trips_through_save_pretrained(tmp_path):
    model = HookedGPT(GPTConfig(**CFG, normalization_type=None, d_vocab_out=10))
    model.save_pretrained(str(tmp_path / "m"))
    loaded = HookedGPT.from_pretrained(str(tmp_path / "m"))
    assert loaded.cfg.normalization_type is None and loaded.cfg.d_vocab_out == 10
    tokens = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(loaded(tokens), model(tokens))
