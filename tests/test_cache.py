"""ActivationCache: shorthand keys and the residual-stream decompositions add up."""

import pytest
import torch

from hookgpt import GPTConfig, HookedGPT, get_act_name

CFG = GPTConfig(n_layers=3, d_model=48, n_heads=3, d_vocab=200, n_ctx=16)


@pytest.fixture(scope="module")
def run():
    torch.manual_seed(0)
    model = HookedGPT(CFG).eval()
    with torch.no_grad():  # non-trivial LayerNorm parameters so nothing cancels by accident
        for name, p in model.named_parameters():
            if name.endswith((".w", ".b", "b_U", "b_O", "b_out")):
                p.add_(torch.randn_like(p) * 0.2)
    tokens = torch.randint(0, 200, (2, 10))
    logits, cache = model.run_with_cache(tokens)
    return model, tokens, logits, cache


def test_shorthand_names():
    assert get_act_name("pattern", 3) == "blocks.3.attn.hook_pattern"
    assert get_act_name("resid_post", 0) == "blocks.0.hook_resid_post"
    assert get_act_name("post", 1) == "blocks.1.mlp.hook_post"
    assert get_act_name("scale", 2, "ln2") == "blocks.2.ln2.hook_scale"
    assert get_act_name("scale") == "ln_final.hook_scale"
    assert get_act_name("embed") == "hook_embed"
    with pytest.raises(KeyError, match="needs a layer"):
        get_act_name("pattern")
    with pytest.raises(KeyError, match="unknown activation name"):
        get_act_name("patern", 1)


def test_indexing_by_full_name_and_shorthand(run):
    model, _, _, cache = run
    assert cache["pattern", 2] is cache["blocks.2.attn.hook_pattern"]
    assert cache["resid_post", -1] is cache["blocks.2.hook_resid_post"]
    assert ("z", 1) in cache and "hook_embed" in cache and ("z", 7) not in cache
    with pytest.raises(KeyError, match="close matches"):
        cache["blocks.0.attn.hook_patern"]
    assert len(cache) == len(model.hook_dict)


def test_accumulated_resid(run):
    _, _, _, cache = run
    stack, labels = cache.accumulated_resid(incl_mid=True, return_labels=True)
    assert labels == ["0_pre", "0_mid", "1_pre", "1_mid", "2_pre", "2_mid", "final_post"]
    assert stack.shape == (7, 2, 10, 48)
    torch.testing.assert_close(stack[-1], cache["resid_post", 2])
    torch.testing.assert_close(stack[3], cache["resid_mid", 1])
    partial, labels = cache.accumulated_resid(layer=1, return_labels=True)
    assert labels == ["0_pre", "1_pre"]
    last_pos = cache.accumulated_resid(pos_slice=-1)
    assert last_pos.shape == (4, 2, 1, 48)


def test_decompose_resid_sums_to_residual(run):
    _, _, _, cache = run
    stack, labels = cache.decompose_resid(return_labels=True)
    assert labels[:4] == ["embed", "pos_embed", "0_attn_out", "0_mlp_out"] and len(labels) == 8
    torch.testing.assert_close(stack.sum(0), cache["resid_post", -1], atol=1e-5, rtol=0)
    torch.testing.assert_close(cache.decompose_resid(layer=2).sum(0), cache["resid_pre", 2], atol=1e-5, rtol=0)
    attn_only = cache.decompose_resid(mode="attn", incl_embeds=False)
    assert attn_only.shape[0] == 3


def test_stack_head_results_sum_to_attention_output(run):
    model, _, _, cache = run
    heads, labels = cache.stack_head_results(return_labels=True)
    assert labels[:4] == ["L0H0", "L0H1", "L0H2", "L1H0"] and heads.shape == (9, 2, 10, 48)
    for layer in range(3):
        summed = heads[3 * layer : 3 * layer + 3].sum(0) + model.blocks[layer].attn.b_O
        torch.testing.assert_close(summed, cache["attn_out", layer], atol=1e-5, rtol=0)
    with_rest, labels = cache.stack_head_results(incl_remainder=True, return_labels=True)
    assert labels[-1] == "remainder"
    torch.testing.assert_close(with_rest.sum(0), cache["resid_post", -1], atol=1e-5, rtol=0)


def test_stack_head_results_without_cached_result_matches_hook_result(run):
    model, tokens, _, cache = run
    _, z_only = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_z"))
    torch.testing.assert_close(z_only.stack_head_results(), cache.stack_head_results(), atol=1e-5, rtol=0)


def test_apply_ln_to_stack_reproduces_final_layernorm(run):
    model, _, _, cache = run
    stack = cache.decompose_resid()
    normalized = cache.apply_ln_to_stack(stack).sum(0) * model.ln_final.w + model.ln_final.b
    torch.testing.assert_close(normalized, cache["ln_final.hook_normalized"], atol=1e-5, rtol=0)
    # and for a block's input LayerNorm
    stack1 = cache.decompose_resid(layer=1)
    ln1 = model.blocks[1].ln1
    torch.testing.assert_close(cache.apply_ln_to_stack(stack1, layer=1).sum(0) * ln1.w + ln1.b,
                               cache["normalized", 1, "ln1"], atol=1e-5, rtol=0)


def test_logit_attrs_sum_to_logit(run):
    model, tokens, logits, cache = run
    stack = cache.decompose_resid()
    target = tokens[:, 1:]  # [batch, pos - 1]
    attrs = cache.logit_attrs(stack[:, :, :-1], target, pos_slice=slice(0, -1))
    bias = (model.ln_final.b @ model.W_U + model.b_U)[target]
    expected = logits[:, :-1].gather(-1, target[..., None])[..., 0]
    torch.testing.assert_close(attrs.sum(0) + bias, expected, atol=1e-4, rtol=0)
    # a logit difference
    diff = cache.logit_attrs(stack, 5, incorrect_tokens=7)
    expected_diff = logits[..., 5] - logits[..., 7]
    bias_diff = (model.ln_final.b @ model.W_U + model.b_U)[5] - (model.ln_final.b @ model.W_U + model.b_U)[7]
    torch.testing.assert_close(diff.sum(0) + bias_diff, expected_diff, atol=1e-4, rtol=0)


def test_cache_helpers_do_not_modify_cache(run):
    _, _, _, cache = run
    before = {k: v.clone() for k, v in cache.items()}
    cache.decompose_resid(apply_ln=True)
    cache.stack_head_results(apply_ln=True, incl_remainder=True)
    cache.accumulated_resid(apply_ln=True, incl_mid=True)
    assert all(torch.equal(before[k], v) for k, v in cache.items())


def test_remove_batch_dim_and_to(run):
    model, tokens, _, _ = run
    _, cache = model.run_with_cache(tokens[:1])
    single = cache.remove_batch_dim()
    assert single["pattern", 0].shape == (3, 10, 10)
    assert single.decompose_resid().shape == (8, 10, 48)
    assert cache.to("cpu")["embed"].device.type == "cpu"
    _, batch2 = model.run_with_cache(tokens)
    with pytest.raises(ValueError, match="batch of 1"):
        batch2.remove_batch_dim()


def test_factored_circuits(run):
    model, _, _, _ = run
    ov = model.OV
    assert ov.shape == (3, 3, 48, 48)
    torch.testing.assert_close(ov[1, 2].AB, model.W_V[1, 2] @ model.W_O[1, 2])
    qk = model.QK[0, 1]
    full = qk.AB
    torch.testing.assert_close(qk.S, torch.linalg.svdvals(full)[:16], atol=1e-5, rtol=1e-4)
