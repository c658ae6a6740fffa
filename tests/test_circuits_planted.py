"""Known answers on a hand-built model with a planted two-head circuit (tests/planted_circuit.py):
head A writes a flag that head B reads through its key; everything else is weak."""

import pytest
import torch
from helpers import no_hooks
from planted_circuit import A, B, metric, planted_model, planted_prompts

from analyses import circuits


@pytest.fixture(scope="module")
def setup():
    model = planted_model()
    clean, corrupted = planted_prompts()
    return model, clean, corrupted


def test_the_planted_model_does_the_task(setup):
    model, clean, corrupted = setup
    with torch.no_grad():
        clean_metric = float(metric(model(clean)[:, [-1]]))
        corrupted_metric = float(metric(model(corrupted)[:, [-1]]))
        _, cache = model.run_with_cache(clean)
    assert clean_metric > -0.01 and corrupted_metric < -1.5
    assert cache["blocks.0.attn.hook_pattern"][0, 0, 5, 4] > 0.99  # A: previous token
    assert cache["blocks.1.attn.hook_pattern"][:, 0, -1, 4].min() > 0.99  # B: the position after S


@pytest.mark.parametrize("method", ["EAP", "EAP-IG"])
def test_edge_a_to_b_key_ranks_first_among_edges_into_b(setup, method):
    model, clean, corrupted = setup
    scores = circuits.edge_attribution(model, clean, corrupted, metric, method=method, steps=5)
    into_b = [(u, r, s) for u, r, s in scores.top(scores.graph.n_edges) if r.split(".")[0] == B]
    assert into_b[0][:2] == (A, f"{B}.k")
    assert into_b[0][2] > 0 and abs(into_b[0][2]) > 20 * abs(into_b[1][2])
    # the circuit: the token S into A's value, A into B's key, B into the logits
    top3 = {(u, r) for u, r, _ in scores.top(3)}
    assert top3 == {("embed", f"{A}.v"), (A, f"{B}.k"), (B, "logits")}
    assert no_hooks(model)


def test_path_patching_a_to_b_key_carries_the_whole_effect(setup):
    model, clean, corrupted = setup
    with torch.no_grad():
        clean_metric = float(metric(model(clean)[:, [-1]]))
        corrupted_metric = float(metric(model(corrupted)[:, [-1]]))
    gap = clean_metric - corrupted_metric
    # the corrupted run with A's clean output into B's key recovers the metric ...
    recovered = circuits.path_patching(model, corrupted, clean, metric, senders=[A, "L0H1", "embed"], receivers=[f"{B}.k"])
    assert recovered.change[0] / gap >= 0.95
    assert recovered.change[1:].abs().max() / gap < 0.01  # the weak head and the embeddings: nothing
    # ... and the clean run with A's corrupted output into B's key loses it
    lost = circuits.path_patching(model, clean, corrupted, metric, senders=[A], receivers=[f"{B}.k"])
    assert -lost.change[0] / gap >= 0.95
    # through B's query or value A does nothing
    other = circuits.path_patching(model, corrupted, clean, metric, senders=[A], receivers=[f"{B}.q", f"{B}.v"])
    assert abs(other.change[0]) / gap < 0.01
    assert no_hooks(model)


def _node_circuit(graph, nodes):
    mask = torch.zeros(graph.mask.shape)
    for i, u in enumerate(graph.upstream):
        for j, r in enumerate(graph.receivers):
            if graph.mask[i, j] and u.name in nodes and r.node.name in nodes:
                mask[i, j] = 1.0
    return mask


def test_the_circuit_a_b_is_faithful_and_needs_both_heads(setup):
    model, clean, corrupted = setup
    graph = circuits.Graph(model)
    full = {"embed", A, B, "logits"}
    assert circuits.faithfulness(model, clean, corrupted, metric, _node_circuit(graph, full)) >= 0.95
    assert abs(circuits.faithfulness(model, clean, corrupted, metric, _node_circuit(graph, full - {A}))) < 0.05
    assert abs(circuits.faithfulness(model, clean, corrupted, metric, _node_circuit(graph, full - {B}))) < 0.05
    # the three edges EAP finds are the circuit
    found = circuits.edge_attribution(model, clean, corrupted, metric).circuit(n=3)
    assert set(found.nodes) == full
    assert circuits.faithfulness(model, clean, corrupted, metric, found) >= 0.95
    assert no_hooks(model)
