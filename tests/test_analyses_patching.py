"""Activation patching: the batched method equals a loop of run_with_hooks patches, for every kind."""

import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from analyses.patching import Patch, logit_diff, logit_diff_metric, patch_activations, patch_heads, patch_residual
from hookgpt import GPTConfig, HookedGPT
from hookgpt.kv_cache import KVCache, KVCacheEntry
from helpers import no_hooks, perturbed_model

ANSWER, WRONG = 11, 22


@pytest.fixture(scope="module")
def model():
    return perturbed_model(scale=0.1)


@pytest.fixture(scope="module")
def prompts():
    generator = torch.Generator().manual_seed(1)
    clean = torch.randint(0, 1000, (2, 7), generator=generator)
    corrupted = clean.clone()
    corrupted[:, 2] = torch.randint(0, 1000, (2,), generator=generator)
    return clean, corrupted


def raw_metric(logits):
    """Reads two positions, so patches after the first read position are seen through corrupted logits."""
    return logits[:, -1, ANSWER].mean() - logits[:, 0, WRONG].mean()


def test_kv_cache_with_several_new_positions_matches_a_full_run(model, prompts):
    """The fast method feeds positions >= p with a frozen cache of the positions before."""
    clean, _ = prompts
    with torch.no_grad():
        full = model(clean)
        _, cache = model.run_with_cache(clean, names_filter=lambda n: n.endswith(("hook_k", "hook_v")))
        for p in (1, 3):
            past = KVCache([KVCacheEntry(cache["k", l][:, :p], cache["v", l][:, :p]) for l in range(2)], torch.ones(2, p, dtype=torch.long)).freeze()
            assert torch.allclose(model(clean[:, p:], past_kv_cache=past), full[:, p:], atol=1e-5)


@pytest.mark.parametrize("activation", ["resid_pre", "resid_mid", "attn_out", "mlp_out"])
@pytest.mark.parametrize("by_position", [True, False])
def test_residual_patching_fast_equals_naive(model, prompts, activation, by_position):
    clean, corrupted = prompts
    kwargs = dict(activation=activation, by_position=by_position, read_positions=[1, 4, -1])
    fast = patch_residual(model, clean, corrupted, raw_metric, batch_size=6, **kwargs)  # several chunks
    naive = patch_residual(model, clean, corrupted, raw_metric, method="naive", **kwargs)
    assert fast.values.shape == ((2, 7) if by_position else (2,))
    assert (fast.values - naive.values).abs().max() <= 1e-5
    assert (fast.values - fast.corrupted_metric).abs().max() > 1e-2  # the patches do something
    assert no_hooks(model)


@pytest.mark.parametrize("activation", ["z", "q", "k", "v", "pattern"])
@pytest.mark.parametrize("by_position", [True, False])
def test_head_patching_fast_equals_naive(model, prompts, activation, by_position):
    clean, corrupted = prompts
    heads = [1, 3] if by_position else None  # two heads are enough to see rows go to the right patch
    kwargs = dict(activation=activation, by_position=by_position, heads=heads, read_positions=[1, 4, -1])
    fast = patch_heads(model, clean, corrupted, raw_metric, batch_size=10, **kwargs)
    naive = patch_heads(model, clean, corrupted, raw_metric, method="naive", **kwargs)
    assert fast.values.shape == ((2, 7, 2) if by_position else (2, 4))
    assert (fast.values - naive.values).abs().max() <= 1e-5
    assert no_hooks(model)


def test_naive_reference_is_a_plain_hooked_run(model, prompts):
    """Spot-check the reference itself against a hand-written hook."""
    clean, corrupted = prompts
    _, clean_cache = model.run_with_cache(clean)

    def hook(z, hook):
        z = z.clone()
        z[:, 3, 2] = clean_cache["z", 1][:, 3, 2]
        return z

    with torch.no_grad():
        expected = raw_metric(model.run_with_hooks(corrupted, fwd_hooks=[("blocks.1.attn.hook_z", hook)])[:, [1, 4, -1]])
    result = patch_heads(model, clean, corrupted, raw_metric, "z", by_position=True, read_positions=[1, 4, -1], layers=[1], heads=[2])
    assert result.values[0, 3, 0] == pytest.approx(float(expected), abs=1e-5)


def test_patching_the_whole_clean_residual_recovers_the_clean_run(model, prompts):
    clean, corrupted = prompts
    with torch.no_grad():
        metric = logit_diff_metric(model(clean), model(corrupted), ANSWER, WRONG)
    for layer in (0, 1):
        values, clean_metric, corrupted_metric = patch_activations(model, clean, corrupted, metric, "resid_pre", [Patch(layer)])
        assert clean_metric == pytest.approx(1.0, abs=1e-6) and corrupted_metric == pytest.approx(0.0, abs=1e-6)
        assert float(values[0]) == pytest.approx(1.0, abs=1e-4)  # a logit difference of ~0.1 normalised: 1e-5 in logits
        raw, clean_raw, _ = patch_activations(model, clean, corrupted, raw_metric, "resid_pre", [Patch(layer)], read_positions=[1, -1])
        assert float(raw[0]) == pytest.approx(clean_raw, abs=1e-5)
    # before the corrupted token nothing differs: patching there changes nothing
    result = patch_residual(model, clean, corrupted, metric, "resid_pre")
    assert result.values[:, :2].abs().max() < 1e-5
    assert result.values[0, 2] == pytest.approx(1.0, abs=1e-5)  # layer 0 at the corrupted position: all of it


def test_logit_diff_metric(model, prompts):
    clean, corrupted = prompts
    with torch.no_grad():
        clean_logits, corrupted_logits = model(clean), model(corrupted)
    metric = logit_diff_metric(clean_logits, corrupted_logits, torch.tensor([ANSWER, 5]), WRONG)
    assert float(metric(clean_logits)) == pytest.approx(1.0)
    assert float(metric(corrupted_logits[:, -1:])) == pytest.approx(0.0, abs=1e-6)  # only the last position is read
    diff = clean_logits[:, -1, [ANSWER, 5]].diagonal() - clean_logits[:, -1, WRONG]
    assert float(logit_diff(clean_logits, torch.tensor([ANSWER, 5]), WRONG)) == pytest.approx(float(diff.mean()))
    with pytest.raises(ValueError, match="equal"):
        logit_diff_metric(clean_logits, clean_logits, ANSWER, WRONG)


def test_metric_sees_the_read_positions(model, prompts):
    clean, corrupted = prompts
    shapes = set()

    def metric(logits):
        shapes.add(tuple(logits.shape))
        return logits[:, -1, ANSWER].mean()

    patch_residual(model, clean, corrupted, metric, layers=[1], positions=[3])
    patch_residual(model, clean, corrupted, metric, layers=[1], positions=[3], method="naive")
    assert shapes == {(2, 1, 1000)}


def test_no_hooks_left_after_errors(model, prompts):
    clean, corrupted = prompts

    def broken(logits):
        raise RuntimeError("metric failed")

    calls = []

    def fails_on_third_call(logits):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("metric failed later")
        return logits.sum()

    for method in ("fast", "naive"):
        with pytest.raises(RuntimeError, match="metric failed"):
            patch_residual(model, clean, corrupted, broken, method=method)
        assert no_hooks(model)
        calls.clear()
        with pytest.raises(RuntimeError, match="metric failed later"):
            patch_heads(model, clean, corrupted, fails_on_third_call, "pattern", method=method)
        assert no_hooks(model)

    def failing_block_hook(act, hook):  # an error inside the batched forward itself
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        with model.hooks(fwd_hooks=[("blocks.1.hook_mlp_out", failing_block_hook)]):
            patch_residual(model, clean, corrupted, raw_metric)
    assert no_hooks(model)


def test_input_validation(model, prompts):
    clean, corrupted = prompts
    with pytest.raises(ValueError, match="same shape"):
        patch_residual(model, clean, corrupted[:, :-1], raw_metric)
    with pytest.raises(ValueError, match="patch_heads"):
        patch_residual(model, clean, corrupted, raw_metric, activation="z")
    with pytest.raises(ValueError, match="head"):
        patch_activations(model, clean, corrupted, raw_metric, "z", [Patch(0, 1)])
    with pytest.raises(ValueError, match="unknown activation"):
        patch_activations(model, clean, corrupted, raw_metric, "resid_post", [Patch(0, 1)])
    with pytest.raises(IndexError):
        patch_residual(model, clean, corrupted, raw_metric, positions=[9])


def test_results_as_tables_and_figures(model, prompts):
    clean, corrupted = prompts
    by_pos = patch_residual(model, clean, corrupted, raw_metric)
    df = by_pos.to_df()
    assert isinstance(df, pd.DataFrame) and list(df.columns) == ["activation", "label", "layer", "pos", "metric"] and len(df) == 14
    assert df.metric.iloc[8] == pytest.approx(float(by_pos.values[1, 1]))
    heads_by_pos = patch_heads(model, clean, corrupted, raw_metric, by_position=True)
    assert list(heads_by_pos.to_df().columns) == ["activation", "label", "layer", "pos", "head", "metric"]
    assert df.label[8] == "resid_pre 1 @ pos 1" and heads_by_pos.to_df().label[0] == "L0H0 @ pos 0"
    for result in (by_pos, heads_by_pos, patch_heads(model, clean, corrupted, raw_metric), patch_residual(model, clean, corrupted, raw_metric, by_position=False)):
        assert isinstance(result.figure(), go.Figure)
    assert by_pos.position_labels[0].startswith("0: ")


def test_text_inputs():
    model = HookedGPT(GPTConfig(n_layers=1, d_model=32, n_heads=2, n_ctx=32)).eval()
    clean, corrupted = "When Mary and John went", "When Alice and John went"
    answer, wrong = model.to_single_token(" to"), model.to_single_token(" the")
    with torch.no_grad():
        metric = lambda logits: logit_diff(logits, answer, wrong)
        fast = patch_residual(model, clean, corrupted, metric)
        naive = patch_residual(model, clean, corrupted, metric, method="naive")
    assert (fast.values - naive.values).abs().max() <= 1e-5
    assert fast.position_labels[2] == "2: ' Mary'/' Alice'" and fast.position_labels[1] == "1: 'When'"


def test_patches_that_change_nothing_run_no_forward(model, prompts):
    clean, corrupted = prompts  # they differ from position 2 on
    calls = []

    def counting(logits):
        calls.append(logits.shape[0])
        return raw_metric(logits)

    result = patch_residual(model, clean, corrupted, counting, read_positions=[1, -1])
    # clean, corrupted, then layer 0 only at position 2 (the embeddings of the other tokens are the
    # same), layer 1 at positions 2..6 (attention has carried the difference forward)
    assert len(calls) == 2 + 1 + 5
    assert (result.values[:, :2] == result.corrupted_metric).all() and (result.values[0, 3:] == result.corrupted_metric).all()


def test_logit_diff_metric_takes_strings_with_a_model():
    from analyses.patching import logit_diff_metric
    from hookgpt import HookedGPT

    model = HookedGPT.from_pretrained("hookgpt-shakespeare")
    clean, corrupted = model.to_tokens("O Romeo, Romeo! wherefore art thou"), model.to_tokens("O Henry, Henry! wherefore art thou")
    with torch.no_grad():
        clean_logits, corrupted_logits = model(clean), model(corrupted)
    by_string = logit_diff_metric(clean_logits, corrupted_logits, " Romeo", " Henry", model=model)
    by_id = logit_diff_metric(clean_logits, corrupted_logits, model.to_single_token(" Romeo"), model.to_single_token(" Henry"))
    assert float(by_string(clean_logits)) == pytest.approx(1.0) and float(by_string(corrupted_logits)) == pytest.approx(0.0)
    assert float(by_string(clean_logits[:, :5])) == float(by_id(clean_logits[:, :5]))
    with pytest.raises(ValueError, match="model="):
        logit_diff_metric(clean_logits, corrupted_logits, " Romeo", " Henry")
