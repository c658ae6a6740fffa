"""analyses.render.circuit_graph: the checks on a circuit's nodes and edges, and the props it writes.

The view itself is driven in Chromium by tests/test_render_browser.py.
"""

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from analyses import render as views
from analyses.render.html import bundle_source


def small_circuit():
    """embed -> L0H0/L0H1 -> MLP0 -> L1H0 -> logits, with q/k/v receivers on the heads."""
    nodes = [
        {"id": "embed", "layer": -1, "kind": "embed", "label": "embed"},
        {"id": "L0H0", "layer": 0, "kind": "head", "label": "L0H0", "head": 0, "score": 0.5},
        {"id": "L0H1", "layer": 0, "kind": "head", "label": "L0H1", "head": 1},
        {"id": "MLP0", "layer": 0, "kind": "mlp", "label": "MLP 0", "score": -0.25},
        {"id": "L1H0", "layer": 1, "kind": "head", "label": "L1H0", "head": 0},
        {"id": "logits", "layer": 2, "kind": "logits", "label": "logits"},
    ]
    edges = [
        {"source": "embed", "target": "L0H0", "receiver": "q", "score": 0.1},
        {"source": "embed", "target": "L0H1", "receiver": "v", "score": -0.2},
        {"source": "L0H0", "target": "MLP0", "score": 0.3},
        {"source": "L0H1", "target": "L1H0", "receiver": "k", "score": 0.9},
        {"source": "MLP0", "target": "L1H0", "receiver": "q", "score": -0.05},
        {"source": "L1H0", "target": "logits", "receiver": None, "score": 1.5},
    ]
    return nodes, edges


def props_of(html: str) -> dict:
    match = re.search(r'<script type="application/json" id="([^"]+)-props">(.*?)</script>', html, re.S)
    assert match, "no props <script> in the HTML"
    return json.loads(match.group(2))


def with_change(items, index, **changes):
    """A copy of `items` with `items[index]` updated (a key set to ... is removed)."""
    items = [dict(item) for item in items]
    for key, value in changes.items():
        if value is ...:
            items[index].pop(key, None)
        else:
            items[index][key] = value
    return items


# --- props ------------------------------------------------------------------------------------


def test_props_hold_the_graph_exactly():
    nodes, edges = small_circuit()
    view = views.circuit_graph(nodes, edges, title="a circuit")
    assert view.component == "CircuitGraph"
    props = props_of(view._repr_html_())
    assert props["title"] == "a circuit" and props["topN"] == 200
    assert "patterns" not in props
    assert props["nodes"] == nodes
    # receiver None is left out; everything else as given, in order.
    expected_edges = [dict(edge) for edge in edges]
    del expected_edges[-1]["receiver"]
    assert props["edges"] == expected_edges
    assert [e.get("receiver") for e in props["edges"]] == ["q", "v", None, "k", "q", None]


def test_html_contains_the_component_and_the_data(tmp_path):
    nodes, edges = small_circuit()
    path = views.circuit_graph(nodes, edges, title="a circuit").save(tmp_path / "circuit.html")
    text = path.read_text(encoding="utf-8")
    assert 'window.hookgptViews.mount("CircuitGraph", element, props);' in text
    assert bundle_source() in text and "CircuitGraph" in bundle_source()
    assert re.search(r"[a-z][a-z0-9+.-]*://", text, re.I) is None, "no URL of any scheme"
    assert "<title>a circuit</title>" in text
    assert props_of(text)["edges"][3] == {"source": "L0H1", "target": "L1H0", "receiver": "k", "score": 0.9}
    fragment = views.circuit_graph(nodes, edges)._repr_html_()  # a notebook output
    assert 'window.hookgptViews.mount("CircuitGraph", element, props);' in fragment
    assert props_of(fragment)["nodes"] == nodes


def test_labels_default_to_ids_and_numbers_of_any_kind_are_accepted():
    nodes, edges = small_circuit()
    nodes = with_change(nodes, 2, label=..., score=np.float32(0.75))
    nodes = with_change(nodes, 1, head=np.int64(0), layer=torch.tensor(0))
    edges = with_change(edges, 0, score=torch.tensor(0.125))
    edges = with_change(edges, 1, score=np.float64(-1 / 3))
    props = views.circuit_graph(nodes, edges).props
    assert props["nodes"][2]["label"] == "L0H1" and props["nodes"][2]["score"] == 0.75
    assert props["nodes"][1]["head"] == 0 and type(props["nodes"][1]["layer"]) is int
    assert props["edges"][0]["score"] == 0.125
    assert props["edges"][1]["score"] == -0.333333  # 6 significant digits


def test_dataframes_are_accepted_with_gaps_as_missing():
    nodes, edges = small_circuit()
    props = views.circuit_graph(pd.DataFrame(nodes), pd.DataFrame(edges)).props
    # A DataFrame stores missing heads/scores as NaN and heads as floats; those become "absent" and ints.
    assert props["nodes"] == nodes
    assert [e.get("receiver") for e in props["edges"]] == ["q", "v", None, "k", "q", None]
    assert [e["score"] for e in props["edges"]] == [e["score"] for e in edges]


def test_top_n_or_min_score_sets_the_edges_drawn_at_first():
    nodes, edges = small_circuit()
    assert views.circuit_graph(nodes, edges, top_n=2).props["topN"] == 2
    # |scores| 0.1 0.2 0.3 0.9 0.05 1.5: four are >= 0.2 (the threshold itself included).
    assert views.circuit_graph(nodes, edges, min_score=0.2).props["topN"] == 4
    assert views.circuit_graph(nodes, edges, min_score=10).props["topN"] == 0
    with pytest.raises(ValueError, match=r"give top_n or min_score, not both"):
        views.circuit_graph(nodes, edges, top_n=3, min_score=0.2)
    with pytest.raises(ValueError, match=r"min_score is nan"):
        views.circuit_graph(nodes, edges, min_score=float("nan"))


MOCK = Path(__file__).resolve().parents[1] / "web" / "src" / "CircuitGraph" / "mock.json"


@pytest.mark.skipif(not MOCK.exists(), reason="web/ sources not in this checkout")
def test_the_mock_of_the_component_passes_the_checks():
    mock = json.loads(MOCK.read_text())
    props = views.circuit_graph(**mock).props
    assert props["nodes"] == mock["nodes"] and props["edges"] == mock["edges"]
    assert props["patterns"] == mock["patterns"] and props["title"] == mock["title"]


def test_patterns_are_checked_and_rounded():
    nodes, edges = small_circuit()
    pattern = np.tril(np.full((3, 3), 1 / 3))
    pattern[0, 0] = 1
    view = views.circuit_graph(nodes, edges, patterns={"L1H0": {"tokens": ["a", "b", "c"], "pattern": torch.tensor(pattern)}})
    entry = view.props["patterns"]["L1H0"]
    assert entry["tokens"] == ["a", "b", "c"]
    assert entry["pattern"] == [[1, 0, 0], [0.333, 0.333, 0], [0.333, 0.333, 0.333]]


def test_tiny_and_huge_scores_keep_six_significant_digits():
    nodes, edges = small_circuit()
    edges = with_change(edges, 0, score=1.23456789e-7)
    edges = with_change(edges, 1, score=-98765432.1)
    edges = with_change(edges, 2, score=-0.0)
    scores = [e["score"] for e in views.circuit_graph(nodes, edges).props["edges"]]
    assert scores[:3] == [1.23457e-07, -98765400.0, 0.0]
    assert math.copysign(1, scores[2]) == 1  # no "-0"


# --- validation: every error names the field --------------------------------------------------


@pytest.mark.parametrize(
    "index, changes, message",
    [
        (2, {"id": "L0H0"}, r"nodes\[2\]\.id 'L0H0' duplicates nodes\[1\]\.id"),
        (0, {"kind": "embedding"}, r"nodes\[0\]\.kind must be one of 'embed', 'head', 'mlp', 'logits', got 'embedding'"),
        (0, {"layer": 0}, r"nodes\[0\]\.layer must be -1 for an embedding node"),
        (1, {"layer": -1}, r"nodes\[1\]\.layer must be >= 0 for a head node"),
        (1, {"layer": 0.5}, r"nodes\[1\]\.layer must be an int, got float 0.5"),
        (1, {"layer": True}, r"nodes\[1\]\.layer must be an int, got bool"),
        (1, {"id": ...}, r"nodes\[1\] has no 'id'"),
        (1, {"kind": ...}, r"nodes\[1\] has no 'kind'"),
        (1, {"id": 3}, r"nodes\[1\]\.id must be a non-empty str, got 3"),
        (1, {"label": 7}, r"nodes\[1\]\.label must be a str, got int 7"),
        (2, {"head": 0}, r"nodes\[2\] is layer 0 head 0, like nodes\[1\]"),
        (3, {"head": 1}, r"nodes\[3\]\.head is given but 'MLP0' is a mlp node"),
        (1, {"head": -2}, r"nodes\[1\]\.head must be >= 0, got -2"),
        (1, {"score": float("nan")}, r"nodes\[1\]\.score is nan; expected a finite number"),
        (3, {"score": float("inf")}, r"nodes\[3\]\.score is inf; expected a finite number"),
        (1, {"score": "high"}, r"nodes\[1\]\.score must be a number, got str 'high'"),
        (5, {"layer": 1}, r"nodes: the logits must all sit on one layer above every head and MLP"),
    ],
)
def test_bad_nodes_are_named(index, changes, message):
    nodes, edges = small_circuit()
    edges = [e for e in edges if e["source"] in {n.get("id") for n in nodes}]
    with pytest.raises(ValueError, match=message):
        views.circuit_graph(with_change(nodes, index, **changes), edges)


@pytest.mark.parametrize(
    "index, changes, message",
    [
        (3, {"source": "L0H2"}, r"edges\[3\]\.source 'L0H2' is not the id of any node; did you mean 'L0H[01]', 'L0H[01]'"),
        (3, {"receiver": float("nan")}, r"edges\[3\]\.receiver must be 'q', 'k', 'v' or None, got nan"),
        (5, {"target": "logit"}, r"edges\[5\]\.target 'logit' is not the id of any node; did you mean 'logits'"),
        (3, {"source": ["L0H1"]}, r"edges\[3\]\.source must be a node id \(str\), got list"),
        (3, {"receiver": "key"}, r"edges\[3\]\.receiver must be 'q', 'k', 'v' or None, got 'key'"),
        (3, {"receiver": "K"}, r"edges\[3\]\.receiver must be 'q', 'k', 'v' or None, got 'K'"),
        (2, {"receiver": "q"}, r"edges\[2\]\.receiver is 'q' but the target 'MLP0' is a mlp node"),
        (3, {"score": float("nan")}, r"edges\[3\]\.score is nan; expected a finite number"),
        (3, {"score": -float("inf")}, r"edges\[3\]\.score is -inf; expected a finite number"),
        (3, {"score": None}, r"edges\[3\]\.score must be a number, got NoneType"),
        (3, {"score": ...}, r"edges\[3\] has no 'score'"),
        (3, {"target": ...}, r"edges\[3\] has no 'target'"),
        (3, {"source": "L1H0", "target": "L0H1", "receiver": None}, r"edges\[3\] goes from 'L1H0' \(layer 1\) to 'L0H1' \(layer 0\).*swapped"),
        (2, {"source": "MLP0", "target": "L0H0", "receiver": None}, r"edges\[2\] goes from 'MLP0' \(layer 0\) to 'L0H0' \(layer 0\)"),
        (0, {"source": "L0H0", "target": "embed", "receiver": None}, r"edges\[0\] goes from 'L0H0' \(head\) to 'embed' \(embed\)"),
        (5, {"source": "logits", "target": "L1H0"}, r"edges\[5\] goes from 'logits' \(logits\) to 'L1H0' \(head\)"),
        (4, {"source": "L0H1", "receiver": "k"}, r"edges\[4\] repeats edges\[3\] \('L0H1' -> 'L1H0', receiver 'k'\)"),
    ],
)
def test_bad_edges_are_named(index, changes, message):
    nodes, edges = small_circuit()
    with pytest.raises(ValueError, match=message):
        views.circuit_graph(nodes, with_change(edges, index, **changes))


def test_the_same_pair_through_different_receivers_is_three_edges():
    nodes, edges = small_circuit()
    edges = [{"source": "L0H1", "target": "L1H0", "receiver": r, "score": s} for r, s in zip("qkv", (0.1, 0.2, 0.3))]
    edges.append({"source": "L0H1", "target": "L1H0", "score": 0.4})  # the whole input, as a fourth edge
    assert len(views.circuit_graph(nodes, edges).props["edges"]) == 4


@pytest.mark.parametrize(
    "patterns, message",
    [
        ({"L1H1": {"tokens": ["a"], "pattern": [[1.0]]}}, r"patterns\['L1H1'\]: 'L1H1' is not the id of any node; did you mean 'L1H0'"),
        ({"MLP0": {"tokens": ["a"], "pattern": [[1.0]]}}, r"patterns\['MLP0'\]: 'MLP0' is a mlp node; only heads"),
        ({"L1H0": {"tokens": ["a", "b"]}}, r"patterns\['L1H0'\] must be a dict with 'tokens' \[pos\] and 'pattern'"),
        ({"L1H0": {"tokens": ["a", "b"], "pattern": np.ones((2, 3))}}, r"patterns\['L1H0'\]\['pattern'\] must be square"),
        ({"L1H0": {"tokens": ["a", "b"], "pattern": np.ones((1, 2, 2))}}, r"patterns\['L1H0'\]\['pattern'\] must have 2 dimension.* pass"),
        ({"L1H0": {"tokens": ["a"], "pattern": np.eye(2)}}, r"patterns\['L1H0'\]\['tokens'\] has 1 entries but patterns\['L1H0'\]\['pattern'\] query_pos/key_pos has 2"),
        ({"L1H0": {"tokens": "ab", "pattern": np.eye(2)}}, r"patterns\['L1H0'\]\['tokens'\] must be a list of strings"),
        ({"L1H0": {"tokens": ["a", "b"], "pattern": [[1, np.nan], [0, 1]]}}, r"patterns\['L1H0'\]\['pattern'\] contains 1 non-finite"),
        ([("L1H0", np.eye(2))], r"patterns must be a dict"),
    ],
)
def test_bad_patterns_are_named(patterns, message):
    nodes, edges = small_circuit()
    with pytest.raises(ValueError, match=message):
        views.circuit_graph(nodes, edges, patterns=patterns)


def test_bad_containers_and_options():
    nodes, edges = small_circuit()
    with pytest.raises(ValueError, match=r"nodes is empty"):
        views.circuit_graph([], [])
    with pytest.raises(ValueError, match=r"nodes must be a list of dicts \(or a pandas DataFrame\), got dict"):
        views.circuit_graph(nodes[0], edges)
    with pytest.raises(ValueError, match=r"edges\[1\] must be a dict, got tuple"):
        views.circuit_graph(nodes, [edges[0], ("embed", "L0H0", 1.0)])
    with pytest.raises(ValueError, match=r"top_n must be >= 0"):
        views.circuit_graph(nodes, edges, top_n=-1)
    # A graph without edges is still a picture (the nodes of a circuit before scoring).
    assert views.circuit_graph(nodes, []).props["edges"] == []
