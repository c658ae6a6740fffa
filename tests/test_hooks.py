"""Hooks: names, adding/removing, editing activations, caching, backward hooks, never leaking."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hookgpt import GPTConfig, HookedGPT, HookShapeError

CFG = GPTConfig(n_layers=2, d_model=64, n_heads=4, d_vocab=300, n_ctx=32)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return HookedGPT(CFG).eval()


@pytest.fixture
def tokens():
    return torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(1))


def no_hooks_attached(model):
    return all(not hp.has_hooks for hp in model.hook_dict.values())


EXPECTED_BLOCK_HOOKS = [
    "hook_resid_pre", "ln1.hook_scale", "ln1.hook_normalized", "attn.hook_q", "attn.hook_k", "attn.hook_v",
    "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z", "attn.hook_result", "hook_attn_out", "hook_resid_mid",
    "ln2.hook_scale", "ln2.hook_normalized", "mlp.hook_pre", "mlp.hook_post", "hook_mlp_out", "hook_resid_post",
    "hook_attn_in", "hook_q_input", "hook_k_input", "hook_v_input", "hook_mlp_in",
]


def test_hook_names_are_transformerlens_names(model):
    expected = {"hook_embed", "hook_pos_embed", "ln_final.hook_scale", "ln_final.hook_normalized"}
    expected |= {f"blocks.{l}.{name}" for l in range(2) for name in EXPECTED_BLOCK_HOOKS}
    assert set(model.hook_dict) == expected
    assert all(hp.name == name for name, hp in model.hook_dict.items())


def test_every_hook_fires_with_documented_shape(model, tokens):
    _, cache = model.run_with_cache(tokens)
    assert set(cache.keys()) == set(model.hook_dict)
    b, p, h, d, m = 2, 12, 4, 16, 64
    assert cache["q", 0].shape == cache["z", 1].shape == (b, p, h, d)
    assert cache["pattern", 0].shape == cache["attn_scores", 1].shape == (b, h, p, p)
    assert cache["result", 0].shape == (b, p, h, m)
    assert cache["pre", 1].shape == cache["post", 1].shape == (b, p, 256)
    assert cache["scale", 0, "ln2"].shape == (b, p, 1)
    assert cache["blocks.1.hook_k_input"].shape == (b, p, h, m) and cache["blocks.0.hook_mlp_in"].shape == (b, p, m)
    torch.testing.assert_close(cache["blocks.1.hook_k_input"][:, :, 2], cache["resid_pre", 1])  # each head's copy
    # masked scores are -inf above the diagonal, the pattern is a distribution over allowed keys
    assert torch.isinf(cache["attn_scores", 0][0, 0].triu(1)[0, 1:]).all()
    torch.testing.assert_close(cache["pattern", 1].sum(-1), torch.ones(b, h, p))
    assert no_hooks_attached(model)


def test_hook_result_sums_to_attn_out(model, tokens):
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith(("hook_result", "hook_attn_out")))
    for layer in range(2):
        expected = cache["attn_out", layer]
        got = cache["result", layer].sum(-2) + model.blocks[layer].attn.b_O
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_unknown_hook_name_suggests_close_matches(model):
    with pytest.raises(KeyError, match="blocks.0.attn.hook_pattern"):
        model.add_hook("blocks.0.attn.hook_patern", lambda x, hook: None)
    with pytest.raises(KeyError, match="no hook point named"):
        model.run_with_hooks(torch.tensor([1, 2]), fwd_hooks=[("nonsense", lambda x, hook: None)])
    assert no_hooks_attached(model)


def test_wrong_shape_from_hook_is_a_clear_error(model, tokens):
    def bad(x, hook):
        return x[..., :-1]

    with pytest.raises(HookShapeError, match=r"blocks\.1\.hook_resid_pre.*\(2, 12, 63\).*\(2, 12, 64\)"):
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_resid_pre", bad)])
    with pytest.raises(TypeError, match="must return None"):
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_resid_pre", lambda x, hook: 3)])
    assert no_hooks_attached(model)


def test_hooks_removed_when_hook_raises(model, tokens):
    def boom(x, hook):
        raise RuntimeError("inside a hook")

    with pytest.raises(RuntimeError, match="inside a hook"):
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_attn_out", boom), ("hook_embed", lambda x, hook: None)])
    assert no_hooks_attached(model)
    with pytest.raises(RuntimeError):
        with model.hooks(fwd_hooks=[("blocks.1.mlp.hook_post", boom)]):
            model.run_with_cache(tokens)
    assert no_hooks_attached(model)


def test_hooks_removed_when_forward_raises(model):
    bad_tokens = torch.tensor([[1, 2, 999]])  # out of range for d_vocab=300
    with pytest.raises(ValueError, match="token id 999"):
        model.run_with_cache(bad_tokens)
    assert no_hooks_attached(model)
    with pytest.raises(ValueError):
        with model.hooks(fwd_hooks=[("hook_embed", lambda x, hook: None)]):
            model(bad_tokens)
    assert no_hooks_attached(model)


def test_zero_ablating_a_head_changes_logits(model, tokens):
    clean = model(tokens)

    def ablate_head_2(z, hook):
        z = z.clone()
        z[:, :, 2] = 0
        return z

    ablated = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z", ablate_head_2)])
    assert (clean - ablated).abs().max() > 1e-3
    # the ablated head contributes nothing: its per-head result is exactly zero
    seen = {}
    model.run_with_hooks(
        tokens,
        fwd_hooks=[("blocks.0.attn.hook_z", ablate_head_2), ("blocks.0.attn.hook_result", lambda r, hook: seen.setdefault("r", r))],
    )
    assert seen["r"][:, :, 2].abs().max() == 0
    assert no_hooks_attached(model)


def test_patching_clean_cache_reproduces_clean_logits_exactly(model, tokens):
    corrupted = torch.randint(0, 300, tokens.shape, generator=torch.Generator().manual_seed(5))
    clean_logits = model(tokens)

    def patch(act, hook):
        return clean_cache[hook.name]

    for name in ("blocks.1.hook_resid_post", "blocks.1.hook_resid_pre", "blocks.0.hook_resid_pre"):
        # cache only what we patch, so the clean run takes exactly the path of a plain forward
        _, clean_cache = model.run_with_cache(tokens, names_filter=name)
        patched = model.run_with_hooks(corrupted, fwd_hooks=[(name, patch)])
        assert torch.equal(patched, clean_logits), name
    # caching everything takes the explicit paths (same maths, different kernels): equal to float precision
    _, clean_cache = model.run_with_cache(tokens)
    patched = model.run_with_hooks(corrupted, fwd_hooks=[("blocks.1.hook_resid_post", patch)])
    torch.testing.assert_close(patched, clean_logits, atol=1e-5, rtol=0)


def test_hooks_run_in_order_and_prepend(model, tokens):
    order = []
    handles = model.add_hook("hook_embed", lambda x, hook: order.append("a"))
    handles += model.add_hook("hook_embed", lambda x, hook: order.append("b"))
    handles += model.add_hook("hook_embed", lambda x, hook: order.append("first"), prepend=True)
    model(tokens)
    assert order == ["first", "a", "b"]
    handles[0].remove()
    handles[0].remove()  # idempotent
    order.clear()
    model(tokens)
    assert order == ["first", "b"]
    model.reset_hooks()
    assert no_hooks_attached(model)


def test_filter_function_hooks_many_points(model, tokens):
    seen = []
    model.run_with_hooks(tokens, fwd_hooks=[(lambda name: name.endswith("hook_resid_post"), lambda x, hook: seen.append(hook.name))])
    assert seen == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


def test_backward_hooks_receive_gradients(model, tokens):
    grads = {}
    model.zero_grad()
    with model.hooks(bwd_hooks=[("blocks.0.hook_resid_post", lambda g, hook: grads.setdefault(hook.name, g))]):
        loss = model(tokens, return_type="loss")
        loss.backward()
    g = grads["blocks.0.hook_resid_post"]
    assert g.shape == (2, 12, 64) and g.abs().sum() > 0
    # the gradient equals autograd's gradient with respect to that activation
    _, cache = model.run_with_cache(tokens, return_type="loss", incl_bwd=True)
    torch.testing.assert_close(cache["blocks.0.hook_resid_post_grad"], g, atol=1e-6, rtol=0)
    assert no_hooks_attached(model)
    model.zero_grad()


def test_backward_hook_can_edit_gradient(model, tokens):
    model.zero_grad()
    with model.hooks(bwd_hooks=[("hook_embed", lambda g, hook: torch.zeros_like(g))]):
        model(tokens, return_type="loss").backward()
    # embedding gradient flows only through hook_embed, which we zeroed
    assert model.embed.W_E.grad.abs().max() == 0
    assert model.pos_embed.W_pos.grad.abs().max() > 0
    model.zero_grad()


def test_run_with_cache_options(model, tokens):
    _, cache = model.run_with_cache(tokens[:1], names_filter="blocks.0.attn.hook_pattern", remove_batch_dim=True)
    assert list(cache.keys()) == ["blocks.0.attn.hook_pattern"]
    assert cache["pattern", 0].shape == (4, 12, 12)
    _, cache = model.run_with_cache(tokens, names_filter=["hook_embed", "hook_pos_embed"])
    assert len(cache) == 2
    with pytest.raises(KeyError, match="names_filter"):
        cache["resid_pre", 0]


def test_stop_and_start_at_layer_compose(model, tokens):
    full = model(tokens)
    resid = model(tokens, stop_at_layer=1)
    _, cache = model.run_with_cache(tokens)
    torch.testing.assert_close(resid, cache["resid_pre", 1])
    torch.testing.assert_close(model(resid, start_at_layer=1), full)
    loss = model(resid, start_at_layer=1, tokens=tokens, return_type="loss")
    torch.testing.assert_close(loss, model(tokens, return_type="loss"))
    torch.testing.assert_close(model(tokens, stop_at_layer=-1), resid)


def test_input_validation_messages(model):
    with pytest.raises(ValueError, match=r"longer than the model's context n_ctx=32"):
        model(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(TypeError, match="integer tensor"):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="token id -1"):
        model(torch.tensor([[1, -1]]))
    with pytest.raises(ValueError, match="return_type"):
        model(torch.tensor([[1, 2]]), return_type="logprobs")
    with pytest.raises(ValueError, match="stop_at_layer=5"):
        model(torch.tensor([[1, 2]]), stop_at_layer=5)


@settings(max_examples=15, deadline=None)
@given(
    n_layers=st.integers(1, 3),
    n_heads=st.integers(1, 4),
    d_head=st.integers(1, 8),
    attn_only=st.booleans(),
    batch=st.integers(1, 3),
    pos=st.integers(1, 10),
    act=st.sampled_from(["gelu_new", "gelu", "relu"]),
)
def test_any_config_runs_and_caches_consistently(n_layers, n_heads, d_head, attn_only, batch, pos, act):
    cfg = GPTConfig(n_layers=n_layers, d_model=n_heads * d_head, n_heads=n_heads, d_head=d_head, d_mlp=16,
                    d_vocab=50, n_ctx=10, attn_only=attn_only, act_fn=act)
    model = HookedGPT(cfg).eval()
    tokens = torch.randint(0, 50, (batch, pos))
    logits, cache = model.run_with_cache(tokens)
    assert logits.shape == (batch, pos, 50)
    torch.testing.assert_close(logits, model(tokens), atol=1e-5, rtol=0)  # observed (explicit) == fused path
    resid = cache.decompose_resid().sum(0)
    torch.testing.assert_close(resid, cache["resid_post", -1], atol=1e-5, rtol=0)
    assert ("mlp_out", 0) in cache or attn_only
    assert no_hooks_attached(model)


@settings(max_examples=10, deadline=None)
@given(scale=st.floats(-3, 3), layer=st.integers(0, 1))
def test_scaling_hook_edits_are_applied(scale, layer):
    torch.manual_seed(0)
    model = HookedGPT(CFG).eval()
    tokens = torch.randint(0, 300, (1, 6))
    seen = {}
    model.run_with_hooks(
        tokens,
        fwd_hooks=[
            (f"blocks.{layer}.hook_attn_out", lambda x, hook: x * scale),
            (f"blocks.{layer}.hook_resid_mid", lambda x, hook: seen.setdefault("mid", x)),
            (f"blocks.{layer}.hook_resid_pre", lambda x, hook: seen.setdefault("pre", x)),
        ],
    )
    _, cache = model.run_with_cache(tokens, names_filter=f"blocks.{layer}.hook_attn_out", stop_at_layer=layer + 1)
    torch.testing.assert_close(seen["mid"], seen["pre"] + scale * cache["attn_out", layer], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- passive (caching) hooks
# Caching hooks only read, so the model keeps its fast paths for them: F.layer_norm with the
# scale computed on the side, and each head's output (`hook_result`) handed over lazily.


def editing_run(model, tokens, names):
    """The activations at `names` as seen by hooks that *could* edit them (the explicit paths)."""
    seen = {}

    def grab(act, hook):
        seen[hook.name] = act.detach().clone()
        return act  # returning a tensor makes the hook an editing one

    logits = model.run_with_hooks(tokens, fwd_hooks=[(name, grab) for name in names])
    return logits, seen


def test_passive_caching_equals_explicit_paths():
    from helpers import perturbed_model

    model = perturbed_model()  # nonzero LayerNorm biases, so the LN paths differ visibly if wrong
    tokens = torch.randint(0, 1000, (2, 9), generator=torch.Generator().manual_seed(3))
    names = [n for n in model.hook_dict if n.endswith(("hook_scale", "hook_normalized", "hook_result"))]
    logits, explicit = editing_run(model, tokens, names)
    cached_logits, cache = model.run_with_cache(tokens)
    torch.testing.assert_close(cached_logits, logits, atol=1e-5, rtol=0)
    for name in names:
        torch.testing.assert_close(cache[name], explicit[name], atol=1e-5, rtol=1e-5)
    assert no_hooks_attached(model)


def test_hook_result_is_lazy_in_caches_and_computed_once(model, tokens):
    from hookgpt.hooks import LazyActivation

    _, cache = model.run_with_cache(tokens)
    name = "blocks.1.attn.hook_result"
    assert isinstance(cache.cache_dict[name], LazyActivation)  # not computed by the forward pass
    first = cache[name]
    assert isinstance(cache.cache_dict[name], torch.Tensor) and cache[name] is first  # kept once read
    expected = torch.einsum("bphd,hdm->bphm", cache["z", 1], model.blocks[1].attn.W_O.detach())
    torch.testing.assert_close(first, expected, atol=1e-6, rtol=0)
    assert all(isinstance(v, torch.Tensor) for v in cache.values())


def test_lazy_hook_result_keeps_the_weights_of_its_run(tokens):
    torch.manual_seed(0)
    model = HookedGPT(CFG).eval()
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith(("hook_result", "hook_attn_out")))
    with torch.no_grad():
        model.blocks[0].attn.W_O.mul_(3.0)  # edit the weights after the run, before reading
    got = cache["result", 0].sum(-2) + model.blocks[0].attn.b_O
    torch.testing.assert_close(got, cache["attn_out", 0], atol=1e-5, rtol=0)


def test_lazy_hook_result_with_device_batch_dim_and_plain_dicts(model, tokens):
    one = tokens[:1]
    _, cache = model.run_with_cache(one, device="cpu", remove_batch_dim=True)
    assert cache["result", 0].shape == (12, 4, 64)
    _, as_dict = model.run_with_cache(one, return_cache_object=False)
    assert isinstance(as_dict["blocks.0.attn.hook_result"], torch.Tensor)
    torch.testing.assert_close(as_dict["blocks.0.attn.hook_result"][0], cache["result", 0])
    # moving a cache moves its lazy entries too (also those that drop the batch dimension)
    assert cache.to("meta")["result", 1].device.type == "meta"
    _, batched = model.run_with_cache(one)
    assert batched.to("meta")["result", 1].device.type == "meta"
    # the public caching hooks give plain tensors to whoever uses them with run_with_hooks
    store, fwd, _ = model.get_caching_hooks(lambda n: n.endswith("hook_result"))
    model.run_with_hooks(one, fwd_hooks=fwd)
    assert all(isinstance(v, torch.Tensor) for v in store.values()) and len(store) == 2
    assert no_hooks_attached(model)


def test_gradients_of_hook_result_and_scale_are_cached(model, tokens):
    names = lambda n: n.endswith(("hook_result", "ln1.hook_scale"))  # noqa: E731
    _, cache = model.run_with_cache(tokens, names_filter=names, incl_bwd=True, return_type="loss")
    for layer in range(2):
        assert cache[f"blocks.{layer}.attn.hook_result_grad"].shape == cache["result", layer].shape
        assert cache[f"blocks.{layer}.ln1.hook_scale_grad"].abs().sum() > 0
    assert no_hooks_attached(model)


def test_editing_the_layernorm_scale_takes_effect(model, tokens):
    def double(scale, hook):
        return scale * 2

    def double_in_place(scale, hook):
        scale.mul_(2)

    clean = model(tokens)
    edited = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.ln1.hook_scale", double)])
    in_place = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.ln1.hook_scale", double_in_place)])
    assert (edited - clean).abs().max() > 1e-3
    torch.testing.assert_close(in_place, edited)
