"""Ablation: batched zero/mean/resample ablation equals one hooked run per unit."""

import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from analyses.ablation import ablate_heads, ablate_mlps, ablate_neurons, ablate_positions, ablate_units
from hookgpt import HookedGPT
from helpers import no_hooks, perturbed_model


@pytest.fixture(scope="module")
def model():
    return perturbed_model(scale=0.1)


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 1000, (3, 8), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def reference():
    return torch.randint(0, 1000, (5, 8), generator=torch.Generator().manual_seed(2))


def metric(logits):
    return logits[:, -1, 5].mean() - logits[:, -2, 6].mean()


def one_by_one(model, tokens, reference, hook_name, index, method, seed=0):
    """The reference implementation: one run_with_hooks per unit."""
    with torch.no_grad():
        if method != "zero":
            _, cache = model.run_with_cache(reference, names_filter=hook_name)
        if method == "resample":
            picks = torch.randint(reference.shape[0], (tokens.shape[0],), generator=torch.Generator().manual_seed(seed))

        def hook(act, hook):
            act = act.clone()
            where = (slice(None),) + index
            if method == "zero":
                act[where] = 0
            elif method == "mean":
                act[where] = cache[hook_name].mean(0)[index]
            else:
                act[where] = cache[hook_name][picks][where]
            return act

        return float(metric(model.run_with_hooks(tokens, fwd_hooks=[(hook_name, hook)])) - metric(model(tokens)))


@pytest.mark.parametrize("method", ["zero", "mean", "resample"])
def test_head_ablation_equals_one_run_per_head(model, tokens, reference, method):
    result = ablate_heads(model, tokens, metric, method, reference=reference, batch_size=7)  # 2 heads per forward
    assert result.effects.shape == (2, 4)
    for layer in range(2):
        for head in range(4):
            expected = one_by_one(model, tokens, reference, f"blocks.{layer}.attn.hook_z", (slice(None), head), method)
            assert float(result.effects[layer, head]) == pytest.approx(expected, abs=1e-5)
    assert result.effects.abs().max() > 1e-3
    assert no_hooks(model)


def test_mlp_neuron_and_position_ablation(model, tokens, reference):
    mlps = ablate_mlps(model, tokens, metric, "mean", reference=reference)
    assert mlps.effects.shape == (2,)
    for layer in range(2):
        assert float(mlps.effects[layer]) == pytest.approx(one_by_one(model, tokens, reference, f"blocks.{layer}.hook_mlp_out", (), "mean"), abs=1e-5)
    neurons = ablate_neurons(model, tokens, metric, "resample", layers=[1], neurons=[0, 17, 255], reference=reference, seed=3)
    assert neurons.effects.shape == (1, 3)
    for j, n in enumerate([0, 17, 255]):
        expected = one_by_one(model, tokens, reference, "blocks.1.mlp.hook_post", (slice(None), n), "resample", seed=3)
        assert float(neurons.effects[0, j]) == pytest.approx(expected, abs=1e-5)
    positions = ablate_positions(model, tokens, metric, "zero", positions=[0, -1])
    assert positions.effects.shape == (2, 2)
    assert float(positions.effects[1, 1]) == pytest.approx(one_by_one(model, tokens, reference, "blocks.1.hook_resid_pre", (7,), "zero"), abs=1e-5)
    assert no_hooks(model)


def test_ablating_nothing_changes_nothing(model, tokens):
    # mean / resample over a reference batch of the prompt itself: every unit keeps its value
    one = tokens[:1]
    for method in ("mean", "resample"):
        assert ablate_heads(model, one, metric, method, reference=one).effects.abs().max() == 0
        assert ablate_positions(model, one, metric, method, reference=one).effects.abs().max() == 0
    # zeroing a head whose output is already zero
    silent = HookedGPT(model.cfg).eval()
    silent.load_state_dict(model.state_dict())
    with torch.no_grad():
        silent.blocks[1].attn.W_V[2] = 0
        silent.blocks[1].attn.b_V[2] = 0
    effects = ablate_heads(silent, tokens, metric, "zero").effects
    assert effects[1, 2] == 0 and effects.abs().max() > 0
    # no units at all
    effects, baseline = ablate_units(model, tokens, metric, [])
    assert effects.shape == (0,) and baseline == pytest.approx(float(metric(model(tokens).detach())))


def test_hooks_removed_after_an_error(model, tokens):
    calls = []

    def flaky(logits):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("metric failed")
        return logits.sum()

    with pytest.raises(RuntimeError, match="metric failed"):
        ablate_heads(model, tokens, flaky, "mean", batch_size=3)
    assert no_hooks(model)
    with pytest.raises(ValueError, match="length"):
        ablate_heads(model, tokens, metric, "mean", reference=tokens[:, :5])
    with pytest.raises(ValueError, match="method"):
        ablate_heads(model, tokens, metric, "random")
    assert no_hooks(model)


def test_tables_and_figures(model, tokens):
    heads = ablate_heads(model, tokens, metric)
    df = heads.to_df()
    assert isinstance(df, pd.DataFrame) and len(df) == 8
    assert df.effect[5] == pytest.approx(float(heads.effects[1, 1]))
    assert df.metric[5] == pytest.approx(float(heads.effects[1, 1]) + heads.baseline)
    mlps = ablate_mlps(model, tokens, metric)
    assert len(mlps.to_df()) == 2
    positions = ablate_positions(model, tokens, metric)
    assert positions.to_df().token[0].startswith("0: ") and positions.to_df().label[0] == "resid_pre 0 @ pos 0"
    assert list(heads.to_df().label[:2]) == ["L0H0", "L0H1"] and list(mlps.to_df().label) == ["mlp0", "mlp1"]
    for result in (heads, mlps, positions):
        assert isinstance(result.figure(), go.Figure)


def test_out_of_range_layers_are_errors_not_wrapped(model, tokens):
    # a 2-layer model: layer 7 used to be taken modulo 2 and ablate layer 1
    with pytest.raises(ValueError, match="layers: 7 is out of range for a model with n_layers=2"):
        ablate_heads(model, tokens, metric, layers=[7])
    assert torch.equal(ablate_heads(model, tokens, metric, layers=[-1]).effects, ablate_heads(model, tokens, metric, layers=[1]).effects)


def test_ablation_with_a_steering_hook_attached_equals_the_naive_engine(model, tokens):
    vec = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    handle = model.blocks[1].hook_resid_pre.add_hook(lambda x, hook: x + vec)
    try:
        fast = ablate_heads(model, tokens, metric, "mean")
        naive = ablate_heads(model, tokens, metric, "mean", engine="naive")
    finally:
        handle.remove()
    torch.testing.assert_close(fast.effects, naive.effects, atol=1e-5, rtol=0)
    assert fast.effects.abs().max() > 1e-3
