"""Splicing an SAE into the model, editing its features, attributing a metric to them, evaluating it."""

import pytest
import torch
from helpers import no_hooks, perturbed_model

from analyses.sae import SAE, SAEConfig, ablate_features, clamp_features, evaluate_sae, feature_attribution, splice, steer_features
from analyses.sae.interventions import steering_hook

HOOK = "blocks.1.hook_resid_pre"


@pytest.fixture(scope="module")
def model():
    return perturbed_model()


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 1000, (3, 12), generator=torch.Generator().manual_seed(0))


def _sae(hook=HOOK, architecture="topk", seed=0):
    sae = SAE(SAEConfig(d_in=64, d_sae=128, architecture=architecture, k=8 if architecture == "topk" else None, hook_name=hook), seed=seed)
    with torch.no_grad():
        sae.b_enc.fill_(0.05)
    return sae


def _identity_sae(hook=HOOK):
    """A standard SAE that reconstructs exactly: features relu(x) and relu(-x), decoder [I; -I]."""
    sae = SAE(SAEConfig(d_in=64, d_sae=128, hook_name=hook))
    eye = torch.eye(64)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_splice_with_error_term_keeps_the_logits(model, tokens):
    sae = _sae()
    clean = model(tokens)
    with splice(model, sae, use_error_term=True):
        spliced = model(tokens)
    assert (spliced - clean).abs().max() <= 1e-5
    with splice(model, sae):
        without_error = model(tokens)
    assert (without_error - clean).abs().max() > 1e-2  # a random SAE reconstructs badly
    assert no_hooks(model)


def test_splice_replaces_the_hook_by_the_reconstruction(model, tokens):
    sae = _sae()
    _, cache = model.run_with_cache(tokens, names_filter=[HOOK])
    recons = sae(cache[HOOK])
    manual = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, lambda act, hook: recons)])
    with splice(model, sae):
        spliced, spliced_cache = model.run_with_cache(tokens, names_filter=lambda n: n == HOOK)
    torch.testing.assert_close(spliced, manual)
    torch.testing.assert_close(spliced_cache[HOOK], recons)  # later hooks see the reconstruction


def test_splice_is_removed_when_the_body_raises(model, tokens):
    with pytest.raises(RuntimeError, match="boom"):
        with splice(model, _sae(), _sae("blocks.0.hook_mlp_out")):
            raise RuntimeError("boom")
    assert no_hooks(model)


def test_splice_checks_its_arguments(model):
    with pytest.raises(KeyError, match="hook_resid_pre"):
        with splice(model, _sae("blocks.1.hook_resid_pr")):
            pass
    with pytest.raises(ValueError, match="same hook"):
        with splice(model, _sae(), _sae()):
            pass
    with pytest.raises(ValueError, match="at least one"):
        with splice(model):
            pass


def test_splice_holds_through_generate(model):
    sae = _sae()
    calls = []
    sae.add_hook("hook_sae_acts_post", lambda acts, hook: calls.append(acts.shape[1]))
    prompt = torch.randint(0, 1000, (1, 4), generator=torch.Generator().manual_seed(1))
    with splice(model, sae):
        model.generate(prompt, max_new_tokens=3, do_sample=False)
    sae.reset_hooks()
    assert calls[0] == 4 and len(calls) >= 3  # the prompt, then each new token
    assert no_hooks(model)


def test_ablating_a_feature_with_the_error_term_removes_exactly_its_contribution(model, tokens):
    sae = _sae()
    _, cache = model.run_with_cache(tokens, names_filter=[HOOK])
    x = cache[HOOK]
    acts = sae.encode(x)
    feature = int((acts > 0).sum(dim=(0, 1)).argmax())
    expected = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, lambda act, hook: act - acts[..., feature, None] * sae.W_dec[feature])])
    with splice(model, sae, use_error_term=True), ablate_features(sae, feature):
        ablated = model(tokens)
    torch.testing.assert_close(ablated, expected, atol=1e-5, rtol=0)
    assert no_hooks(sae)


def test_clamp_at_positions_and_steer(model, tokens):
    sae = _sae()
    _, cache = model.run_with_cache(tokens, names_filter=[HOOK])
    x = cache[HOOK]
    acts = sae.encode(x)
    clamped = acts.clone()
    clamped[:, 2, 5] = 3.0
    expected = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, lambda act, hook: act + (clamped - acts) @ sae.W_dec)])
    with splice(model, sae, use_error_term=True), clamp_features(sae, 5, 3.0, positions=[2]):
        got = model(tokens)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    direction = 2.0 * sae.W_dec[7]
    steered_expected = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, lambda act, hook: act + direction)])
    with splice(model, sae, use_error_term=True), steer_features(sae, 7, 2.0):
        steered = model(tokens)
    torch.testing.assert_close(steered, steered_expected, atol=1e-5, rtol=0)
    name, fn = steering_hook(sae, 7, 2.0)
    torch.testing.assert_close(model.run_with_hooks(tokens, fwd_hooks=[(name, fn)]), steered_expected, atol=1e-6, rtol=0)
    with pytest.raises(IndexError, match="d_sae=128"):
        ablate_features(sae, 128)


def test_feature_attribution_known_answer(model, tokens):
    # On ln_final.hook_normalized the logits are linear in the SAE's output: logits = out @ W_U + b_U,
    # so d logit[t] / d act_f = W_dec[f] . W_U[:, t] exactly, and attribution = act_f * that.
    sae = _sae("ln_final.hook_normalized")
    target = 17
    result = feature_attribution(model, sae, tokens, lambda logits: logits[:, -1, target].sum())
    _, cache = model.run_with_cache(tokens, names_filter=["ln_final.hook_normalized"])
    acts = sae.encode(cache["ln_final.hook_normalized"])
    expected = torch.zeros_like(acts)
    expected[:, -1] = acts[:, -1] * (sae.W_dec @ model.W_U[:, target])
    torch.testing.assert_close(result.values, expected, atol=1e-5, rtol=1e-4)
    assert result.metric_value == pytest.approx(float(model(tokens)[:, -1, target].sum().detach()), abs=1e-4)
    assert all(p.grad is None for p in model.parameters())
    assert list(result.to_df(3)["feature"]) == result.top(3)
    assert no_hooks(model) and no_hooks(sae)


def test_evaluate_an_exact_sae(model, tokens):
    ev = evaluate_sae(model, _identity_sae(), tokens, batch_size=2, disable=True)
    assert ev.explained_variance == pytest.approx(1.0, abs=1e-6)
    assert ev.mse == pytest.approx(0.0, abs=1e-8)
    assert ev.ce_loss_with_sae == pytest.approx(ev.ce_loss_clean, abs=1e-5)
    assert ev.ce_loss_recovered == pytest.approx(1.0, abs=1e-4)
    assert ev.l0 == pytest.approx(64.0, abs=0.5)  # one of relu(x), relu(-x) per coordinate
    assert ev.n_tokens == 36


def test_evaluate_against_manual_numbers(model, tokens):
    sae = _sae()
    ev = evaluate_sae(model, sae, tokens, batch_size=2, disable=True)
    _, cache = model.run_with_cache(tokens, names_filter=[HOOK])
    x = cache[HOOK].reshape(-1, 64)
    acts = sae.encode(x).detach()
    recons = sae.decode(acts).detach()
    assert ev.l0 == pytest.approx(float((acts > 0).sum(-1).float().mean()), rel=1e-6)
    assert ev.mse == pytest.approx(float((recons - x).pow(2).sum(-1).mean()), rel=1e-5)
    assert ev.explained_variance == pytest.approx(1 - float((recons - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()), rel=1e-5)
    assert ev.ce_loss_with_sae_and_error == pytest.approx(ev.ce_loss_clean, abs=1e-5)
    zero = float(model.run_with_hooks(tokens, fwd_hooks=[(HOOK, lambda a, hook: torch.zeros_like(a))], return_type="loss").detach())
    assert ev.ce_loss_zero_ablation == pytest.approx(zero, abs=1e-5)
    with splice(model, sae):
        spliced = float(model(tokens, return_type="loss").detach())
    assert ev.ce_loss_recovered == pytest.approx((zero - spliced) / (zero - ev.ce_loss_clean), rel=1e-4)
    density = (acts > 0).float().mean(0)
    assert ev.dead_fraction == pytest.approx(float((density == 0).float().mean()))
    assert set(ev.to_df()["metric"]) >= {"l0", "explained_variance", "ce_loss_recovered"}
    assert no_hooks(model)
