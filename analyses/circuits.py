"""Circuit discovery: attribution patching, edge attribution (EAP, EAP-IG), path patching, and
circuit faithfulness.

Activation patching (`analyses.patching`) asks what one activation matters for, one forward per
patch. Gradient-based attribution scores every node, or every *edge* of the computational
graph, in a few passes; a circuit found that way is then checked by patching everything outside
it and measuring how much of the behaviour is left.

**The graph.** The residual stream is a sum: every receiver reads the sum of what every upstream
node wrote. Upstream nodes are the embeddings (token + position), every head (its output,
`hook_result`) and every MLP (`hook_mlp_out`); receivers are every head's query, key and value
input (`hook_q_input`, `hook_k_input`, `hook_v_input`, one per head), every MLP's input
(`hook_mlp_in`) and the logits (the residual stream entering `ln_final`). An edge `u -> r` is
the part of `r`'s input that `u` wrote; it exists when `u` comes before `r` (a head of layer L
feeds the MLP of layer L and everything in later layers).

**Attribution patching** (Nanda 2023; Kramár et al. 2024): the effect of patching an activation
from the corrupted run to its clean value is, to first order,
`(clean - corrupted) . d metric / d activation`, with the gradient taken on the corrupted run:
one clean forward, one corrupted forward and one backward for every node at once.
`attribution_patch_heads`/`attribution_patch_residual` return `PatchingResult`s shaped like the
`analyses.patching` sweeps (values = corrupted metric + estimated effect), so the two compare
side by side.

**EAP** (Syed et al. 2023): the same estimate per edge: `(clean_u - corrupted_u) . d metric /
d input_r`, one backward for every edge. **EAP-IG** (Hanna et al. 2024) averages the gradient
over `steps` inputs interpolated between the corrupted and the clean embeddings (integrated
gradients), which is much closer to the true edge effects where the metric is not linear.

**Faithfulness.** Run the clean prompt with every edge *outside* the circuit patched to its
corrupted value (each receiver's input gets `corrupted_u - current_u` added for every edge not
in the circuit, through the per-head input hooks), and report the metric recovered as a fraction
of the clean - corrupted difference: 1 means the circuit alone carries the behaviour, 0 nothing.

**Path patching** (Wang et al. 2022): the effect of senders on receivers through the direct
paths only: the receivers' inputs get the senders' corrupted outputs in place of their clean
ones, every other node keeps its clean value (downstream of the receivers, the model is rerun).
Path patching and `edge_patching` (the true single-edge effects EAP estimates) run many edge
sets per forward pass (`edges_swapped` with a stack of masks).

**AtP*** (Kramár et al. 2024): `attribution_patch_heads(..., qk_fix=True)` recomputes the
attention softmax exactly for query/key patches (where plain AtP fails worst: a saturated
softmax has a near-zero gradient), `grad_drop=True` ranks nodes by the mean magnitude of
estimates with each layer's gradient dropped in turn (against cancellation between paths).

`induction_task(model)` gives the standard clean/corrupted pair, metric and read positions
(repeated random tokens), as used in notebook 05 and the tests.

The metric receives the logits at `read_positions`, `[batch, n_read, d_vocab]` (see
`analyses.metrics`), and must be differentiable for the attribution methods.
"""

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Optional, Sequence, Union

import pandas as pd
import plotly.graph_objects as go
import torch
from jaxtyping import Float
from torch import Tensor

from analyses._common import TokensLike, as_tokens, head_list, layer_list, position_list
from analyses.metrics import Metric
from analyses.patching import PatchingResult, _position_labels
from hookgpt.errors import ArgumentError, UnknownNameError

Port = Optional[Literal["q", "k", "v"]]

# ------------------------------------------------------------------ a standard task: induction


def induction_task(
    model: Any, seq_len: int = 20, batch: int = 8, seed: int = 0
) -> tuple[Tensor, Tensor, Metric, list[int]]:
    """The induction task of the circuit papers, ready for every function here: `(clean,
    corrupted, metric, read_positions)`.

    `clean` is `analyses.heads.repeated_random_tokens` (BOS, `seq_len` random tokens, the same
    again); `corrupted` has the first copy replaced by other random tokens (the second copy is
    kept, so only the repetition is gone). The metric is the mean log-prob of the correct next
    token over the second copy, read at `read_positions` (every position of the second copy but
    its last, whose next token is unknown)."""
    from analyses.heads import repeated_random_tokens

    clean = repeated_random_tokens(model, seq_len=seq_len, batch=batch, seed=seed)
    other = repeated_random_tokens(model, seq_len=seq_len, batch=batch, seed=seed + 1)
    corrupted = clean.clone()
    corrupted[:, 1 : seq_len + 1] = other[:, 1 : seq_len + 1]
    read = list(range(seq_len + 1, 2 * seq_len))
    labels = clean[:, [p + 1 for p in read]]

    def second_copy_log_prob(logits: Float[Tensor, "batch read_pos d_vocab"]) -> Float[Tensor, ""]:
        return logits.log_softmax(-1).gather(-1, labels[..., None].to(logits.device)).mean()

    return clean, corrupted, second_copy_log_prob, read


# ------------------------------------------------------------------ the graph


@dataclass(frozen=True)
class Node:
    """A node of the computational graph: `embed`, a head (`L1H2`), an MLP (`mlp1`) or `logits`."""

    kind: Literal["embed", "head", "mlp", "logits"]
    layer: int  # -1 for the embeddings, n_layers for the logits
    head: Optional[int] = None

    @property
    def name(self) -> str:
        return {"embed": "embed", "logits": "logits", "mlp": f"mlp{self.layer}"}.get(self.kind) or f"L{self.layer}H{self.head}"

    @property
    def order(self) -> int:
        """When the node writes (upstream) or reads (receiver): heads of layer L at 2L, its MLP at 2L + 1."""
        return {"embed": -1, "head": 2 * self.layer, "mlp": 2 * self.layer + 1, "logits": 2 * self.layer}[self.kind]


@dataclass(frozen=True)
class Receiver:
    """Where an edge arrives: a node, and for a head which of its inputs (q, k or v)."""

    node: Node
    port: Port = None

    @property
    def name(self) -> str:
        return self.node.name + ("" if self.port is None else f".{self.port}")


class Graph:
    """The upstream nodes, the receivers and which edges exist, for one model."""

    def __init__(self, model: Any):
        cfg = model.cfg
        if cfg.n_layers < 1:
            raise ArgumentError("a circuit needs at least one layer")
        self.n_layers, self.n_heads, self.attn_only = cfg.n_layers, cfg.n_heads, cfg.attn_only
        self.upstream: list[Node] = [Node("embed", -1)]
        self.receivers: list[Receiver] = []
        for layer in range(cfg.n_layers):
            heads = [Node("head", layer, h) for h in range(cfg.n_heads)]
            self.receivers += [Receiver(node, port) for port in ("q", "k", "v") for node in heads]
            self.upstream += heads
            if not cfg.attn_only:
                self.receivers.append(Receiver(Node("mlp", layer)))
                self.upstream.append(Node("mlp", layer))
        self.receivers.append(Receiver(Node("logits", cfg.n_layers)))
        up = torch.tensor([u.order for u in self.upstream])
        down = torch.tensor([r.node.order for r in self.receivers])
        self.mask = up[:, None] < down[None, :]  # [n_upstream, n_receivers]: which edges exist
        self._up_index = {u.name: i for i, u in enumerate(self.upstream)}
        self._recv_index = {r.name: i for i, r in enumerate(self.receivers)}

    @property
    def n_edges(self) -> int:
        return int(self.mask.sum())

    def upstream_index(self, name: str) -> int:
        if name not in self._up_index:
            raise UnknownNameError(f"no upstream node {name!r}; nodes are embed, L<layer>H<head>, mlp<layer>")
        return self._up_index[name]

    def receiver_index(self, name: str) -> int:
        if name not in self._recv_index:
            raise UnknownNameError(f"no receiver {name!r}; receivers are L<layer>H<head>.q/.k/.v, mlp<layer>, logits")
        return self._recv_index[name]

    def edge_mask(self, edges: Sequence[tuple[str, str]]) -> Tensor:
        """A `[n_upstream, n_receivers]` 0/1 mask of the named edges `(upstream, receiver)`."""
        mask = torch.zeros(self.mask.shape)
        for u, r in edges:
            i, j = self.upstream_index(u), self.receiver_index(r)
            if not self.mask[i, j]:
                raise ArgumentError(f"there is no edge {u} -> {r}: {u} does not come before {r}")
            mask[i, j] = 1.0
        return mask


# ------------------------------------------------------------------ upstream outputs and receiver inputs


def _upstream_run(
    model: Any, tokens: Tensor, read: Sequence[int]
) -> tuple[Float[Tensor, "batch pos upstream d_model"], Float[Tensor, "batch read_pos d_vocab"]]:
    """Every upstream node's output for `tokens`, stacked in graph order, and the logits at
    `read` (from the same forward pass)."""
    graph = Graph(model)
    names = ["hook_embed", "hook_pos_embed"] + [
        f"blocks.{l}.{n}" for l in range(model.cfg.n_layers) for n in ("attn.hook_result", "hook_mlp_out") if not (model.cfg.attn_only and n == "hook_mlp_out")
    ]
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=names, logit_positions=list(read))
    parts = [(cache["hook_embed"] + cache["hook_pos_embed"])[:, :, None]]
    for layer in range(model.cfg.n_layers):
        parts.append(cache[f"blocks.{layer}.attn.hook_result"])
        if not model.cfg.attn_only:
            parts.append(cache[f"blocks.{layer}.hook_mlp_out"][:, :, None])
    out = torch.cat(parts, dim=2)
    assert out.shape[2] == len(graph.upstream)
    return out, logits


def _upstream_outputs(model: Any, tokens: Tensor) -> Float[Tensor, "batch pos upstream d_model"]:
    """Every upstream node's output for `tokens`, stacked in graph order."""
    return _upstream_run(model, tokens, [tokens.shape[1] - 1])[0]


def _receiver_hooks(model: Any) -> list[tuple[str, Optional[str]]]:
    """(hook name, port) of every receiver input, in graph order of their first receiver."""
    hooks = []
    for layer in range(model.cfg.n_layers):
        hooks += [(f"blocks.{layer}.hook_{p}_input", p) for p in ("q", "k", "v")]
        if not model.cfg.attn_only:
            hooks.append((f"blocks.{layer}.hook_mlp_in", None))
    hooks.append((f"blocks.{model.cfg.n_layers - 1}.hook_resid_post", None))  # what ln_final reads
    return hooks


def _stack_receiver_grads(model: Any, grads: dict[str, Tensor]) -> Float[Tensor, "batch pos receiver d_model"]:
    """Gradients at every receiver's input, stacked in graph order (q, k, v of each layer's heads,
    then its MLP, ...; the logits last)."""
    parts = []
    for layer in range(model.cfg.n_layers):
        parts += [grads[f"blocks.{layer}.hook_{p}_input"] for p in ("q", "k", "v")]
        if not model.cfg.attn_only:
            parts.append(grads[f"blocks.{layer}.hook_mlp_in"][:, :, None])
    parts.append(grads[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"][:, :, None])
    return torch.cat(parts, dim=2)


def _requiring_grad(x: Tensor, hook: Any) -> Tensor:
    """A `hook_embed` hook: a model whose weights do not require gradients (frozen, as for
    analysis) still gets them at every activation downstream."""
    return x if x.requires_grad else x.detach().requires_grad_()


def _receiver_gradients(
    model: Any, tokens: Tensor, metric: Metric, read: list[int], embeddings: Optional[Tensor] = None
) -> Float[Tensor, "batch pos receiver d_model"]:
    """d metric / d (every receiver's input), on `tokens`; with `embeddings` `[steps, batch, pos,
    d_model]`, summed over runs whose embedding (token + position) is replaced by each step's."""
    grads: dict[str, Tensor] = {}

    def save_grad(grad: Tensor, hook: Any) -> None:
        grads[hook.name] = grads[hook.name] + grad if hook.name in grads else grad.detach().clone()

    bwd = [(name, save_grad) for name, _ in _receiver_hooks(model)]
    batch = tokens.shape[0]
    steps = 1 if embeddings is None else embeddings.shape[0]
    fwd = []
    if embeddings is not None:
        flat = embeddings.reshape(steps * batch, *embeddings.shape[2:])
        fwd = [("hook_embed", lambda x, hook: flat.to(x.dtype)), ("hook_pos_embed", lambda x, hook: torch.zeros_like(x))]
        tokens = tokens.repeat(steps, 1)
    fwd.append(("hook_embed", _requiring_grad))
    with model.hooks(fwd_hooks=fwd, bwd_hooks=bwd), torch.enable_grad():
        logits = model(tokens, logit_positions=read)
        total = sum(metric(logits[s * batch : (s + 1) * batch]) for s in range(steps))
        total.backward()
    stacked = _stack_receiver_grads(model, grads)
    return stacked.reshape(steps, batch, *stacked.shape[1:]).sum(0) / steps


# ------------------------------------------------------------------ edge scores


@dataclass
class EdgeScores:
    """Scores of every edge: `scores[u, r]` for upstream node `u`, receiver `r` (0 where no edge)."""

    graph: Graph
    scores: Float[Tensor, "upstream receiver"]
    method: str
    clean_metric: float
    corrupted_metric: float

    def top(self, n: int) -> list[tuple[str, str, float]]:
        """The `n` edges with the largest |score|: (upstream, receiver, score)."""
        flat = self.scores.abs().flatten()
        flat[~self.graph.mask.flatten()] = -1.0
        order = flat.argsort(descending=True)[: min(n, self.graph.n_edges)]
        n_recv = self.scores.shape[1]
        return [(self.graph.upstream[i // n_recv].name, self.graph.receivers[i % n_recv].name, float(self.scores.flatten()[i])) for i in order.tolist()]

    def circuit(self, n: Optional[int] = None, threshold: Optional[float] = None) -> "Circuit":
        """The top-`n` edges by |score| (or those with |score| >= `threshold`), pruned to the
        edges on a path from the embeddings to the logits."""
        if (n is None) == (threshold is None):
            raise ArgumentError("give exactly one of n (top-n edges) or threshold (|score| >= threshold)")
        if n is not None:
            edges = [(u, r) for u, r, _ in self.top(n)]
        else:
            chosen = (self.scores.abs() >= threshold) & self.graph.mask
            edges = [(self.graph.upstream[i].name, self.graph.receivers[j].name) for i, j in chosen.nonzero().tolist()]
        return Circuit(self.graph, _pruned(self.graph, self.graph.edge_mask(edges)), self)

    def to_df(self) -> pd.DataFrame:
        """One row per edge: upstream, receiver, score; sorted by |score|."""
        rows = [dict(upstream=u, receiver=r, score=s) for u, r, s in self.top(self.graph.n_edges)]
        return pd.DataFrame(rows)

    def figure(self, title: Optional[str] = None) -> go.Figure:
        """Heatmap of the edge scores, upstream x receiver."""
        from analyses.plotting import heatmap

        return heatmap(
            self.scores,
            x_labels=[r.name for r in self.graph.receivers],
            y_labels=[u.name for u in self.graph.upstream],
            title=title or f"{self.method} edge scores",
            x_title="receiver",
            y_title="upstream",
            signed=True,
        )


def _pruned(graph: Graph, mask: Tensor) -> Tensor:
    """Keep only edges on a path embed -> ... -> logits through edges of `mask`."""
    n_recv = len(graph.receivers)
    # a receiver node "feeds the logits" if it is the logits, or its node (as upstream) has a kept
    # edge to a receiver that feeds the logits; walk receivers from the top down
    feeds = torch.zeros(n_recv, dtype=torch.bool)
    up_feeds = torch.zeros(len(graph.upstream), dtype=torch.bool)
    for j in sorted(range(n_recv), key=lambda j: -graph.receivers[j].node.order):
        node = graph.receivers[j].node
        if node.kind == "logits":
            feeds[j] = True
        else:
            feeds[j] = bool(up_feeds[graph.upstream_index(node.name)])
        if feeds[j]:
            up_feeds |= mask[:, j].bool()
    # an upstream node is "reached" if it is the embeddings, or one of its receivers has a kept
    # edge from a reached node; walk upward
    reached_up = torch.zeros(len(graph.upstream), dtype=torch.bool)
    reached_up[0] = True
    for i in sorted(range(1, len(graph.upstream)), key=lambda i: graph.upstream[i].order):
        node = graph.upstream[i]
        into = [j for j, r in enumerate(graph.receivers) if r.node == node]
        reached_up[i] = any(bool((mask[:, j].bool() & reached_up).any()) for j in into)
    keep = mask.bool() & reached_up[:, None] & feeds[None, :]
    return keep.float()


@dataclass
class Circuit:
    """A set of edges (a 0/1 mask over the graph's edges)."""

    graph: Graph
    mask: Tensor  # [n_upstream, n_receivers]
    scores: Optional[EdgeScores] = None

    @property
    def edges(self) -> list[tuple[str, str]]:
        return [(self.graph.upstream[i].name, self.graph.receivers[j].name) for i, j in self.mask.nonzero().tolist()]

    @property
    def nodes(self) -> list[str]:
        names = {u for u, _ in self.edges} | {r.split(".")[0] for _, r in self.edges}
        return sorted(names)

    def view(self, patterns: Optional[dict] = None, title: Optional[str] = None) -> Any:
        """The circuit drawn as a layered graph (`analyses.render.circuit_graph`)."""
        from analyses import render

        score = (lambda i, j: float(self.scores.scores[i, j])) if self.scores is not None else (lambda i, j: 1.0)
        nodes = []
        for name in self.nodes:
            node = next((n for n in self.graph.upstream if n.name == name), None) or Node("logits", self.graph.n_layers)
            entry = dict(id=name, layer=node.layer, kind=node.kind, label=name)
            if node.head is not None:
                entry["head"] = node.head
            nodes.append(entry)
        edges = []
        for i, j in self.mask.nonzero().tolist():
            receiver = self.graph.receivers[j]
            edges.append(dict(source=self.graph.upstream[i].name, target=receiver.node.name, receiver=receiver.port, score=score(i, j)))
        return render.circuit_graph(nodes, edges, patterns=patterns, title=title)


def edge_attribution(
    model: Any,
    clean: TokensLike,
    corrupted: TokensLike,
    metric: Metric,
    method: Literal["EAP", "EAP-IG"] = "EAP",
    steps: int = 5,
    read_positions: Union[int, Sequence[int]] = -1,
) -> EdgeScores:
    """Score every edge of the graph: EAP (one backward on the corrupted run) or EAP-IG (the
    gradient averaged over `steps` embeddings interpolated from corrupted to clean)."""
    if method not in ("EAP", "EAP-IG"):
        raise ArgumentError(f"method must be 'EAP' or 'EAP-IG', got {method!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ArgumentError(f"steps must be a positive int, got {steps!r}")
    clean_tokens, corrupted_tokens, read = _pair(model, clean, corrupted, read_positions)
    graph = Graph(model)
    clean_out, clean_logits = _upstream_run(model, clean_tokens, read)
    corrupted_out, corrupted_logits = _upstream_run(model, corrupted_tokens, read)
    with torch.no_grad():
        clean_metric, corrupted_metric = float(metric(clean_logits)), float(metric(corrupted_logits))
    if method == "EAP":
        grads = _receiver_gradients(model, corrupted_tokens, metric, read)
    else:
        alphas = (torch.arange(steps, dtype=clean_out.dtype, device=clean_out.device) + 1) / steps  # 1/steps .. 1 (Hanna et al.)
        clean_embed, corrupted_embed = clean_out[:, :, 0], corrupted_out[:, :, 0]
        embeddings = corrupted_embed + alphas[:, None, None, None] * (clean_embed - corrupted_embed)
        grads = _receiver_gradients(model, corrupted_tokens, metric, read, embeddings=embeddings)
    diff = clean_out - corrupted_out  # [batch, pos, upstream, d_model]
    scores = torch.einsum("bpud,bprd->ur", diff.double(), grads.double()).float().cpu() * graph.mask
    return EdgeScores(graph, scores, method, clean_metric, corrupted_metric)


def _pair(model: Any, clean: TokensLike, corrupted: TokensLike, read_positions: Any) -> tuple[Tensor, Tensor, list[int]]:
    clean_tokens, corrupted_tokens = as_tokens(model, clean), as_tokens(model, corrupted)
    if clean_tokens.shape != corrupted_tokens.shape:
        raise ArgumentError(f"clean {tuple(clean_tokens.shape)} and corrupted {tuple(corrupted_tokens.shape)} inputs must have the same shape")
    return clean_tokens, corrupted_tokens, position_list(read_positions, clean_tokens.shape[1], "read_positions")


# ------------------------------------------------------------------ running with edges swapped


@contextlib.contextmanager
def edges_swapped(model: Any, other: Float[Tensor, "batch pos upstream d_model"], swap: Tensor) -> Iterator[None]:
    """While active, a forward pass on some tokens runs with the edges of `swap` (a `[n_upstream,
    n_receivers]` mask; fractions allowed) taking their value from `other` (the upstream outputs
    of another run, from `_upstream_outputs`): each receiver's input gets
    `swap[u, r] * (other_u - current_u)` added for every upstream node `u`.

    `swap` may also be a stack `[n_sets, n_upstream, n_receivers]`: the forward pass then takes
    the prompts repeated `n_sets` times (set-major, `tokens.repeat(n_sets, 1)`), and the rows of
    set `s` get mask `swap[s]`: many edge sets in one forward pass."""
    graph = Graph(model)
    swap = swap.to(device=other.device, dtype=other.dtype)
    stacked = swap.ndim == 3
    if swap.shape[-2:] != graph.mask.shape or swap.ndim not in (2, 3):
        raise ArgumentError(
            f"swap must be [n_upstream, n_receivers] = {tuple(graph.mask.shape)} or a stack [n_sets, ...] of them, got {tuple(swap.shape)}"
        )
    if stacked:  # one row of weights per prompt row: [rows, n_upstream, n_receivers]
        swap = swap.repeat_interleave(other.shape[0], dim=0)
        other = other.repeat(swap.shape[0] // other.shape[0], 1, 1, 1)
    current: dict[int, Tensor] = {}  # upstream index -> this run's output
    n_heads = model.cfg.n_heads

    def record(index: Union[int, slice]) -> Any:
        def save(act: Tensor, hook: Any) -> None:
            if isinstance(index, slice):
                for h in range(n_heads):
                    current[index.start + h] = act[:, :, h]
            else:
                current[index] = act
        return save

    embed_parts: dict[str, Tensor] = {}

    def record_embed(act: Tensor, hook: Any) -> None:
        if hook.name == "hook_embed":  # a new forward pass begins: forget the last one's outputs
            current.clear()
            embed_parts.clear()
        embed_parts[hook.name] = act
        if len(embed_parts) == 2:
            current[0] = embed_parts["hook_embed"] + embed_parts["hook_pos_embed"]

    def delta(first: int, width: int) -> Union[int, Tensor]:
        """Σ_u swap[u, col] (other_u - current_u) for receiver columns first .. first + width:
        [batch, pos, width, d_model] (0 when nothing is swapped there)."""
        total: Union[int, Tensor] = 0
        for u, act in current.items():
            weights = swap[..., u, first : first + width]  # [width] or [rows, width]
            if bool((weights != 0).any()):
                w = weights[None, None, :, None] if not stacked else weights[:, None, :, None]
                total = total + w * (other[:, :, u] - act)[:, :, None, :]
        return total

    def make_receiver_hook(first: int, per_head: bool) -> Any:
        width = n_heads if per_head else 1

        def add_swapped(act: Tensor, hook: Any) -> Tensor:
            if stacked and act.shape[0] != other.shape[0]:
                raise ArgumentError(
                    f"with a stack of swap masks the forward pass must run the prompts repeated once per set "
                    f"({other.shape[0]} rows), got {act.shape[0]} rows"
                )
            change = delta(first, width)
            if isinstance(change, int):
                return act
            return act + (change if per_head else change[:, :, 0])

        return add_swapped

    fwd = [("hook_embed", record_embed), ("hook_pos_embed", record_embed)]
    index = 1
    for layer in range(model.cfg.n_layers):
        fwd.append((f"blocks.{layer}.attn.hook_result", record(slice(index, index + n_heads))))
        index += n_heads
        if not model.cfg.attn_only:
            fwd.append((f"blocks.{layer}.hook_mlp_out", record(index)))
            index += 1
    column = 0
    for name, port in _receiver_hooks(model):
        per_head = port is not None
        fwd.append((name, make_receiver_hook(column, per_head)))
        column += n_heads if per_head else 1
    with model.hooks(fwd_hooks=fwd):
        yield


def _metric_with_swap(model, tokens, other, swap, metric, read) -> float:
    with torch.no_grad(), edges_swapped(model, other, swap):
        return float(metric(model(tokens, logit_positions=read)))


def _metrics_with_swaps(model, tokens, other, swaps: Tensor, metric, read, max_rows: int = 256) -> Tensor:
    """The metric for each mask of `swaps` `[n_sets, n_upstream, n_receivers]`, many sets per
    forward pass (at most `max_rows` prompt rows)."""
    batch = tokens.shape[0]
    per_forward = max(1, max_rows // batch)
    values = []
    for start in range(0, swaps.shape[0], per_forward):
        chunk = swaps[start : start + per_forward]
        with torch.no_grad(), edges_swapped(model, other, chunk):
            logits = model(tokens.repeat(chunk.shape[0], 1), logit_positions=read)
        values += [float(metric(logits[s * batch : (s + 1) * batch])) for s in range(chunk.shape[0])]
    return torch.tensor(values, dtype=torch.float64)


def faithfulness(
    model: Any,
    clean: TokensLike,
    corrupted: TokensLike,
    metric: Metric,
    circuit: Union[Circuit, Tensor],
    read_positions: Union[int, Sequence[int]] = -1,
) -> float:
    """The fraction of the clean - corrupted metric difference kept when every edge outside
    `circuit` is patched to its corrupted value (1: the circuit does it all; 0: nothing)."""
    clean_tokens, corrupted_tokens, read = _pair(model, clean, corrupted, read_positions)
    graph = Graph(model)
    mask = (circuit.mask if isinstance(circuit, Circuit) else circuit).detach().cpu().float()
    if mask.shape != graph.mask.shape:
        raise ArgumentError(f"circuit must be a Circuit or a [n_upstream, n_receivers] = {tuple(graph.mask.shape)} mask, got {tuple(mask.shape)}")
    corrupted_out, corrupted_logits = _upstream_run(model, corrupted_tokens, read)
    with torch.no_grad():
        clean_metric = float(metric(model(clean_tokens, logit_positions=read)))
        corrupted_metric = float(metric(corrupted_logits))
    if clean_metric == corrupted_metric:
        raise ArgumentError(f"the clean and corrupted runs give the same metric ({clean_metric}): there is no difference for a circuit to recover")
    outside = graph.mask.float() * (1.0 - mask)
    value = _metric_with_swap(model, clean_tokens, corrupted_out, outside, metric, read)
    return (value - corrupted_metric) / (clean_metric - corrupted_metric)


def faithfulness_curve(
    model: Any,
    clean: TokensLike,
    corrupted: TokensLike,
    metric: Metric,
    scores: EdgeScores,
    sizes: Sequence[int],
    read_positions: Union[int, Sequence[int]] = -1,
) -> pd.DataFrame:
    """Faithfulness of the top-n circuit (pruned) for each n in `sizes`: columns n_edges (asked),
    kept (after pruning) and faithfulness."""
    rows = []
    for n in sizes:
        circuit = scores.circuit(n=n)
        rows.append(dict(n_edges=n, kept=int(circuit.mask.sum()), faithfulness=faithfulness(model, clean, corrupted, metric, circuit, read_positions)))
    return pd.DataFrame(rows)


def edge_patching(
    model: Any,
    clean: TokensLike,
    corrupted: TokensLike,
    metric: Metric,
    edges: Sequence[tuple[str, str]],
    read_positions: Union[int, Sequence[int]] = -1,
) -> Tensor:
    """The true effect of each edge: the metric of the corrupted run with that one edge patched to
    its clean value, minus the corrupted metric (what EAP estimates)."""
    clean_tokens, corrupted_tokens, read = _pair(model, clean, corrupted, read_positions)
    graph = Graph(model)
    clean_out = _upstream_outputs(model, clean_tokens)
    with torch.no_grad():
        corrupted_metric = float(metric(model(corrupted_tokens)[:, read]))
    swaps = torch.stack([graph.edge_mask([edge]) for edge in edges]) if edges else torch.zeros(0, *graph.mask.shape)
    return _metrics_with_swaps(model, corrupted_tokens, clean_out, swaps, metric, read) - corrupted_metric


def path_patching(
    model: Any,
    clean: TokensLike,
    corrupted: TokensLike,
    metric: Metric,
    senders: Sequence[str],
    receivers: Sequence[str],
    read_positions: Union[int, Sequence[int]] = -1,
) -> pd.DataFrame:
    """Path patching (Wang et al. 2022), batched over senders: for each sender, the clean run with each receiver's
    input given the sender's corrupted output in place of its clean one (direct paths only; every
    other node keeps its clean value; downstream of the receivers the model is rerun).

    `senders`: upstream node names (`"L0H2"`, `"mlp0"`, `"embed"`); `receivers`: receiver names,
    e.g. `"L1H3.k"` for head 1.3's key input only, `"L1H3"` for its q, k and v, `"mlp1"`,
    `"logits"`. Returns one row per sender: the metric and its change from the clean run."""
    clean_tokens, corrupted_tokens, read = _pair(model, clean, corrupted, read_positions)
    graph = Graph(model)
    expanded = []
    for r in receivers:
        if r in graph._recv_index:
            expanded.append(r)
        elif f"{r}.q" in graph._recv_index:
            expanded += [f"{r}.{p}" for p in ("q", "k", "v")]
        else:
            graph.receiver_index(r)  # raises with the valid names
    corrupted_out = _upstream_outputs(model, corrupted_tokens)
    with torch.no_grad():
        clean_metric = float(metric(model(clean_tokens)[:, read]))
    masks = []
    for s in senders:
        edges = [(s, r) for r in expanded if graph.mask[graph.upstream_index(s), graph.receiver_index(r)]]
        if not edges:
            raise ArgumentError(f"sender {s} has no edge into any of the receivers {list(receivers)} (it must come before them)")
        masks.append(graph.edge_mask(edges))
    values = _metrics_with_swaps(model, clean_tokens, corrupted_out, torch.stack(masks), metric, read)  # batched over senders
    rows = [dict(sender=s, metric=float(v), change=float(v) - clean_metric) for s, v in zip(senders, values)]
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ attribution patching (nodes)


@dataclass
class _Runs:
    """What attribution patching needs: the clean activations, the corrupted ones, and the
    gradient of the metric on the corrupted run (one per GradDrop layer with `grad_drop`)."""

    clean: dict[str, Tensor]
    corrupted: dict[str, Tensor]
    grads: list[dict[str, Tensor]]
    clean_metric: float
    corrupted_metric: float


def _attribution_runs(
    model: Any, clean: Tensor, corrupted: Tensor, metric: Metric, names: list[str], read: list[int], grad_drop: bool = False
) -> _Runs:
    """One clean forward, then on the corrupted run one backward (or, with `grad_drop`, one per
    layer, each with the gradient through that layer's residual-stream contributions,
    `hook_attn_out` and `hook_mlp_out`, set to zero)."""
    from hookgpt.hooks import observe

    with torch.no_grad():
        clean_logits, clean_cache = model.run_with_cache(clean, names_filter=names)
    clean_acts = {n: clean_cache[n] for n in names}
    acts: dict[str, Tensor] = {}

    def save_act(act: Tensor, hook: Any) -> None:
        acts[hook.name] = act.detach()

    def drop(grad: Tensor, hook: Any) -> Tensor:
        return torch.zeros_like(grad)

    dropped: list[Optional[int]] = list(range(model.cfg.n_layers)) if grad_drop else [None]
    all_grads, value = [], None
    for layer in dropped:
        grads: dict[str, Tensor] = {}

        def save_grad(grad: Tensor, hook: Any) -> None:
            grads[hook.name] = grad.detach()

        bwd = [(n, save_grad) for n in names]
        if layer is not None:
            bwd += [(f"blocks.{layer}.hook_attn_out", drop)]
            if not model.cfg.attn_only:
                bwd += [(f"blocks.{layer}.hook_mlp_out", drop)]
        fwd = [(n, observe(save_act)) for n in names] + [("hook_embed", _requiring_grad)]
        with model.hooks(fwd_hooks=fwd, bwd_hooks=bwd), torch.enable_grad():
            logits = model(corrupted)
            value = metric(logits[:, read])
            value.backward()
        for n in names:  # an activation the (dropped) gradient never reaches has gradient zero
            grads.setdefault(n, torch.zeros_like(acts[n]))
        all_grads.append(grads)
    return _Runs(clean_acts, acts, all_grads, float(metric(clean_logits[:, read])), float(value.detach()))


def _combine(estimates: list[Tensor], grad_drop: bool, n_layers: int) -> Tensor:
    """Plain AtP: the one estimate. GradDrop (Kramár et al. 2024): sum over the dropped layers of
    |estimate|, divided by n_layers - 1 (a node's own layer always gives 0 there)."""
    if not grad_drop:
        return estimates[0]
    return torch.stack([e.abs() for e in estimates]).sum(0) / (n_layers - 1)


def _attribution(
    model: Any, clean: Tensor, corrupted: Tensor, metric: Metric, names: list[str], read: list[int]
) -> tuple[dict[str, Tensor], float, float]:
    """Per hook name, `(clean - corrupted) * d metric / d activation` (elementwise, [batch, ...]),
    with the clean and corrupted metrics."""
    runs = _attribution_runs(model, clean, corrupted, metric, names, read)
    products = {n: (runs.clean[n] - runs.corrupted[n]) * runs.grads[0][n] for n in names}
    return products, runs.clean_metric, runs.corrupted_metric


def _scores(q: Tensor, k: Tensor) -> Tensor:
    """Causal attention scores `[batch, head, query, key]` from q, k `[batch, pos, head, d_head]`."""
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    n = q.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    return scores.masked_fill(~causal, float("-inf"))


def _qk_fixed_effect(
    which: str, q: Tensor, k: Tensor, q_clean: Tensor, k_clean: Tensor, grad_pattern: Tensor, by_position: bool
) -> Float[Tensor, "pos head"]:
    """AtP*'s QK fix: the attention pattern after patching the query (or key) is recomputed
    exactly (the softmax is where AtP's linearisation fails worst), and only the step from the
    pattern to the metric is linearised: effect = sum (pattern' - pattern) * d metric / d pattern.
    Returns `[pos, head]` (one position patched at a time) or `[head]` (every position)."""
    scores = _scores(q, k)
    pattern = scores.softmax(-1)
    if which == "q":  # patching query i changes row i only, so all rows at once
        new = _scores(q_clean, k).softmax(-1)
        per_query = ((new - pattern) * grad_pattern).sum(dim=(0, 3)).T  # [query, head]
        return per_query if by_position else per_query.sum(0)  # rows are independent
    column = _scores(q, k_clean)  # the scores with every key clean
    if not by_position:
        return ((column.softmax(-1) - pattern) * grad_pattern).sum(dim=(0, 2, 3))
    out = torch.zeros(q.shape[1], q.shape[2], dtype=q.dtype, device=q.device)
    for p in range(q.shape[1]):  # patching key p changes column p of every query's row
        changed = scores.clone()
        changed[..., p] = column[..., p]
        out[p] = ((changed.softmax(-1) - pattern) * grad_pattern).sum(dim=(0, 2, 3))
    return out


def attribution_patch_heads(
    model: Any,
    clean: TokensLike,
    corrupted: TokensLike,
    metric: Metric,
    activation: Literal["z", "q", "k", "v", "pattern"] = "z",
    layers: Optional[Sequence[int]] = None,
    heads: Optional[Sequence[int]] = None,
    by_position: bool = False,
    read_positions: Union[int, Sequence[int]] = -1,
    qk_fix: bool = False,
    grad_drop: bool = False,
) -> PatchingResult:
    """The attribution-patching estimate of `analyses.patching.patch_heads`, from one backward:
    values `[layer, head]` (or `[layer, pos, head]`) = corrupted metric + estimated effect.

    AtP* (Kramár et al. 2024) corrections, off by default:

    - `qk_fix=True` (for `activation="q"` or `"k"`): the attention softmax is recomputed exactly
      for the patched queries or keys, and only the pattern -> metric step is linearised. Plain
      AtP misses patches that move a saturated softmax (a head that attends sharply in one run
      and diffusely in the other): its gradient there is near zero.
    - `grad_drop=True`: one backward per layer `l`, with the gradient through layer `l`'s
      contributions to the residual stream (`hook_attn_out`, `hook_mlp_out`) set to zero; the
      estimate is `sum_l |estimate_l| / (n_layers - 1)`. A node whose effects along different
      paths cancel in plain AtP (a false negative) keeps them here. The values are then
      corrupted metric + an estimated **magnitude** (the sign is lost), for ranking nodes.
      Needs at least 2 layers; costs n_layers backward passes.
    """
    if activation not in ("z", "q", "k", "v", "pattern"):
        raise ArgumentError(f"activation must be one of z, q, k, v, pattern, got {activation!r}")
    if qk_fix and activation not in ("q", "k"):
        raise ArgumentError(f"qk_fix applies to activation='q' or 'k' (the inputs of the attention softmax), not {activation!r}")
    if grad_drop and model.cfg.n_layers < 2:
        raise ArgumentError("grad_drop needs a model with at least 2 layers (it divides by n_layers - 1)")
    clean_tokens, corrupted_tokens, read = _pair(model, clean, corrupted, read_positions)
    layers, heads = layer_list(model, layers), head_list(model, heads)
    names = [f"blocks.{l}.attn.hook_{activation}" for l in layers]
    if qk_fix:
        names = [f"blocks.{l}.attn.hook_{a}" for l in layers for a in ("q", "k", "pattern")]
    runs = _attribution_runs(model, clean_tokens, corrupted_tokens, metric, names, read, grad_drop)
    seq_len = clean_tokens.shape[1]
    estimates = []
    for grads in runs.grads:
        per_layer = []
        for l in layers:
            name = f"blocks.{l}.attn.hook_{activation}"
            if qk_fix:
                hook = f"blocks.{l}.attn.hook_"
                q, k = runs.corrupted[hook + "q"], runs.corrupted[hook + "k"]
                q_clean, k_clean = runs.clean[hook + "q"], runs.clean[hook + "k"]
                per_layer.append(_qk_fixed_effect(activation, q, k, q_clean, k_clean, grads[hook + "pattern"], by_position))
                continue
            p = (runs.clean[name] - runs.corrupted[name]) * grads[name]
            # [batch, head, query, key] (pattern) or [batch, pos, head, d_head] -> [pos, head]
            per_pos = p.sum(dim=(0, 3)).T if activation == "pattern" else p.sum(dim=(0, 3))
            per_layer.append(per_pos if by_position else per_pos.sum(0))
        estimates.append(torch.stack(per_layer)[..., heads])  # [layer, pos, head] or [layer, head]
    effect = _combine(estimates, grad_drop, model.cfg.n_layers)
    clean_metric, corrupted_metric = runs.clean_metric, runs.corrupted_metric
    if by_position:
        labels = _position_labels(model, clean_tokens, corrupted_tokens, list(range(seq_len)))
        return PatchingResult(corrupted_metric + effect, ("layer", "pos", "head"), activation, layers, list(range(seq_len)), heads, clean_metric, corrupted_metric, labels)
    return PatchingResult(corrupted_metric + effect, ("layer", "head"), activation, layers, None, heads, clean_metric, corrupted_metric)


def attribution_patch_residual(
    model: Any,
    clean: TokensLike,
    corrupted: TokensLike,
    metric: Metric,
    activation: Literal["resid_pre", "resid_mid", "attn_out", "mlp_out"] = "resid_pre",
    layers: Optional[Sequence[int]] = None,
    read_positions: Union[int, Sequence[int]] = -1,
) -> PatchingResult:
    """The attribution-patching estimate of `analyses.patching.patch_residual`: values `[layer, pos]`."""
    hooks = {"resid_pre": "hook_resid_pre", "resid_mid": "hook_resid_mid", "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out"}
    if activation not in hooks:
        raise ArgumentError(f"activation must be one of {sorted(hooks)}, got {activation!r}")
    if activation in ("resid_mid", "mlp_out") and model.cfg.attn_only:
        raise ArgumentError(f"an attention-only model has no {activation}")
    clean_tokens, corrupted_tokens, read = _pair(model, clean, corrupted, read_positions)
    layers = layer_list(model, layers)
    names = [f"blocks.{l}.{hooks[activation]}" for l in layers]
    products, clean_metric, corrupted_metric = _attribution(model, clean_tokens, corrupted_tokens, metric, names, read)
    effect = torch.stack([products[n].sum(dim=(0, 2)) for n in names])  # [layer, pos]
    positions = list(range(clean_tokens.shape[1]))
    labels = _position_labels(model, clean_tokens, corrupted_tokens, positions)
    return PatchingResult(corrupted_metric + effect, ("layer", "pos"), activation, layers, positions, None, clean_metric, corrupted_metric, labels)


def attribution_patch_neurons(
    model: Any,
    clean: TokensLike,
    corrupted: TokensLike,
    metric: Metric,
    layers: Optional[Sequence[int]] = None,
    read_positions: Union[int, Sequence[int]] = -1,
) -> Float[Tensor, "layer d_mlp"]:
    """Estimated effect of patching each MLP neuron (`mlp.hook_post`, every position): `[layer, d_mlp]`."""
    if model.cfg.attn_only:
        raise ArgumentError("an attention-only model has no MLP neurons")
    clean_tokens, corrupted_tokens, read = _pair(model, clean, corrupted, read_positions)
    layers = layer_list(model, layers)
    names = [f"blocks.{l}.mlp.hook_post" for l in layers]
    products, _, _ = _attribution(model, clean_tokens, corrupted_tokens, metric, names, read)
    return torch.stack([products[n].sum(dim=(0, 1)) for n in names])
