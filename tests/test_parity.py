"""Ground truth: HookedGPT equals Hugging Face's GPT2LMHeadModel on identical (random) weights.

Each test writes a small random GPT-2 with `save_pretrained`, loads the same weights into both
implementations, and compares logits, loss, every residual stream, every attention pattern and
the final LayerNorm output; then each component alone against its Hugging Face counterpart.
"""

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from hookgpt import HookedGPT  # noqa: E402
from hookgpt.components import MLP, Attention, LayerNorm, TransformerBlock  # noqa: E402
from hookgpt.loading import config_from_hf, convert_hf_state_dict  # noqa: E402

ATOL = 1e-4


def make_pair(n_layer=2, n_embd=64, n_head=4, n_positions=32, vocab_size=500, seed=0, **kw):
    torch.manual_seed(seed)
    hf_cfg = GPT2Config(
        n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=n_positions, vocab_size=vocab_size,
        bos_token_id=0, eos_token_id=0, attn_implementation="eager", **kw,
    )
    hf = GPT2LMHeadModel(hf_cfg).eval()
    # make biases and LayerNorm parameters non-trivial so every weight is exercised
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("bias") or "ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    cfg = config_from_hf(hf_cfg.to_dict())
    model = HookedGPT(cfg).eval()
    model.load_state_dict(convert_hf_state_dict(hf.state_dict(), cfg))
    return hf, model


def hf_block_outputs(hf, tokens, **kwargs):
    """HF hidden states per block: input of each block, output of each attention, output of each block."""
    attn_out, block_out = [], []
    handles = []
    for block in hf.transformer.h:
        handles.append(block.attn.register_forward_hook(lambda m, i, o: attn_out.append(o[0] if isinstance(o, tuple) else o)))
        handles.append(block.register_forward_hook(lambda m, i, o: block_out.append(o[0] if isinstance(o, tuple) else o)))
    try:
        out = hf(tokens, output_hidden_states=True, output_attentions=True, labels=tokens, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return out, attn_out, block_out


@pytest.mark.parametrize("batch,pos", [(1, 5), (3, 17), (2, 32)])
def test_every_activation_matches_hf(batch, pos):
    hf, model = make_pair()
    tokens = torch.randint(0, 500, (batch, pos))
    with torch.no_grad():
        out, attn_out, block_out = hf_block_outputs(hf, tokens)
        (logits, loss), cache = model.run_with_cache(tokens, return_type="both")
    torch.testing.assert_close(logits, out.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(loss, out.loss, atol=ATOL, rtol=0)
    for layer in range(model.cfg.n_layers):
        torch.testing.assert_close(cache["resid_pre", layer], out.hidden_states[layer], atol=ATOL, rtol=0)
        torch.testing.assert_close(cache["attn_out", layer], attn_out[layer], atol=ATOL, rtol=0)
        torch.testing.assert_close(cache["resid_mid", layer], out.hidden_states[layer] + attn_out[layer], atol=ATOL, rtol=0)
        torch.testing.assert_close(cache["resid_post", layer], block_out[layer], atol=ATOL, rtol=0)
        torch.testing.assert_close(cache["pattern", layer], out.attentions[layer], atol=ATOL, rtol=0)
    torch.testing.assert_close(cache["ln_final.hook_normalized"], out.hidden_states[-1], atol=ATOL, rtol=0)


def test_fast_path_matches_hf_and_explicit_path():
    """With nothing observing the pattern, attention runs fused (sdpa); same numbers either way."""
    hf, model = make_pair(n_layer=3)
    tokens = torch.randint(0, 500, (2, 32))
    with torch.no_grad():
        fast = model(tokens)
        explicit = model.run_with_hooks(tokens, fwd_hooks=[(lambda n: n.endswith("hook_pattern"), lambda x, hook: None)])
        reference = hf(tokens).logits
    torch.testing.assert_close(fast, explicit, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast, reference, atol=ATOL, rtol=0)


@pytest.mark.parametrize("act", ["gelu_new", "gelu", "relu"])
def test_activation_functions_match_hf(act):
    hf, model = make_pair(activation_function=act)
    tokens = torch.randint(0, 500, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), hf(tokens).logits, atol=ATOL, rtol=0)


def test_right_padding_matches_hf_on_real_tokens():
    hf, model = make_pair()
    tokens = torch.randint(0, 500, (3, 12))
    mask = torch.ones_like(tokens)
    mask[0, 7:] = 0
    mask[2, 3:] = 0
    with torch.no_grad():
        ours = model(tokens, attention_mask=mask)
        theirs = hf(tokens, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(ours[real], theirs[real], atol=ATOL, rtol=0)


def test_left_padding_equals_unpadded_and_hf():
    hf, model = make_pair()
    short = torch.randint(0, 500, (5,))
    long = torch.randint(0, 500, (9,))
    tokens = torch.stack([torch.cat([torch.zeros(4, dtype=torch.long), short]), long])
    mask = torch.stack([torch.cat([torch.zeros(4, dtype=torch.long), torch.ones(5, dtype=torch.long)]), torch.ones(9, dtype=torch.long)])
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ours = model(tokens, attention_mask=mask)
        alone = model(short[None])
        theirs = hf(tokens, attention_mask=mask, position_ids=position_ids).logits
    torch.testing.assert_close(ours[0, 4:], alone[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(ours[mask.bool()], theirs[mask.bool()], atol=ATOL, rtol=0)
    assert not ours.isnan().any(), "padding queries must not produce NaNs"


def test_padded_loss_ignores_padding():
    _, model = make_pair()
    tokens = torch.randint(0, 500, (1, 10))
    padded = torch.cat([tokens, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 10), torch.zeros(1, 4)], dim=1).long()
    with torch.no_grad():
        torch.testing.assert_close(model(padded, attention_mask=mask, return_type="loss"), model(tokens, return_type="loss"))


def test_tied_embeddings_follow_hf():
    hf, model = make_pair()
    assert model.cfg.tie_embeddings and "unembed.W_U" not in model.state_dict()
    torch.testing.assert_close(model.W_U, hf.lm_head.weight.T)


# ---------------------------------------------------------------------------------------------
# Component by component, as in the seed
# ---------------------------------------------------------------------------------------------


def test_layer_norm_component():
    hf, model = make_pair()
    x = torch.randn(2, 7, 64)
    ln: LayerNorm = model.blocks[0].ln1
    with torch.no_grad():
        torch.testing.assert_close(ln(x), hf.transformer.h[0].ln_1(x), atol=1e-5, rtol=0)
        # the explicit path (taken when its hooks are observed) is the same maths
        with model.hooks(fwd_hooks=[("blocks.0.ln1.hook_scale", lambda s, hook: None)]):
            torch.testing.assert_close(ln(x), hf.transformer.h[0].ln_1(x), atol=1e-5, rtol=0)


def test_embed_and_pos_embed_components():
    hf, model = make_pair()
    tokens = torch.randint(0, 500, (2, 6))
    torch.testing.assert_close(model.embed(tokens), hf.transformer.wte(tokens))
    positions = torch.arange(6).expand(2, 6)
    torch.testing.assert_close(model.pos_embed(positions), hf.transformer.wpe(positions))


def captured_io(hf, module, tokens):
    """The input and output of an HF submodule during a full forward pass (with its causal mask)."""
    seen = {}

    def grab(m, args, kwargs, out):
        seen["input"] = args[0] if args else kwargs["hidden_states"]
        seen["output"] = out[0] if isinstance(out, tuple) else out

    handle = module.register_forward_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            hf(tokens)
    finally:
        handle.remove()
    return seen["input"], seen["output"]


def test_attention_component():
    hf, model = make_pair()
    x, expected = captured_io(hf, hf.transformer.h[1].attn, torch.randint(0, 500, (2, 11)))
    attn: Attention = model.blocks[1].attn
    with torch.no_grad():
        torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=0)


def test_mlp_component():
    hf, model = make_pair()
    x = torch.randn(2, 11, 64)
    mlp: MLP = model.blocks[0].mlp
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), hf.transformer.h[0].mlp(x), atol=1e-5, rtol=0)


def test_transformer_block_component():
    hf, model = make_pair()
    x, expected = captured_io(hf, hf.transformer.h[1], torch.randint(0, 500, (2, 11)))
    block: TransformerBlock = model.blocks[1]
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=0)


def test_unembed_component():
    hf, model = make_pair()
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.unembed(x), hf.lm_head(x), atol=1e-5, rtol=0)


@pytest.mark.skipif(
    not __import__("importlib").util.find_spec("huggingface_hub"), reason="huggingface_hub is not installed"
)
def test_pretrained_gpt2_from_local_cache():
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache("gpt2", "config.json"), str):
        pytest.skip("no pretrained gpt2 in the local Hugging Face cache (it cannot be downloaded here)")
    hf = GPT2LMHeadModel.from_pretrained("gpt2", attn_implementation="eager").eval()
    model = HookedGPT.from_pretrained("gpt2").eval()
    tokens = model.to_tokens("The quick brown fox jumps over the lazy dog. The quick brown")
    with torch.no_grad():
        out = hf(tokens, output_attentions=True)
        logits, cache = model.run_with_cache(tokens)
    torch.testing.assert_close(logits, out.logits, atol=1e-3, rtol=0)
    for layer in range(12):
        torch.testing.assert_close(cache["pattern", layer], out.attentions[layer], atol=1e-4, rtol=0)
