"""The circuit view: a computational graph of heads, MLPs, embeddings and logits, with scored edges.

`circuit_graph(nodes, edges)` checks a graph and hands it to the `CircuitGraph`
component. The graph is plain data (lists of dicts, or pandas DataFrames with
those columns), so any analysis can draw its circuit: edge attribution
patching scores, path patching results, a hand-written hypothesis.

    >>> nodes = [
    ...     {"id": "embed", "layer": -1, "kind": "embed", "label": "embed"},
    ...     {"id": "L0H2", "layer": 0, "kind": "head", "label": "L0H2", "head": 2},
    ...     {"id": "L1H4", "layer": 1, "kind": "head", "label": "L1H4", "head": 4},
    ...     {"id": "logits", "layer": 2, "kind": "logits", "label": "logits"},
    ... ]
    >>> edges = [
    ...     {"source": "embed", "target": "L0H2", "receiver": "q", "score": 0.3},
    ...     {"source": "L0H2", "target": "L1H4", "receiver": "k", "score": 0.9},
    ...     {"source": "L1H4", "target": "logits", "score": 1.4},
    ... ]
    >>> circuit_graph(nodes, edges, title="induction").save("circuit.html")

Edges run upwards through the model: from a lower layer to a higher one, or
inside one layer from a head to that layer's MLP (which reads the attention
output). Anything else (an edge into an embedding, out of the logits, or
downwards) is refused, because it cannot be an edge of a transformer's graph
and most likely means source and target were swapped.
"""

import difflib
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .html import RenderedHTML, render
from .props import as_array, check_finite, check_shape, check_square, check_tokens, rounded_list

NODE_KINDS = ("embed", "head", "mlp", "logits")
RECEIVERS = ("q", "k", "v")
#: Edges drawn when the view opens, strongest first (a GPT-2-small graph has ~32k).
DEFAULT_TOP_N = 200
#: Significant digits kept of each score in the HTML (the view shows four).
SCORE_DIGITS = 6


def _records(value: Any, name: str) -> tuple[list[Mapping], bool]:
    """A list of mappings from a list of dicts or a pandas DataFrame (one row per item), and whether it was a frame."""
    frame = hasattr(value, "to_dict") and hasattr(value, "columns")  # a DataFrame, without importing pandas
    if frame:
        value = value.to_dict("records")
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise ValueError(f"{name} must be a list of dicts (or a pandas DataFrame), got {type(value).__name__}")
    records = list(value)
    for i, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise ValueError(f"{name}[{i}] must be a dict, got {type(record).__name__} {record!r}")
    return records, frame


def _missing(value: Any, frame: bool) -> bool:
    """None; in a DataFrame also the NaN / NA it puts in an empty cell of an optional column.

    Outside a DataFrame a NaN is a value, and refused where a number is expected.
    """
    if value is None:
        return True
    if not frame:
        return False
    try:
        return bool(value != value)  # only NaN differs from itself
    except TypeError:  # pandas.NA: "boolean value of NA is ambiguous"
        return True
    except ValueError:  # an array: not missing (and refused further on)
        return False


def _integer(value: Any, name: str) -> int:
    """An int; a whole float is accepted too (a DataFrame column with gaps holds 2.0 for 2)."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:  # numpy / torch scalar
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    return int(value)


def _score(value: Any, name: str) -> float:
    """A finite float, rounded to SCORE_DIGITS significant digits."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:  # numpy / torch scalar
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} is {value}; expected a finite number")
    return float(f"{value:.{SCORE_DIGITS}g}") or 0.0  # no "-0"


def _check_nodes(nodes: Any) -> list[dict[str, Any]]:
    checked: list[dict[str, Any]] = []
    first_index: dict[str, int] = {}
    head_slots: dict[tuple[int, int], int] = {}
    records, frame = _records(nodes, "nodes")
    for i, node in enumerate(records):
        where = f"nodes[{i}]"
        for key in ("id", "layer", "kind"):
            if key not in node or _missing(node[key], frame):
                raise ValueError(f"{where} has no {key!r}; a node is {{id, layer, kind, label, head?, score?}}")
        node_id = node["id"]
        if not isinstance(node_id, str) or not node_id:
            raise ValueError(f"{where}.id must be a non-empty str, got {node_id!r}")
        if node_id in first_index:
            raise ValueError(f"{where}.id {node_id!r} duplicates nodes[{first_index[node_id]}].id; node ids must be unique")
        first_index[node_id] = i
        kind = node["kind"]
        if kind not in NODE_KINDS:
            raise ValueError(f"{where}.kind must be one of {', '.join(map(repr, NODE_KINDS))}, got {kind!r}")
        layer = _integer(node["layer"], f"{where}.layer")
        if kind == "embed" and layer != -1:
            raise ValueError(f"{where}.layer must be -1 for an embedding node ({node_id!r}), got {layer}")
        if kind in ("head", "mlp") and layer < 0:
            raise ValueError(f"{where}.layer must be >= 0 for a {kind} node ({node_id!r}), got {layer}")
        label = node.get("label")
        label = node_id if _missing(label, frame) else label
        if not isinstance(label, str):
            raise ValueError(f"{where}.label must be a str, got {type(label).__name__} {label!r}")
        prop: dict[str, Any] = {"id": node_id, "layer": layer, "kind": kind, "label": label}
        if not _missing(node.get("head"), frame):
            if kind != "head":
                raise ValueError(f"{where}.head is given but {node_id!r} is a {kind} node; only heads have a head index")
            head = _integer(node["head"], f"{where}.head")
            if head < 0:
                raise ValueError(f"{where}.head must be >= 0, got {head}")
            if (layer, head) in head_slots:
                other = head_slots[(layer, head)]
                raise ValueError(f"{where} is layer {layer} head {head}, like nodes[{other}]; each head appears once")
            head_slots[(layer, head)] = i
            prop["head"] = head
        if not _missing(node.get("score"), frame):
            prop["score"] = _score(node["score"], f"{where}.score")
        checked.append(prop)
    if not checked:
        raise ValueError("nodes is empty; a circuit needs at least one node")
    logits_layers = {node["layer"] for node in checked if node["kind"] == "logits"}
    if logits_layers:
        inner = max((node["layer"] for node in checked if node["kind"] != "logits"), default=-1)
        low = min(logits_layers)
        if len(logits_layers) > 1 or low <= inner:
            raise ValueError(
                f"nodes: the logits must all sit on one layer above every head and MLP (n_layers), "
                f"got logits on layer(s) {sorted(logits_layers)} with heads/MLPs up to layer {inner}"
            )
    return checked


def _check_edges(edges: Any, nodes: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    by_id = {node["id"]: node for node in nodes}
    checked: list[dict[str, Any]] = []
    seen: dict[tuple[str, str, str | None], int] = {}
    records, frame = _records(edges, "edges")
    for i, edge in enumerate(records):
        where = f"edges[{i}]"
        for key in ("source", "target", "score"):
            if key not in edge or (key != "score" and _missing(edge[key], frame)):
                raise ValueError(f"{where} has no {key!r}; an edge is {{source, target, receiver?, score}}")
        ends = {}
        for key in ("source", "target"):
            node_id = edge[key]
            if not isinstance(node_id, str):
                raise ValueError(f"{where}.{key} must be a node id (str), got {type(node_id).__name__} {node_id!r}")
            if node_id not in by_id:
                close = difflib.get_close_matches(str(node_id), list(by_id), n=3)
                hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
                raise ValueError(f"{where}.{key} {node_id!r} is not the id of any node{hint}")
            ends[key] = by_id[node_id]
        source, target = ends["source"], ends["target"]
        receiver = edge.get("receiver")
        receiver = None if _missing(receiver, frame) else receiver
        if receiver is not None:
            if receiver not in RECEIVERS:
                raise ValueError(f"{where}.receiver must be 'q', 'k', 'v' or None, got {receiver!r}")
            if target["kind"] != "head":
                raise ValueError(
                    f"{where}.receiver is {receiver!r} but the target {target['id']!r} is a {target['kind']} node; "
                    f"only an attention head has q/k/v inputs"
                )
        if target["kind"] == "embed" or source["kind"] == "logits":
            raise ValueError(
                f"{where} goes from {source['id']!r} ({source['kind']}) to {target['id']!r} ({target['kind']}): "
                f"nothing flows into an embedding or out of the logits (source and target swapped?)"
            )
        same_layer_ok = source["layer"] == target["layer"] and source["kind"] == "head" and target["kind"] == "mlp"
        if not (source["layer"] < target["layer"] or same_layer_ok):
            raise ValueError(
                f"{where} goes from {source['id']!r} (layer {source['layer']}) to {target['id']!r} "
                f"(layer {target['layer']}); edges run to a later layer, or from a head to the MLP of its own "
                f"layer (source and target swapped?)"
            )
        key = (source["id"], target["id"], receiver)
        if key in seen:
            raise ValueError(
                f"{where} repeats edges[{seen[key]}] ({source['id']!r} -> {target['id']!r}, receiver {receiver!r})"
            )
        seen[key] = i
        prop: dict[str, Any] = {"source": source["id"], "target": target["id"]}
        if receiver is not None:
            prop["receiver"] = receiver
        prop["score"] = _score(edge["score"], f"{where}.score")
        checked.append(prop)
    return checked


def _check_patterns(patterns: Any, nodes: Sequence[Mapping[str, Any]], decimals: int) -> dict[str, Any]:
    if not isinstance(patterns, Mapping):
        raise ValueError(
            f"patterns must be a dict {{node id: {{'tokens': [...], 'pattern': [query_pos, key_pos]}}}}, "
            f"got {type(patterns).__name__}"
        )
    by_id = {node["id"]: node for node in nodes}
    checked = {}
    for node_id, entry in patterns.items():
        where = f"patterns[{node_id!r}]"
        if node_id not in by_id:
            close = difflib.get_close_matches(str(node_id), list(by_id), n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(f"{where}: {node_id!r} is not the id of any node{hint}")
        if by_id[node_id]["kind"] != "head":
            kind = by_id[node_id]["kind"]
            raise ValueError(f"{where}: {node_id!r} is a {kind} node; only heads have an attention pattern")
        if not isinstance(entry, Mapping) or "tokens" not in entry or "pattern" not in entry:
            raise ValueError(f"{where} must be a dict with 'tokens' [pos] and 'pattern' [query_pos, key_pos]")
        pattern = as_array(entry["pattern"], f"{where}['pattern']")
        check_shape(pattern, f"{where}['pattern']", "query_pos key_pos")
        check_square(pattern, f"{where}['pattern']")
        check_finite(pattern, f"{where}['pattern']")
        tokens = check_tokens(
            entry["tokens"], f"{where}['tokens']", length=pattern.shape[0], what=f"{where}['pattern'] query_pos/key_pos"
        )
        checked[node_id] = {"tokens": tokens, "pattern": rounded_list(pattern, decimals)}
    return checked


def circuit_graph(
    nodes: Sequence[Mapping[str, Any]],
    edges: Sequence[Mapping[str, Any]],
    patterns: Mapping[str, Mapping[str, Any]] | None = None,
    title: str | None = None,
    *,
    top_n: int | None = None,
    min_score: float | None = None,
    decimals: int = 3,
) -> RenderedHTML:
    """A circuit as a layered graph: embeddings at the bottom, layers upward, logits at the top.

    In each layer the heads sit in a row (head `h` in column `h`, so heads line
    up across layers) with the MLP to their right. Edge colour is the sign of
    the score (red positive, blue negative), width and opacity its magnitude;
    an edge with a `receiver` ends at that head's q, k or v port. Hover an edge
    or a node for its score; click a node for its strongest edges and, for a
    head in `patterns`, its attention pattern; a slider keeps the strongest
    edges only.

    Args:
        nodes: one dict per node (or a DataFrame with these columns):
            `id` (str, unique), `layer` (int: -1 for embeddings, 0..n_layers-1
            for heads and MLPs, n_layers for the logits), `kind` ("embed",
            "head", "mlp" or "logits"), `label` (str, default the id),
            `head` (int >= 0, heads only, optional: the head's index, its column),
            `score` (float, optional: colours the node).
        edges: one dict per edge (or a DataFrame): `source`, `target` (node
            ids; edges run to a later layer, or from a head to its own layer's
            MLP), `receiver` ("q", "k", "v" or None, optional: which input
            of the target head the edge feeds), `score` (finite float).
            At most one edge per (source, target, receiver).
        patterns: optional `{head node id: {"tokens": [pos] str,
            "pattern": [query_pos, key_pos] attention weights}}` (tensor,
            array or nested lists), shown when that head is clicked.
        title: heading shown above the view.
        top_n: how many edges (strongest |score| first) are drawn at first
            (default 200); the slider in the view changes it.
        min_score: instead of `top_n`: draw at first the edges with
            |score| >= min_score.
        decimals: rounding of the attention weights in the HTML (scores keep
            6 significant digits).

    Raises:
        ValueError: naming the field, for duplicate node ids, unknown edge
            endpoints, receivers other than q/k/v/None or on a non-head,
            non-finite scores, edges that run downwards, or bad patterns.

    Component props: `nodes [{id, layer, kind, label, head?, score?}]`,
    `edges [{source, target, receiver?, score}]`, `patterns {id: {tokens, pattern}}`,
    `title`, `topN`.
    """
    checked_nodes = _check_nodes(nodes)
    checked_edges = _check_edges(edges, checked_nodes)
    if top_n is not None and min_score is not None:
        raise ValueError("give top_n or min_score, not both: each sets which edges are drawn at first")
    if min_score is not None:
        threshold = _score(min_score, "min_score")
        top_n = sum(abs(edge["score"]) >= threshold for edge in checked_edges)
    top_n = DEFAULT_TOP_N if top_n is None else _integer(top_n, "top_n")
    if top_n < 0:
        raise ValueError(f"top_n must be >= 0 (edges drawn at first), got {top_n}")
    props: dict[str, Any] = {"nodes": checked_nodes, "edges": checked_edges, "topN": top_n}
    if patterns is not None:
        props["patterns"] = _check_patterns(patterns, checked_nodes, decimals)
    if title:
        props["title"] = title
    return render("CircuitGraph", **props)
