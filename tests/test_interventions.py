"""The interventions layer: sites, operations, persistent interventions, and the batched engine.

The engine's fast path must equal the naive loop of `run_with_hooks` for any intervention sets,
also with arbitrary hooks already attached to the model; hypothesis searches for a counterexample.
"""

import warnings

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from hookgpt import GPTConfig, HookedGPT
from hookgpt import interventions as iv
from hookgpt.interventions import Site
from helpers import no_hooks, perturbed_model

CFG = dict(n_layers=3, d_model=32, n_heads=4, d_vocab=97, n_ctx=16)


@pytest.fixture(scope="module")
def model():
    return perturbed_model(scale=0.1, **CFG)


@pytest.fixture(scope="module")
def prompts():
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 97, (2, 9), generator=g)
    corrupted = clean.clone()
    corrupted[:, 3] = torch.randint(0, 97, (2,), generator=g)
    return clean, corrupted


def last_logit(logits):
    return logits[:, -1, 7].mean() - logits[:, -1, 3].mean()


# ---------------------------------------------------------------- sites


def test_sites_name_hooks_and_indices():
    assert Site.head(2, 1).hook_name == "blocks.2.attn.hook_z" and Site.head(2, 1).index == (slice(None), 1)
    assert Site.head(0, 3, pos=5, act="v").index == (5, 3) and Site.head(0, 3, pos=5).label == "L0H3 @ pos 5"
    assert Site.resid("mid", 1, pos=2).hook_name == "blocks.1.hook_resid_mid"
    assert Site.resid("pre", 1, pos=2).label == "resid_pre 1 @ pos 2"
    assert Site.neuron(1, 30).hook_name == "blocks.1.mlp.hook_post" and Site.neuron(1, 30).label == "L1N30"
    pattern = Site.pattern(2, 1, query=4)
    assert pattern.hook_name == "blocks.2.attn.hook_pattern" and pattern.index == (1, 4) and pattern.pos == 4
    assert Site.mlp_out(0).label == "mlp0" and Site.attn_out(1).first_position == 0


def test_sites_out_of_range_are_errors_never_wrapped(model):
    with pytest.raises(ValueError, match="layer=3 is out of range; this model has n_layers=3"):
        Site.head(3, 0).check(model)
    with pytest.raises(ValueError, match="head=4 is out of range"):
        Site.head(0, 4).check(model)
    with pytest.raises(ValueError, match="neuron=128 is out of range; this model has d_mlp=128"):
        Site.neuron(0, 128).check(model)
    with pytest.raises(ValueError, match="position 9 is out of range for inputs of 9 tokens"):
        Site.resid("pre", 0, pos=9).check(model, seq_len=9)
    with pytest.raises(ValueError, match="layer=-1 must be >= 0"):
        Site.head(-1, 0)
    with pytest.raises(TypeError, match="head"):  # (under the test-time type checker, its own message)
        Site.head(0, 1.0)
    with pytest.raises(KeyError, match="did you mean"):
        Site.at("blocks.0.hook_resid_pree").check(model)
    with pytest.raises(ValueError, match="kind must be"):
        Site.resid("middle", 0)


# ---------------------------------------------------------------- known answers


def test_zero_ablating_a_head_equals_editing_hook_z_by_hand(model, prompts):
    tokens, _ = prompts

    def by_hand(z, hook):
        z = z.clone()
        z[:, :, 2] = 0
        return z

    expected = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_z", by_hand)])
    with model.interventions(iv.zero(Site.head(1, 2))):
        got = model(tokens)
    torch.testing.assert_close(got, expected)
    values, _ = iv.evaluate(model, tokens, [[iv.zero(Site.head(1, 2))]], last_logit)
    torch.testing.assert_close(values[0], last_logit(expected[:, -1:]), atol=1e-5, rtol=0)
    assert no_hooks(model)


def test_patching_every_clean_site_recovers_the_clean_metric(model, prompts):
    clean, corrupted = prompts
    _, cache = model.run_with_cache(clean)
    clean_metric = float(last_logit(model(clean).detach()))
    # every position of resid_pre 0 together: the whole clean run comes back
    whole = [iv.patch(Site.resid("pre", 0, pos=p), cache) for p in range(clean.shape[1])]
    # or the last residual stream alone
    last = [iv.patch(Site.resid("post", 2), cache)]
    values, corrupted_metric = iv.evaluate(model, corrupted, [whole, last], last_logit)
    torch.testing.assert_close(values, torch.tensor([clean_metric, clean_metric]), atol=1e-5, rtol=0)
    assert abs(corrupted_metric - clean_metric) > 1e-3


def test_an_ablation_and_a_patch_in_one_set_equal_the_two_hooks_by_hand(model, prompts):
    clean, corrupted = prompts
    _, cache = model.run_with_cache(clean)

    def zero_head(z, hook):
        z = z.clone()
        z[:, :, 0] = 0
        return z

    def patch_pos(resid, hook):
        resid = resid.clone()
        resid[:, 5] = cache["blocks.2.hook_resid_pre"][:, 5]
        return resid

    expected = model.run_with_hooks(
        corrupted, fwd_hooks=[("blocks.0.attn.hook_z", zero_head), ("blocks.2.hook_resid_pre", patch_pos)]
    )
    both = [iv.zero(Site.head(0, 0)), iv.patch(Site.resid("pre", 2, pos=5), cache)]
    for method in ("fast", "naive"):
        values, _ = iv.evaluate(model, corrupted, [both], last_logit, method=method)
        torch.testing.assert_close(values[0], last_logit(expected[:, -1:]), atol=1e-5, rtol=0)


def test_steering_with_an_unembedding_direction_raises_that_logit_by_the_dot_product():
    # no LayerNorm effect on the direction: ln_final is the identity on vectors of mean 0 and
    # fixed scale only approximately, so steer after it, at ln_final.hook_normalized
    model = perturbed_model(scale=0.1, **CFG)
    tokens = torch.randint(0, 97, (2, 6), generator=torch.Generator().manual_seed(3))
    token = 11
    direction = model.W_U[:, token].detach()
    plain = model(tokens)
    with model.interventions(iv.add(Site.at("ln_final.hook_normalized"), direction, scale=2.0)):
        steered = model(tokens)
    expected_shift = 2.0 * direction @ model.W_U  # [d_vocab]
    torch.testing.assert_close(steered - plain, expected_shift.expand_as(plain), atol=1e-4, rtol=1e-4)
    assert float(expected_shift[token]) == pytest.approx(2.0 * float(direction @ direction), rel=1e-5)
    assert no_hooks(model)


def test_steering_holds_through_generate_and_is_gone_afterwards(model):
    prompt = torch.tensor([[5, 6, 7, 8]])
    plain = model.generate(prompt, max_new_tokens=6, do_sample=False)
    direction = model.W_U[:, 42].detach() * 20
    with model.interventions(iv.add(Site.resid("post", 2), direction)):
        steered = model.generate(prompt, max_new_tokens=6, do_sample=False)
        # with and without the KV cache: the same steered continuation
        uncached = model.generate(prompt, max_new_tokens=6, do_sample=False, use_kv_cache=False)
    assert (steered[0, 4:] == 42).all() and not (plain[0, 4:] == 42).all()
    assert torch.equal(steered, uncached)
    assert no_hooks(model)
    torch.testing.assert_close(model.generate(prompt, max_new_tokens=6, do_sample=False), plain)


def test_a_positional_intervention_during_generation_applies_once_at_its_position(model):
    prompt = torch.tensor([[5, 6, 7]])
    site = Site.resid("post", 2, pos=4)  # a position that generation reaches at its second step
    with model.interventions(iv.add(site, model.W_U[:, 42].detach() * 50)):
        cached = model.generate(prompt, max_new_tokens=4, do_sample=False)
        uncached = model.generate(prompt, max_new_tokens=4, do_sample=False, use_kv_cache=False)
    assert cached[0, 5] == 42 and torch.equal(cached, uncached)


def test_mean_and_resample_take_their_values_from_the_reference(model, prompts):
    tokens, reference = prompts
    _, ref_cache = model.run_with_cache(reference)
    name = "blocks.1.mlp.hook_post"
    seen = {}

    def grab(act, hook):
        seen["post"] = act.clone()

    with model.interventions(iv.mean(Site.neuron(1, 4), reference)):
        model.run_with_hooks(tokens, fwd_hooks=[(name, grab)])  # runs after the intervention's hook
    torch.testing.assert_close(seen["post"][:, :, 4], ref_cache[name][:, :, 4].mean(0).expand(2, -1))
    with model.interventions(iv.resample(Site.neuron(1, 4), reference, seed=5)):
        model.run_with_hooks(tokens, fwd_hooks=[(name, grab)])
        first = seen["post"].clone()
        model.run_with_hooks(tokens, fwd_hooks=[(name, grab)])
    torch.testing.assert_close(first, seen["post"])  # seeded: the same picks every forward
    picks = torch.randint(2, (2,), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(first[:, :, 4], ref_cache[name][picks, :, 4])
    with pytest.raises(ValueError, match="the reference has 4 positions and the input 9"):
        iv.evaluate(model, tokens, [[iv.mean(Site.head(0, 0), reference[:, :4])]], last_logit)


def test_bad_interventions_are_clear_errors_and_leave_no_hooks(model, prompts):
    tokens, _ = prompts
    with pytest.raises(ValueError, match=r"does not fit the site's part"):
        with model.interventions(iv.replace(Site.resid("pre", 0), torch.zeros(5))):
            model(tokens)
    with pytest.raises(ValueError, match="position 12 is out of range for inputs of 9 tokens"):
        with model.interventions(iv.zero(Site.resid("pre", 0, pos=12))):
            model(tokens)
    with pytest.raises(ValueError, match="scale must be a finite number"):
        iv.add(Site.resid("pre", 0), torch.ones(32), scale=float("nan"))
    with pytest.raises(TypeError, match="sets\\[0\\] is one Intervention"):
        iv.evaluate(model, tokens, [iv.zero(Site.head(0, 0))], last_logit)
    with pytest.raises(RuntimeError, match="inside"):
        with model.interventions(iv.zero(Site.head(0, 0))):
            raise RuntimeError("inside")
    with pytest.raises(KeyError, match="holds no activation"):
        iv.evaluate(model, tokens, [[iv.patch(Site.head(0, 0), {})]], last_logit)
    assert no_hooks(model)


def test_observe_only_hooks_keep_the_fast_paths_and_cannot_edit(model, prompts):
    tokens, _ = prompts
    hp = model.blocks[0].ln1.hook_scale
    handle = hp.add_hook(lambda x, hook: None, observe_only=True)
    assert hp.only_observed
    handle.remove()
    with pytest.raises(TypeError, match="observe-only but returned a value"):
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_pre", iv.observe(lambda x, hook: x * 2))])
    seen = []
    model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_result", iv.observe(lambda x, hook: seen.append(x)))])
    assert isinstance(seen[0], torch.Tensor) and seen[0].shape == (2, 9, 4, 32)  # a tensor, not a lazy value
    assert no_hooks(model)


# ---------------------------------------------------------------- fast == naive, with any hooks attached


def _random_site(draw, cfg, seq_len):
    kind = draw(st.sampled_from(["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "head", "neuron", "pattern", "embed"]))
    layer = draw(st.integers(0, cfg.n_layers - 1))
    pos = draw(st.one_of(st.none(), st.integers(0, seq_len - 1)))
    if kind.startswith("resid"):
        return Site.resid(kind[6:], layer, pos=pos)
    if kind == "attn_out":
        return Site.attn_out(layer, pos)
    if kind == "mlp_out":
        return Site.mlp_out(layer, pos)
    if kind == "head":
        return Site.head(layer, draw(st.integers(0, cfg.n_heads - 1)), pos, act=draw(st.sampled_from(["z", "q", "k", "v", "result"])))
    if kind == "neuron":
        return Site.neuron(layer, draw(st.integers(0, cfg.d_mlp - 1)), pos, act=draw(st.sampled_from(["pre", "post"])))
    if kind == "pattern":
        return Site.pattern(layer, draw(st.integers(0, cfg.n_heads - 1)), query=pos)
    return Site.embed(pos)


@st.composite
def scenario(draw):
    n_layers = draw(st.integers(1, 3))
    n_heads = draw(st.sampled_from([1, 2, 4]))
    cfg = GPTConfig(n_layers=n_layers, d_model=8 * n_heads, n_heads=n_heads, d_vocab=31, n_ctx=12, act_fn=draw(st.sampled_from(["gelu_new", "relu"])))
    batch, seq_len = draw(st.integers(1, 2)), draw(st.integers(2, 7))
    sets = []
    for _ in range(draw(st.integers(1, 6))):
        ops = []
        for _ in range(draw(st.integers(0, 3))):
            s = _random_site(draw, cfg, seq_len)
            op = draw(st.sampled_from(["patch", "zero", "mean", "resample", "add", "scale", "apply"]))
            ops.append((s, op))
        sets.append(ops)
    hooks = []
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["add", "edit_position", "observe", "in_place"]))
        layer = draw(st.integers(0, n_layers - 1))
        name = draw(st.sampled_from([f"blocks.{layer}.hook_resid_pre", f"blocks.{layer}.attn.hook_v", f"blocks.{layer}.hook_mlp_out", f"blocks.{layer}.attn.hook_pattern", "ln_final.hook_normalized"]))
        hooks.append((kind, name, draw(st.integers(0, seq_len - 1))))
    read = draw(st.sampled_from([-1, None, [0, -1]]))
    return cfg, batch, seq_len, sets, hooks, read, draw(st.integers(0, 2**16))


def _user_hook(kind, position):
    if kind == "add":
        return lambda x, hook: x + 0.25
    if kind == "edit_position":  # edits one position: a different activation shape would break it
        def edit(x, hook):
            x = x.clone()
            if hook.name.endswith("hook_pattern"):
                x[:, :, position] = x[:, :, position] * 0.5
            else:
                x[:, position] = x[:, position] * 0.5 + 0.1
            return x
        return edit
    if kind == "in_place":
        def in_place(x, hook):
            x.mul_(1.1)
        return in_place
    return iv.observe(lambda x, hook: None)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow], phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(scenario())
def test_fast_engine_equals_naive_loop_with_any_hooks_attached(data):
    cfg, batch, seq_len, raw_sets, hooks, read, seed = data
    torch.manual_seed(seed)
    model = HookedGPT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, cfg.d_vocab, (batch, seq_len), generator=g)
    other = torch.randint(0, cfg.d_vocab, (3, seq_len), generator=g)
    _, source = model.run_with_cache(other[:batch])
    def build(s, op):
        if op == "patch":
            return iv.patch(s, source)
        if op == "mean":
            return iv.mean(s, other)
        if op == "resample":
            return iv.resample(s, other, seed=1)
        if op == "add":  # a vector over the last axis of the site's part (a number where it has none)
            part = source[s.hook_name][(slice(None),) + s.index]
            vector = torch.randn(part.shape[-1], generator=g) if part.ndim > 1 else torch.tensor(0.3)
            return iv.add(s, vector, scale=0.5)
        if op == "scale":
            return iv.scale(s, 0.3)
        if op == "zero":
            return iv.zero(s)
        return iv.apply(s, lambda x: x.flip(0) * 0.5)

    sets = [[build(s, op) for s, op in ops] for ops in raw_sets]
    handles = [h for kind, name, pos in hooks for h in model.add_hook(name, _user_hook(kind, pos))]
    metric = lambda logits: logits[..., :5].sum() * 0.1 + logits[:, -1, 2].mean()  # noqa: E731
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a non-causal hook may make the engine fall back: still equal
            fast, base_fast = iv.evaluate(model, tokens, sets, metric, read_positions=read, batch_size=draw_rows(batch))
        naive, base_naive = iv.evaluate(model, tokens, sets, metric, read_positions=read, method="naive")
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(fast, naive, atol=1e-5, rtol=1e-5)
    assert base_fast == pytest.approx(base_naive, abs=1e-5)
    assert no_hooks(model)


def draw_rows(batch):
    return 3 * batch  # several sets per forward, and several forwards


def test_the_fast_engine_is_exact_with_a_steering_hook_where_the_old_one_was_not(model, prompts):
    # the example: a steering hook on resid_pre of layer 1, a residual patching sweep
    clean, corrupted = prompts
    _, cache = model.run_with_cache(clean)
    vec = torch.randn(32, generator=torch.Generator().manual_seed(0))
    handle = model.blocks[1].hook_resid_pre.add_hook(lambda x, hook: x + vec)
    edit_one = model.blocks[2].hook_resid_pre.add_hook(lambda x, hook: torch.cat([x[:, :6], x[:, 6:7] * 2, x[:, 7:]], dim=1))
    sets = [[iv.patch(Site.resid("pre", layer, pos=p), cache)] for layer in range(3) for p in range(9)]
    try:
        fast, _ = iv.evaluate(model, corrupted, sets, last_logit)
        naive, _ = iv.evaluate(model, corrupted, sets, last_logit, method="naive")
    finally:
        handle.remove()
        edit_one.remove()
    torch.testing.assert_close(fast, naive, atol=1e-5, rtol=0)


def test_a_non_causal_user_hook_makes_the_engine_fall_back_and_say_so(model, prompts):
    clean, corrupted = prompts
    _, cache = model.run_with_cache(clean)
    handle = model.blocks[2].hook_resid_mid.add_hook(lambda x, hook: x - x.mean(dim=1, keepdim=True))
    sets = [[iv.patch(Site.resid("pre", 1, pos=p), cache)] for p in range(9)]
    try:
        with pytest.warns(UserWarning, match="blocks.2.hook_resid_mid changes positions before"):
            fast, _ = iv.evaluate(model, corrupted, sets, last_logit)
        naive, _ = iv.evaluate(model, corrupted, sets, last_logit, method="naive")
    finally:
        handle.remove()
    torch.testing.assert_close(fast, naive, atol=1e-6, rtol=0)


class _TinyAutoencoder(torch.nn.Module):
    """An SAE-shaped module: `cfg.hook_name`, `forward(x, use_error_term)`."""

    def __init__(self, hook_name, d_model, d_sae=48, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.cfg = type("Cfg", (), {"hook_name": hook_name})()
        self.W_enc = torch.nn.Parameter(torch.randn(d_model, d_sae, generator=g) * 0.3)
        self.W_dec = torch.nn.Parameter(torch.randn(d_sae, d_model, generator=g) * 0.3)

    def forward(self, x, use_error_term=False):
        recons = torch.relu(x @ self.W_enc) @ self.W_dec
        return recons + (x - recons).detach() if use_error_term else recons


def test_saes_splice_through_the_engine_exactly(model, prompts):
    clean, corrupted = prompts
    sae = _TinyAutoencoder("blocks.1.hook_resid_pre", 32)
    plain = model(corrupted)
    with model.saes(sae, use_error_term=True):
        torch.testing.assert_close(model(corrupted), plain, atol=1e-5, rtol=0)  # the error term keeps it exact
    _, cache = model.run_with_cache(clean)
    sets = [[iv.patch(Site.resid("pre", layer, pos=p), cache)] for layer in range(3) for p in range(9)]
    with model.saes(sae):  # the reconstruction alone changes the model; the engine stays exact
        spliced = model(corrupted)
        fast, _ = iv.evaluate(model, corrupted, sets, last_logit)
        naive, _ = iv.evaluate(model, corrupted, sets, last_logit, method="naive")
    assert (spliced - plain).abs().max() > 1e-2
    torch.testing.assert_close(fast, naive, atol=1e-5, rtol=0)
    assert no_hooks(model)
    with pytest.raises(ValueError, match="two SAEs read the same hook"):
        with model.saes(sae, sae):
            pass
    with pytest.raises(ValueError, match="no cfg.hook_name"):
        iv.splice(torch.nn.Identity())


def test_replace_with_a_value_per_prompt_runs_in_the_fast_engine(model):
    """`replace` with a value that has the batch dimension ([batch, d_head] for one head at one
    position): the fast engine gives the naive loop's metric (it used to fail checking whether
    the set changes anything)."""
    tokens = torch.randint(0, model.cfg.d_vocab, (3, 7), generator=torch.Generator().manual_seed(0))
    value = torch.randn(3, model.cfg.d_head, generator=torch.Generator().manual_seed(1))
    sets = [[iv.replace(Site.head(1, 2, pos=4), value)], [iv.replace(Site.head(0, 1, pos=0), value * 2)]]

    def metric(logits):
        return logits[..., 5].mean()

    fast, base_fast = iv.evaluate(model, tokens, sets, metric, disable=True)
    naive, base_naive = iv.evaluate(model, tokens, sets, metric, method="naive", disable=True)
    torch.testing.assert_close(fast, naive, rtol=1e-5, atol=1e-5)
    assert (fast - base_fast).abs().min() > 1e-6  # the edits do something
    assert no_hooks(model)


def test_a_spliced_sae_s_features_cache_and_take_interventions():
    from analyses.sae import SAE

    model = HookedGPT.from_pretrained("hookgpt-shakespeare")
    sae = SAE.from_pretrained("hookgpt-shakespeare-resid-pre-1")
    tokens = model.to_tokens("ROMEO:\nBut, soft! what light through yonder window breaks?")
    name = "blocks.1.hook_resid_pre.hook_sae_acts_post"
    with model.saes(sae, use_error_term=True):
        _, cache = model.run_with_cache(tokens)
        acts = cache[name]  # [batch, pos, d_sae]
        feature = int(acts[0, -1].argmax())
        site = Site.at(name, None, feature)
        with model.interventions(iv.zero(site)):
            ablated = model(tokens)
        with pytest.warns(UserWarning, match="inside a spliced module"):
            (value,), base = iv.evaluate(model, tokens, [[iv.zero(site)]], lambda logits: logits[:, -1].logsumexp(-1).mean())
    assert acts.shape == (1, tokens.shape[1], sae.cfg.d_sae) and float(acts[0, -1, feature]) > 0
    # zeroing the feature removes exactly its decoder direction from the residual stream
    seen = {}

    def grab(x, hook):
        seen["x"] = x.clone()

    with model.saes(sae, use_error_term=True), model.hooks(fwd_hooks=[("blocks.1.hook_resid_pre", iv.observe(grab))]):
        with model.interventions(iv.zero(site)):
            model(tokens)
    torch.testing.assert_close(seen["x"][0, -1], cache["blocks.1.hook_resid_pre"][0, -1] - acts[0, -1, feature] * sae.W_dec[feature], atol=1e-4, rtol=0)
    assert float(value) == pytest.approx(float(ablated[:, -1].logsumexp(-1).mean().detach()), abs=1e-4) and value != base
    assert name not in model.hook_dict and sae.hook_sae_acts_post.name == "hook_sae_acts_post" and no_hooks(model)
