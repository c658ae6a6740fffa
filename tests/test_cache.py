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
    assert last_pos.shape == (4, 2, 48)  # an int pos_slice drops the position dimension (TransformerLens's Slice)


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


# ---------------------------------------------------------------------------------------------
# TransformerLens 2.18 semantics (issue 12, part 1): same call, same shapes and numbers
# ---------------------------------------------------------------------------------------------

from hookgpt.slicing import Slice  # noqa: E402


def test_slice_rules_follow_transformer_lens():
    t = torch.arange(24).reshape(2, 3, 4)
    assert Slice(-1).apply(t, dim=1).shape == (2, 4)  # an int drops the dimension
    assert torch.equal(Slice((1, 3)).apply(t, dim=2), t[:, :, 1:3])  # a tuple is slice(*tuple)
    assert torch.equal(Slice([2, 0]).apply(t, dim=1), t[:, [2, 0]])  # a list picks indices in order
    assert torch.equal(Slice(None).apply(t, dim=1), t)
    assert torch.equal(Slice(torch.tensor([1])).apply(t, dim=-1), t[..., [1]])
    assert Slice.unwrap(-1).apply(t, dim=1).shape == (2, 1, 4)  # run_with_cache's rule: an int keeps its dim
    assert Slice((0, 6, 2)).indices(6).tolist() == [0, 2, 4]
    with pytest.raises(TypeError, match="invalid slice"):
        Slice("last")
    with pytest.raises(TypeError, match="integer indices"):
        Slice([0.5])


@pytest.mark.parametrize("pos_slice", [-1, Slice(-1)])
def test_int_pos_slice_drops_the_position_dimension(run, pos_slice):
    _, _, _, cache = run
    assert cache.accumulated_resid(incl_mid=True, pos_slice=pos_slice).shape == (7, 2, 48)
    assert cache.decompose_resid(pos_slice=pos_slice).shape == (8, 2, 48)
    heads = cache.stack_head_results(pos_slice=pos_slice)
    assert heads.shape == (9, 2, 48)
    torch.testing.assert_close(heads, cache.stack_head_results()[:, :, -1])
    assert cache.stack_neuron_results(1, pos_slice=pos_slice).shape == (192, 2, 48)
    scaled = cache.apply_ln_to_stack(cache.decompose_resid(pos_slice=pos_slice), pos_slice=pos_slice)
    torch.testing.assert_close(scaled, cache.apply_ln_to_stack(cache.decompose_resid())[:, :, -1])


def test_tuple_pos_slice_is_a_range_and_list_picks_indices(run):
    _, _, _, cache = run
    full = cache.accumulated_resid()
    torch.testing.assert_close(cache.accumulated_resid(pos_slice=(1, 4)), full[:, :, 1:4])
    torch.testing.assert_close(cache.accumulated_resid(pos_slice=[5, 0]), full[:, :, [5, 0]])
    torch.testing.assert_close(cache.decompose_resid(pos_slice=slice(2, None)), cache.decompose_resid()[:, :, 2:])


def test_direct_logit_attribution_idiom_gives_one_value_per_component(run):
    # the example: TL's most common DLA code, [component, batch, d_model] all the way
    model, tokens, logits, cache = run
    answers = torch.tensor([[3, 4], [5, 6]])  # (correct, incorrect) per row
    acc = cache.accumulated_resid(layer=-1, incl_mid=True, pos_slice=-1)
    assert acc.shape == (7, 2, 48)
    scaled = cache.apply_ln_to_stack(acc, layer=-1, pos_slice=-1)
    dirs = model.tokens_to_residual_directions(answers)  # [batch, 2, d_model]
    diff_dirs = (dirs[:, 0] - dirs[:, 1]) * model.ln_final.w
    per_component = torch.einsum("cbd,bd->c", scaled, diff_dirs) / 2
    assert per_component.shape == (7,) and per_component.abs().min() > 0
    attrs = cache.logit_attrs(acc, answers[:, 0], incorrect_tokens=answers[:, 1], pos_slice=-1)
    torch.testing.assert_close(attrs.mean(-1), per_component, atol=1e-5, rtol=0)
    # the final component's attribution is the logit difference itself, minus the bias term
    bias = model.ln_final.b @ model.W_U + model.b_U
    expected = logits[:, -1].gather(-1, answers).diff(dim=-1)[:, 0] * -1
    torch.testing.assert_close(attrs[-1] + bias[answers[:, 0]] - bias[answers[:, 1]], expected, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="same shape"):
        cache.logit_attrs(acc, answers[:, 0], incorrect_tokens=answers[:1, 1], pos_slice=-1)
    # batch_slice picks rows of both the stack and the cached scale
    one = cache.logit_attrs(acc, answers[-1, 0], incorrect_tokens=answers[-1, 1], pos_slice=-1, batch_slice=-1)
    torch.testing.assert_close(one, attrs[:, -1])


def test_accumulated_resid_apply_ln_recomputes_layernorm_at_the_final_layer(run):
    # TL 2.18: apply_ln=True at the final layer normalises each component by its own statistics
    model, _, _, cache = run
    acc = cache.accumulated_resid(incl_mid=True, pos_slice=-1)
    recomputed = cache.accumulated_resid(incl_mid=True, pos_slice=-1, apply_ln=True)
    ln = model.ln_final
    by_hand = torch.stack([torch.nn.functional.layer_norm(c, (48,), ln.w, ln.b, 1e-5) for c in acc])
    torch.testing.assert_close(recomputed, by_hand)
    torch.testing.assert_close(recomputed[-1], cache["ln_final.hook_normalized"][:, -1], atol=1e-5, rtol=0)
    cached = cache.accumulated_resid(incl_mid=True, pos_slice=-1, apply_ln=True, recompute_ln=False)
    torch.testing.assert_close(cached, cache.apply_ln_to_stack(acc, pos_slice=-1))
    assert not torch.allclose(cached[:-1], recomputed[:-1], atol=1e-3)
    # below the final layer: the cached scale of that layer's ln1, as TL
    before_1 = cache.accumulated_resid(layer=1, apply_ln=True)
    torch.testing.assert_close(before_1, cache.apply_ln_to_stack(cache.accumulated_resid(layer=1), layer=1))


def test_remove_batch_dim_is_in_place_as_in_transformer_lens(run):
    model, tokens, _, _ = run
    _, cache = model.run_with_cache(tokens[:1])
    shapes = {k: v.shape for k, v in cache.items()}
    assert cache.remove_batch_dim() is cache and not cache.has_batch_dim
    assert all(cache[k].shape == s[1:] for k, s in shapes.items())
    cache.remove_batch_dim()  # a second time changes nothing
    assert all(cache[k].shape == s[1:] for k, s in shapes.items())
    assert cache.to("cpu") is cache


def test_neuron_results_and_full_decomposition_sum_to_the_residual(run):
    model, _, _, cache = run
    neurons, labels = cache.stack_neuron_results(2, pos_slice=-1, incl_remainder=True, return_labels=True)
    assert labels[:3] == ["L0N0", "L0N1", "L0N2"] and labels[-1] == "remainder" and len(labels) == 2 * 192 + 1
    torch.testing.assert_close(neurons.sum(0), cache["resid_pre", 2][:, -1], atol=1e-5, rtol=0)
    three = cache.get_neuron_results(1, neuron_slice=[0, 1, 2], pos_slice=-1)
    torch.testing.assert_close(three, cache["post", 1][:, -1, :3, None] * model.blocks[1].mlp.W_out[:3])
    for expand in (True, False):
        full, labels = cache.get_full_resid_decomposition(expand_neurons=expand, return_labels=True)
        assert labels[-3:] == ["embed", "pos_embed", "bias"]
        torch.testing.assert_close(full.sum(0), cache["resid_post", 2], atol=1e-4, rtol=0)
    mid, _ = cache.get_full_resid_decomposition(layer=1, mlp_input=True, return_labels=True)
    torch.testing.assert_close(mid.sum(0), cache["resid_mid", 1], atol=1e-4, rtol=0)


def test_tl_cache_methods(run):
    model, _, _, cache = run
    assert torch.equal(cache["scale4ln1".replace("4", "2")], cache["scale", 2, "ln1"])  # compact names
    assert torch.equal(cache["k1a"], cache["k", 1]) and torch.equal(cache["pre0"], cache["pre", 0])
    assert torch.equal(cache["embed", None], cache["hook_embed"])
    assert torch.equal(cache.stack_activation("scale", -1, "ln1")[1], cache["scale", 1, "ln1"])
    rows = cache.apply_slice_to_batch_dim((1, 2))
    assert rows.has_batch_dim and torch.equal(rows["resid_pre", 1], cache["resid_pre", 1][1:2])
    row = cache.apply_slice_to_batch_dim(1)
    assert not row.has_batch_dim and torch.equal(row["z", 0], cache["z", 0][1])
    heads_only = type(cache)({k: v for k, v in cache.cache_dict.items() if "hook_result" not in k}, model)
    heads_only.compute_head_results()
    torch.testing.assert_close(heads_only["result", 2], cache["result", 2])
    empty, labels = cache.stack_head_results(layer=0, pos_slice=-1, return_labels=True)
    assert empty.shape == (0, 2, 48) and labels == []


# FactoredMatrix, with TransformerLens's conventions (issue 12, part 1 item 2)

from hookgpt import FactoredMatrix  # noqa: E402


def _fm(*lead, l=5, m=3, r=4):
    g = torch.Generator().manual_seed(1)
    return FactoredMatrix(torch.randn(*lead, l, m, generator=g), torch.randn(*lead, m, r, generator=g))


def test_factored_svd_follows_transformer_lens():
    fm = _fm(2)
    U, S, Vh = fm.svd()
    assert U.shape == (2, 5, 3) and S.shape == (2, 3) and Vh.shape == (2, 4, 3)  # Vh is [rdim, mdim]
    torch.testing.assert_close(U @ torch.diag_embed(S) @ Vh.mT, fm.AB, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(U.mT @ U, torch.eye(3).expand(2, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(Vh.mT @ Vh, torch.eye(3).expand(2, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(fm.norm(), fm.AB.norm(dim=(-2, -1)))
    torch.testing.assert_close(fm.collapse_l(), S[..., None] * Vh.mT)
    torch.testing.assert_close(fm.collapse_r(), U * S[..., None, :])
    torch.testing.assert_close(fm.make_even().AB, fm.AB, atol=1e-5, rtol=1e-5)


def test_factored_indexing_reaches_rows_and_columns():
    fm = _fm(2, 3)
    assert (fm.ldim, fm.mdim, fm.rdim, fm.ndim) == (5, 3, 4, 4)
    torch.testing.assert_close(fm[1, 2].AB, fm.AB[1, 2])
    torch.testing.assert_close(fm[1, 2, 0].AB[0], fm.AB[1, 2, 0])  # an int row keeps its dimension
    torch.testing.assert_close(fm[1, 2, 4, 3].AB.squeeze(), fm.AB[1, 2, 4, 3])  # one element
    torch.testing.assert_close(fm[:, :, [0, 1], [0]].AB, fm.AB[:, :, [0, 1]][..., [0]])
    torch.testing.assert_close(fm[:, :, -1, -1].AB[..., 0, 0], fm.AB[:, :, -1, -1])
    with pytest.raises(IndexError):
        fm[0, 0, 0, 0, 0]
    with pytest.raises(IndexError, match="does not support"):
        fm[..., 0]
    with pytest.raises(IndexError, match="out of range"):
        fm[0, 0, 5]


def test_factored_products_scalars_and_broadcasting():
    fm = _fm(2)
    v = torch.randn(4)
    torch.testing.assert_close(fm @ v, fm.AB @ v, atol=1e-5, rtol=1e-5)  # a vector gives a tensor
    w = torch.randn(5)
    torch.testing.assert_close(w @ fm, w @ fm.AB, atol=1e-5, rtol=1e-5)
    M = torch.randn(4, 6)
    product = fm @ M
    assert isinstance(product, FactoredMatrix) and product.mdim == 3
    torch.testing.assert_close(product.AB, fm.AB @ M, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close((fm @ fm.T).AB, fm.AB @ fm.AB.mT, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close((2.5 * fm).AB, 2.5 * fm.AB)
    torch.testing.assert_close((fm * torch.tensor([2.0])).AB, 2 * fm.AB)
    with pytest.raises(ValueError, match="scalar"):
        fm * torch.ones(2)
    with pytest.raises(ValueError, match="does not match rdim"):
        fm @ torch.randn(5, 6)
    with pytest.raises(ValueError, match="inner dimensions"):
        FactoredMatrix(torch.randn(3, 4), torch.randn(5, 6))
    with pytest.raises(RuntimeError, match="Shape mismatch"):
        FactoredMatrix(torch.randn(9, 5, 3), torch.randn(2, 4, 3, 7))
    leading = FactoredMatrix(torch.randn(5, 3), torch.randn(7, 3, 4))  # A broadcasts over B's leading dim
    assert leading.shape == (7, 5, 4) and leading.A.shape == (7, 5, 3)
    with pytest.raises(ValueError, match="square"):
        fm.eigenvalues
    square = _fm(l=4)
    torch.testing.assert_close(square.get_corner(2), square.AB[:2, :2])


def test_lazily_cached_scores_and_fused_scale_equal_the_written_out_path():
    """A cache gets hook_attn_scores as a LazyActivation (recomputed from q and k when read) and
    hook_scale from the fused layer norm: the same values a hook that edits them sees, where
    the model takes its written-out path."""
    from hookgpt.hooks import LazyActivation

    torch.manual_seed(1)
    model = HookedGPT(CFG).eval()
    tokens = torch.randint(0, 200, (2, 10))
    logits, cache = model.run_with_cache(tokens)

    assert isinstance(cache.cache_dict["blocks.0.attn.hook_attn_scores"], LazyActivation)
    edited = {}

    def keep(act, hook):  # an editing hook (not observe-only): the model computes everything in line
        edited[hook.name] = act.clone()
        return act

    names = [get_act_name(n, layer) for layer in range(CFG.n_layers) for n in ("attn_scores", "pattern")]
    names += [get_act_name("scale", layer, ln) for layer in range(CFG.n_layers) for ln in ("ln1", "ln2")] + ["ln_final.hook_scale"]
    edited_logits = model.run_with_hooks(tokens, fwd_hooks=[(name, keep) for name in names])
    torch.testing.assert_close(edited_logits, logits, rtol=0, atol=1e-5)
    for name in names:
        torch.testing.assert_close(cache[name], edited[name], rtol=1e-5, atol=1e-6, msg=name)
    for layer in range(CFG.n_layers):  # the recomputed scores are the ones the pattern came from, bit for bit
        assert torch.equal(cache["attn_scores", layer].softmax(dim=-1), cache["pattern", layer])


def test_lazy_pattern_ignores_later_edits_of_the_cached_q_and_k():
    """The lazily computed pattern, scores and head results come from copies: editing the cached
    q, k or z in place afterwards does not change them."""
    torch.manual_seed(2)
    model = HookedGPT(CFG).eval()
    tokens = torch.randint(0, 200, (2, 10))
    _, reference = model.run_with_cache(tokens)
    expected = {name: reference[name].clone() for name in ("blocks.1.attn.hook_pattern", "blocks.1.attn.hook_attn_scores", "blocks.1.attn.hook_result")}
    _, cache = model.run_with_cache(tokens)
    for name in ("q", "k", "z"):
        cache[name, 1].zero_()
    for name, value in expected.items():
        assert torch.equal(cache[name], value), name
