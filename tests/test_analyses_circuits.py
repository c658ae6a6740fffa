"""Circuit discovery (`analyses.circuits`): per-head input hooks, EAP against finite differences,
faithfulness, path patching against a hand-written hook, attribution patching against a
fractional patch, hook hygiene and bad inputs."""

import pytest
import torch
from helpers import no_hooks, perturbed_model

from analyses import circuits
from hookgpt import interventions as iv
from hookgpt.errors import ArgumentError, UnknownNameError

SMALL = dict(n_layers=2, d_model=16, n_heads=2, d_vocab=50, n_ctx=16)


@pytest.fixture(scope="module")
def model64():
    """A tiny float64 model with an MLP per layer: 2 layers x 2 heads."""
    return perturbed_model(scale=0.3, seed=1, **SMALL).double()


@pytest.fixture(scope="module")
def pair():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 50, (2, 6), generator=g), torch.randint(0, 50, (2, 6), generator=g)


def metric(logits):
    """Mean log-prob of token 3 at the read positions: nonlinear in the logits."""
    return logits.log_softmax(-1)[..., 3].mean()


# ------------------------------------------------------------------ per-head input hooks


def test_per_head_inputs_observed_or_not_give_identical_outputs(model64, pair):
    clean, _ = pair
    with torch.no_grad():
        plain = model64(clean)
        names = [f"blocks.{l}.hook_{p}_input" for l in range(2) for p in ("q", "k", "v")]
        logits, cache = model64.run_with_cache(clean, names_filter=names + ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"])
        editing = model64.run_with_hooks(clean, fwd_hooks=[(n, lambda x, hook: x.clone()) for n in names])
    torch.testing.assert_close(logits, plain, rtol=0, atol=1e-12)
    torch.testing.assert_close(editing, plain, rtol=0, atol=1e-12)
    for layer in range(2):  # lazily cached copies equal resid_pre, one per head
        resid = cache[f"blocks.{layer}.hook_resid_pre"]
        for p in ("q", "k", "v"):
            per_head = cache[f"blocks.{layer}.hook_{p}_input"]
            assert per_head.shape == (2, 6, 2, 16)
            for h in range(2):
                torch.testing.assert_close(per_head[:, :, h], resid, rtol=0, atol=0)
    assert no_hooks(model64)


def test_editing_one_heads_key_input_changes_only_that_heads_keys(model64, pair):
    clean, _ = pair
    vector = torch.randn(16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

    def edit(x, hook):
        x[:, :, 1] = x[:, :, 1] + vector
        return x

    names = ["blocks.1.attn.hook_k", "blocks.1.attn.hook_q", "blocks.1.attn.hook_v"]
    with torch.no_grad():
        _, before = model64.run_with_cache(clean, names_filter=names)
        with model64.hooks(fwd_hooks=[("blocks.1.hook_k_input", edit)]):
            _, after = model64.run_with_cache(clean, names_filter=names)
    k0, k1 = before["blocks.1.attn.hook_k"], after["blocks.1.attn.hook_k"]
    torch.testing.assert_close(k1[:, :, 0], k0[:, :, 0], rtol=0, atol=0)
    assert (k1[:, :, 1] - k0[:, :, 1]).abs().min() > 1e-6  # every position of head 1 moved
    for name in names[1:]:  # queries and values untouched
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=0)
    assert no_hooks(model64)


# ------------------------------------------------------------------ EAP, faithfulness


def test_eap_equals_finite_differences_of_edge_patching_for_every_edge(model64, pair):
    clean, corrupted = pair
    scores = circuits.edge_attribution(model64, clean, corrupted, metric, read_positions=[3, 5])
    graph = scores.graph
    clean_out = circuits._upstream_outputs(model64, clean)
    eps = 1e-4
    worst = 0.0
    edges = graph.mask.nonzero().tolist()
    for i, j in edges:
        swap = torch.zeros(graph.mask.shape, dtype=torch.float64)
        swap[i, j] = eps
        up = circuits._metric_with_swap(model64, corrupted, clean_out, swap, metric, [3, 5])
        down = circuits._metric_with_swap(model64, corrupted, clean_out, -swap, metric, [3, 5])
        fd = (up - down) / (2 * eps)
        s = float(scores.scores[i, j])
        worst = max(worst, abs(s - fd) / max(abs(fd), 1e-6))
        assert s == pytest.approx(fd, rel=1e-3, abs=1e-7), (graph.upstream[i].name, graph.receivers[j].name)
    assert worst < 1e-3
    # every edge: embed -> 15 receivers, 2 L0 heads -> 9 each, mlp0 -> 8, 2 L1 heads -> 2 each, mlp1 -> logits
    assert len(edges) == graph.n_edges == 15 + 18 + 8 + 4 + 1
    assert no_hooks(model64)


def test_faithfulness_is_one_for_the_full_graph_and_zero_for_the_empty_circuit(model64, pair):
    clean, corrupted = pair
    graph = circuits.Graph(model64)
    full = circuits.faithfulness(model64, clean, corrupted, metric, graph.mask.float())
    empty = circuits.faithfulness(model64, clean, corrupted, metric, torch.zeros(graph.mask.shape))
    assert full == pytest.approx(1.0, abs=1e-9)
    assert empty == pytest.approx(0.0, abs=1e-9)
    assert no_hooks(model64)


def test_eap_ig_with_one_step_is_eap_on_the_clean_run_gradient(model64, pair):
    """With steps=1 the only interpolation point is alpha = 1 (the clean input): the gradient is
    the clean run's."""
    clean, corrupted = pair
    ig = circuits.edge_attribution(model64, clean, corrupted, metric, method="EAP-IG", steps=1)
    # EAP with the roles of the runs swapped scores (corrupted - clean) . grad(clean)
    swapped = circuits.edge_attribution(model64, corrupted, clean, metric)
    torch.testing.assert_close(ig.scores, -swapped.scores, rtol=1e-4, atol=1e-7)


# ------------------------------------------------------------------ path patching


def test_path_patching_matches_a_hand_written_hook(model64, pair):
    clean, corrupted = pair
    with torch.no_grad():
        _, cache_clean = model64.run_with_cache(clean, names_filter=["blocks.0.attn.hook_result"])
        _, cache_corr = model64.run_with_cache(corrupted, names_filter=["blocks.0.attn.hook_result"])
    diff = cache_corr["blocks.0.attn.hook_result"] - cache_clean["blocks.0.attn.hook_result"]  # [b, p, head, d]
    expected = []
    for sender in (0, 1):
        def hook(x, hook, sender=sender):
            x[:, :, 1] = x[:, :, 1] + diff[:, :, sender]
            return x

        with torch.no_grad():
            logits = model64.run_with_hooks(clean, fwd_hooks=[("blocks.1.hook_k_input", hook)])
        expected.append(float(metric(logits[:, [-1]])))
    df = circuits.path_patching(model64, clean, corrupted, metric, senders=["L0H0", "L0H1"], receivers=["L1H1.k"])
    assert list(df.sender) == ["L0H0", "L0H1"]
    assert df.metric.tolist() == pytest.approx(expected, rel=1e-9, abs=1e-12)
    with torch.no_grad():
        clean_metric = float(metric(model64(clean)[:, [-1]]))
    assert df.change.tolist() == pytest.approx([e - clean_metric for e in expected], abs=1e-9)
    assert abs(df.change).max() > 1e-4  # the patch does something
    assert no_hooks(model64)


# ------------------------------------------------------------------ attribution patching (nodes)


def test_attribution_patching_is_the_derivative_of_a_fractional_patch(model64, pair):
    clean, corrupted = pair
    result = circuits.attribution_patch_heads(model64, clean, corrupted, metric, activation="z", by_position=True)
    with torch.no_grad():
        _, cc = model64.run_with_cache(clean, names_filter=lambda n: n.endswith("hook_z"))
        _, kc = model64.run_with_cache(corrupted, names_filter=lambda n: n.endswith("hook_z"))
    eps = 1e-2  # central differences (error ~eps^2); the engine returns the metric in float32
    sets, where = [], []
    for layer in range(2):
        for pos in (0, 4, 5):
            for head in range(2):
                name = f"blocks.{layer}.attn.hook_z"
                for sign in (1, -1):
                    value = kc[name][:, pos, head] + sign * eps * (cc[name][:, pos, head] - kc[name][:, pos, head])
                    sets.append([iv.replace(iv.Site.head(layer, head, pos=pos), value)])
                where.append((layer, pos, head))
    values, corrupted_metric = iv.evaluate(model64, corrupted, sets, metric, disable=True)
    assert corrupted_metric == pytest.approx(result.corrupted_metric, abs=1e-6)
    values = values.double().view(-1, 2)
    for (layer, pos, head), (up, down) in zip(where, values.tolist()):
        fd = (up - down) / (2 * eps)
        estimate = float(result.values[layer, pos, head]) - result.corrupted_metric
        assert estimate == pytest.approx(fd, rel=2e-3, abs=3e-5), (layer, pos, head)
    assert no_hooks(model64)


def test_attribution_patching_per_head_sums_the_positions(model64, pair):
    clean, corrupted = pair
    per_pos = circuits.attribution_patch_heads(model64, clean, corrupted, metric, by_position=True)
    per_head = circuits.attribution_patch_heads(model64, clean, corrupted, metric)
    effect = per_pos.values - per_pos.corrupted_metric
    torch.testing.assert_close(per_head.values - per_head.corrupted_metric, effect.sum(1), rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------ hook hygiene and bad inputs


def test_no_hook_stays_attached_when_the_metric_raises(model64, pair):
    clean, corrupted = pair

    def broken(logits):
        raise RuntimeError("metric failed")

    graph = circuits.Graph(model64)
    calls = [
        lambda: circuits.edge_attribution(model64, clean, corrupted, broken),
        lambda: circuits.edge_attribution(model64, clean, corrupted, broken, method="EAP-IG", steps=2),
        lambda: circuits.faithfulness(model64, clean, corrupted, broken, graph.mask.float()),
        lambda: circuits.edge_patching(model64, clean, corrupted, broken, [("embed", "logits")]),
        lambda: circuits.path_patching(model64, clean, corrupted, broken, ["L0H0"], ["L1H0.k"]),
        lambda: circuits.attribution_patch_heads(model64, clean, corrupted, broken),
        lambda: circuits.attribution_patch_residual(model64, clean, corrupted, broken),
        lambda: circuits.attribution_patch_neurons(model64, clean, corrupted, broken),
    ]
    for call in calls:
        with pytest.raises(RuntimeError, match="metric failed"):
            call()
        assert no_hooks(model64)


def test_bad_inputs_are_clear_errors(model64, pair):
    clean, corrupted = pair
    graph = circuits.Graph(model64)
    with pytest.raises(UnknownNameError, match="no upstream node 'L5H0'"):
        circuits.path_patching(model64, clean, corrupted, metric, ["L5H0"], ["L1H0.k"])
    with pytest.raises(UnknownNameError, match="no receiver 'L1H0.x'"):
        circuits.path_patching(model64, clean, corrupted, metric, ["L0H0"], ["L1H0.x"])
    with pytest.raises(ArgumentError, match="there is no edge L1H0 -> L0H1.k"):
        graph.edge_mask([("L1H0", "L0H1.k")])
    with pytest.raises(ArgumentError, match="there is no edge L1H0 -> L1H1.q"):
        circuits.edge_patching(model64, clean, corrupted, metric, [("L1H0", "L1H1.q")])
    with pytest.raises(ArgumentError, match="steps must be a positive int, got 0"):
        circuits.edge_attribution(model64, clean, corrupted, metric, method="EAP-IG", steps=0)
    with pytest.raises(ArgumentError, match="method must be"):
        circuits.edge_attribution(model64, clean, corrupted, metric, method="IG")
    with pytest.raises(ArgumentError, match="same shape"):
        circuits.edge_attribution(model64, clean, corrupted[:, :5], metric)
    with pytest.raises(ArgumentError, match=r"circuit must be a Circuit or a \[n_upstream, n_receivers\]"):
        circuits.faithfulness(model64, clean, corrupted, metric, torch.ones(3, 3))
    with pytest.raises(ArgumentError, match="same metric"):
        circuits.faithfulness(model64, clean, clean, metric, graph.mask.float())
    scores = circuits.edge_attribution(model64, clean, corrupted, metric)
    with pytest.raises(ArgumentError, match="exactly one of n"):
        scores.circuit()
    with pytest.raises(ArgumentError, match="swap must be"):
        with circuits.edges_swapped(model64, circuits._upstream_outputs(model64, clean), torch.zeros(2, 2)):
            pass
    assert no_hooks(model64)


def test_circuit_view_builds_for_a_circuit_with_edges_into_the_logits(model64, pair):
    clean, corrupted = pair
    scores = circuits.edge_attribution(model64, clean, corrupted, metric)
    full = circuits.Circuit(scores.graph, scores.graph.mask.float(), scores)
    html = full.view(title="all edges")
    assert html.component == "CircuitGraph" and html.props["title"] == "all edges"
    assert len(html.props["edges"]) == scores.graph.n_edges
    assert {e["target"] for e in html.props["edges"]} >= {"logits", "mlp0", "L1H0"}
    small = scores.circuit(n=6)
    assert any(r == "logits" for _, r in small.edges)
    small.view()


def test_a_frozen_model_gets_gradients_too(pair):
    """Analysis often runs on a model whose parameters do not require gradients."""
    clean, corrupted = pair
    model = perturbed_model(scale=0.3, seed=1, **SMALL).double()
    reference = circuits.attribution_patch_heads(model, clean, corrupted, metric).values
    residual = circuits.attribution_patch_residual(model, clean, corrupted, metric).values
    edges = circuits.edge_attribution(model, clean, corrupted, metric).scores
    for param in model.parameters():
        param.requires_grad_(False)
    torch.testing.assert_close(circuits.attribution_patch_heads(model, clean, corrupted, metric).values, reference)
    torch.testing.assert_close(circuits.attribution_patch_residual(model, clean, corrupted, metric).values, residual)
    torch.testing.assert_close(circuits.edge_attribution(model, clean, corrupted, metric).scores, edges)
    assert no_hooks(model)


def test_stacked_swap_masks_equal_one_forward_per_mask(model64, pair):
    """edges_swapped with a stack of masks (what edge_patching and path_patching batch with)
    gives each set's metric as its own forward pass would."""
    clean, corrupted = pair
    graph = circuits.Graph(model64)
    clean_out = circuits._upstream_outputs(model64, clean)
    g = torch.Generator().manual_seed(5)
    masks = (torch.rand(7, *graph.mask.shape, generator=g) < 0.3).double() * graph.mask
    masks[0] = 0.0
    alone = [circuits._metric_with_swap(model64, corrupted, clean_out, m, metric, [2, 5]) for m in masks]
    batched = circuits._metrics_with_swaps(model64, corrupted, clean_out, masks, metric, [2, 5], max_rows=6)  # 3 sets per forward
    assert batched.tolist() == pytest.approx(alone, rel=1e-9, abs=1e-12)
    edges = [("embed", "logits"), ("L0H1", "L1H0.k"), ("mlp0", "mlp1")]
    one_by_one = [float(circuits.edge_patching(model64, clean, corrupted, metric, [e])[0]) for e in edges]
    assert circuits.edge_patching(model64, clean, corrupted, metric, edges).tolist() == pytest.approx(one_by_one, rel=1e-9, abs=1e-12)
    with pytest.raises(ArgumentError, match="repeated once per set"):
        with torch.no_grad(), circuits.edges_swapped(model64, clean_out, masks[:2]):
            model64(corrupted)
    assert no_hooks(model64)
