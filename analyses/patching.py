"""Activation patching: copy one activation from a clean run into a corrupted run and see how
much of the clean behaviour comes back.

Two prompts differ in one detail ("When John and Mary went to the store, Mary gave a bottle to"
vs the same with John and Mary swapped). A metric (e.g. the logit difference between the two
names) separates them. Patching the clean value of one activation (the residual stream at layer
L, position p; head h's output; ...) into the corrupted run and measuring the metric tells how
much of the difference that activation carries.

A sweep patches every (layer, position) or every head, one at a time: hundreds of forward passes.
Three observations make it fast:

1. **Batching.** Patches are independent, so many of them run as one forward pass: the batch
   dimension holds (patch, prompt) rows, patch-major, and each patch's hook edits only its rows.
2. **Nothing below the patched layer changes.** A patch at layer L needs no work in layers
   0..L-1: its rows start from the corrupted run's `resid_pre` at layer L. In a batch of patches at
   different layers, each patch joins the batch at its own layer (the batch grows as it climbs).
3. **Nothing before the patched position changes.** Attention is causal, so a patch at position p
   leaves positions < p exactly as in the corrupted run. Only positions >= p are fed in; their
   attention reads the keys and values of positions < p from a frozen `KVCache` entry holding the
   corrupted run's. So patches are grouped by position, one group per batch.

And only the positions the metric reads are unembedded (`ln_final` + `unembed` on those rows), so a
sweep never builds `[patches, pos, d_vocab]` logits. A patch that changes nothing (its clean value
equals the corrupted one, as at every position before the first token where the prompts differ)
runs no forward at all: its metric is the corrupted run's. The results equal the plain loop of
`run_with_hooks` patches (`method="naive"`) up to floating-point rounding.

**The metric** is a function of the logits at the read positions, `[batch, n_read, d_vocab]` (by
default `read_positions=-1`, the last position, so `[batch, 1, d_vocab]`), returning a scalar
(averaged over the prompts of the batch, if you like). It is called once per patch on exactly
the logits that patch produces. `logit_diff_metric` builds the usual normalised logit difference.

Clean and corrupted inputs must be token ids (or texts) of the same shape, without padding.
"""

from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional, Sequence, Union

import pandas as pd
import plotly.graph_objects as go
import torch
from jaxtyping import Float, Int
from torch import Tensor

from analyses._common import TokensLike, as_tokens, position_list, progress, rows_per_forward, token_id, token_strings
from analyses.plotting import heatmap
from hookgpt.kv_cache import KVCacheEntry

Metric = Callable[[Float[Tensor, "batch read_pos d_vocab"]], Float[Tensor, ""]]
TokenChoice = Union[int, str, Int[Tensor, "batch"]]

# ------------------------------------------------------------------ metrics


def _ids(tokens: TokenChoice, batch: int, device: torch.device, model: Any = None) -> Int[Tensor, "batch 1"]:
    if isinstance(tokens, str):
        if model is None:
            raise ValueError("pass token ids (or a model to look strings up)")
        tokens = token_id(model, tokens)
    ids = torch.as_tensor(tokens, device=device).long().flatten()
    if ids.shape[0] not in (1, batch):
        raise ValueError(f"need one token or one per prompt ({batch}), got {ids.shape[0]}")
    return ids.expand(batch)[:, None]


def logit_diff(logits: Float[Tensor, "batch pos d_vocab"], answer: TokenChoice, wrong: TokenChoice) -> Float[Tensor, ""]:
    """Mean over the batch of `logit[answer] - logit[wrong]` at the last position of `logits`."""
    last = logits[:, -1]  # [batch, d_vocab]
    answer_ids = _ids(answer, last.shape[0], last.device)
    wrong_ids = _ids(wrong, last.shape[0], last.device)
    return (last.gather(-1, answer_ids) - last.gather(-1, wrong_ids)).mean()


def logit_diff_metric(
    clean_logits: Float[Tensor, "batch pos d_vocab"],
    corrupted_logits: Float[Tensor, "batch pos d_vocab"],
    answer: TokenChoice,
    wrong: TokenChoice,
    model: Any = None,
) -> Metric:
    """A patching metric: the logit difference (answer - wrong, at the last position, averaged over
    the batch) rescaled so the corrupted run gives 0 and the clean run gives 1.

    `answer`/`wrong` are token ids, or single-token strings when `model` is given to look them up.

    `clean_logits`/`corrupted_logits` are the two unpatched runs' logits (all positions, or just
    the read positions: only the last one is used). The returned metric likewise reads the last
    of the positions it is given, so keep the answer position last in `read_positions`.
    """
    if isinstance(answer, str) or isinstance(wrong, str):
        if model is None:
            raise ValueError(f"answer {answer!r} / wrong {wrong!r}: strings need model=... to be looked up; or pass token ids")
        answer, wrong = (token_id(model, t) if isinstance(t, str) else t for t in (answer, wrong))
    clean_diff = logit_diff(clean_logits, answer, wrong)
    corrupted_diff = logit_diff(corrupted_logits, answer, wrong)
    if torch.isclose(clean_diff, corrupted_diff):
        raise ValueError(f"the clean and corrupted logit differences are equal ({float(clean_diff):.4g}): nothing to recover")

    def normalised_logit_diff(logits: Float[Tensor, "batch read_pos d_vocab"]) -> Float[Tensor, ""]:
        return (logit_diff(logits, answer, wrong) - corrupted_diff) / (clean_diff - corrupted_diff)

    return normalised_logit_diff


# ------------------------------------------------------------------ what a patch is

# activation name -> (hook name template, layout of the activation after the batch dimension)
ACTIVATIONS: dict[str, tuple[str, str]] = {
    "resid_pre": ("blocks.{layer}.hook_resid_pre", "pos"),
    "resid_mid": ("blocks.{layer}.hook_resid_mid", "pos"),
    "attn_out": ("blocks.{layer}.hook_attn_out", "pos"),
    "mlp_out": ("blocks.{layer}.hook_mlp_out", "pos"),
    "z": ("blocks.{layer}.attn.hook_z", "pos head"),
    "q": ("blocks.{layer}.attn.hook_q", "pos head"),
    "k": ("blocks.{layer}.attn.hook_k", "pos head"),
    "v": ("blocks.{layer}.attn.hook_v", "pos head"),
    "pattern": ("blocks.{layer}.attn.hook_pattern", "head pos"),  # pos = the query position
}


@dataclass(frozen=True)
class Patch:
    """One patch: the activation at `layer`, at `position` (None: every position), of `head`
    (None: the whole activation; required for head activations z/q/k/v/pattern)."""

    layer: int
    position: Optional[int] = None
    head: Optional[int] = None

    @property
    def first_position(self) -> int:
        """The first position this patch can change."""
        return 0 if self.position is None else self.position


def _index(layout: str, patch: Patch, offset: int = 0) -> tuple:
    """Where `patch` lies in an activation (after the batch dim) whose positions start at `offset`."""
    pos = slice(None) if patch.position is None else patch.position - offset
    if layout == "pos":
        return (pos,)
    if layout == "pos head":
        return (pos, patch.head)
    return (patch.head, pos)


def _check(model: Any, activation: str, patches: Sequence[Patch], seq_len: int) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; patchable: {sorted(ACTIVATIONS)}")
    if activation in ("resid_mid", "mlp_out") and model.cfg.attn_only:
        raise ValueError(f"an attention-only model has no {activation}")
    per_head = ACTIVATIONS[activation][1] != "pos"
    for patch in patches:
        if not 0 <= patch.layer < model.cfg.n_layers:
            raise ValueError(f"{patch}: layer out of range [0, {model.cfg.n_layers})")
        if patch.position is not None and not 0 <= patch.position < seq_len:
            raise ValueError(f"{patch}: position out of range [0, {seq_len})")
        if per_head != (patch.head is not None) or (per_head and not 0 <= patch.head < model.cfg.n_heads):
            raise ValueError(f"{patch}: {activation} patches need {'a head in [0, n_heads)' if per_head else 'head=None'}")


# ------------------------------------------------------------------ the engine


@dataclass
class _Runs:
    """What the patched runs need from the two unpatched runs."""

    clean_acts: dict[str, Tensor]  # hook name -> clean activation
    corrupted_cache: Any  # resid_pre, k, v of every layer and the patched activation (fast method)
    corrupted_read_logits: Float[Tensor, "batch read_pos d_vocab"]
    clean_read_logits: Float[Tensor, "batch read_pos d_vocab"]


def patch_activations(
    model: Any,
    clean: TokensLike,
    corrupted: TokensLike,
    metric: Metric,
    activation: str,
    patches: Sequence[Patch],
    read_positions: Union[int, Sequence[int]] = -1,
    method: Literal["fast", "naive"] = "fast",
    batch_size: Optional[int] = None,
    memory_mb: float = 1024,
    disable: Optional[bool] = None,
) -> tuple[Float[Tensor, "patch"], float, float]:
    """Run each patch (clean `activation` into the corrupted run); returns
    (metric per patch, clean metric, corrupted metric).

    Args:
        model: a HookedGPT.
        clean, corrupted: texts or token ids `[batch, pos]` of the same shape, unpadded.
        metric: logits at `read_positions` `[batch, n_read, d_vocab]` -> scalar.
        activation: one of `ACTIVATIONS` (resid_pre, resid_mid, attn_out, mlp_out, z, q, k, v, pattern).
        patches: what to patch, one forward's worth each.
        read_positions: the positions whose logits the metric reads (default: the last).
        method: "fast" (batched, reusing the corrupted run; see the module docstring) or "naive"
            (one `run_with_hooks` per patch; the reference).
        batch_size: rows (patches x prompts) per forward in the fast method; default from `memory_mb`.
        disable: hide the progress bar (default: hidden when not in a terminal).
    """
    if method not in ("fast", "naive"):
        raise ValueError(f"method must be 'fast' or 'naive', got {method!r}")
    clean_tokens, corrupted_tokens = as_tokens(model, clean), as_tokens(model, corrupted)
    if clean_tokens.shape != corrupted_tokens.shape:
        raise ValueError(
            f"clean {tuple(clean_tokens.shape)} and corrupted {tuple(corrupted_tokens.shape)} inputs must have the same "
            "shape (same prompts count, same token length)"
        )
    batch, seq_len = corrupted_tokens.shape
    _check(model, activation, patches, seq_len)
    read = position_list(read_positions, seq_len, "read_positions")
    hook_template, layout = ACTIVATIONS[activation]

    with torch.no_grad():
        runs = _unpatched_runs(model, clean_tokens, corrupted_tokens, hook_template, patches, read, method)
        clean_metric = float(metric(runs.clean_read_logits))
        corrupted_metric = float(metric(runs.corrupted_read_logits))
        if method == "naive":
            values = _naive(model, corrupted_tokens, metric, hook_template, layout, patches, read, runs, disable)
        else:
            # A patch whose clean value equals the corrupted one (e.g. before the first token where
            # the prompts differ) leaves the corrupted run as it is: no forward needed.
            values = torch.full((len(patches),), corrupted_metric)
            to_run = [i for i, patch in enumerate(patches) if _changes_something(runs, hook_template, layout, patch)]
            patches_per_forward = max(1, (batch_size or rows_per_forward(model, seq_len, memory_mb, len(read))) // batch)
            to_run_patches = [patches[i] for i in to_run]
            values[to_run] = _fast(
                model, metric, hook_template, layout, to_run_patches, read, runs, batch, patches_per_forward, disable
            )
    return values, clean_metric, corrupted_metric


def _changes_something(runs: _Runs, hook_template: str, layout: str, patch: Patch) -> bool:
    name = hook_template.format(layer=patch.layer)
    where = (slice(None),) + _index(layout, patch)
    return not torch.equal(runs.clean_acts[name][where], runs.corrupted_cache[name][where])


def _unpatched_runs(
    model: Any, clean: Tensor, corrupted: Tensor, hook_template: str, patches: Sequence[Patch], read: list[int], method: str
) -> _Runs:
    names = sorted({hook_template.format(layer=p.layer) for p in patches})
    clean_logits, clean_cache = model.run_with_cache(clean, names_filter=names)
    if method == "fast":
        wanted = ("hook_resid_pre", "attn.hook_k", "attn.hook_v")
        corrupted_logits, corrupted_cache = model.run_with_cache(
            corrupted, names_filter=lambda name: name.endswith(wanted) or name in names
        )
    else:
        corrupted_logits, corrupted_cache = model(corrupted), None
    return _Runs({name: clean_cache[name] for name in names}, corrupted_cache, corrupted_logits[:, read], clean_logits[:, read])


def _naive(
    model: Any,
    corrupted: Tensor,
    metric: Metric,
    hook_template: str,
    layout: str,
    patches: Sequence[Patch],
    read: list[int],
    runs: _Runs,
    disable: Optional[bool],
) -> Tensor:
    """The reference: one full forward of the corrupted input per patch."""
    values = torch.zeros(len(patches))
    for i, patch in enumerate(progress(patches, disable=disable, desc="patching (naive)")):
        name = hook_template.format(layer=patch.layer)
        where = (slice(None),) + _index(layout, patch)

        def patch_hook(activation: Tensor, hook: Any) -> Tensor:
            activation = activation.clone()
            activation[where] = runs.clean_acts[name][where]
            return activation

        logits = model.run_with_hooks(corrupted, fwd_hooks=[(name, patch_hook)])
        values[i] = float(metric(logits[:, read]))
    return values


def _fast(
    model: Any,
    metric: Metric,
    hook_template: str,
    layout: str,
    patches: Sequence[Patch],
    read: list[int],
    runs: _Runs,
    batch: int,
    patches_per_forward: int,
    disable: Optional[bool],
) -> Tensor:
    """Batched patching: group patches by their first position, sort each group by layer, and run
    each chunk of a group as one forward that starts at the chunk's lowest layer."""
    order = sorted(range(len(patches)), key=lambda i: (patches[i].first_position, patches[i].layer))
    chunks: list[list[int]] = []
    for i in order:
        same_group = chunks and patches[chunks[-1][0]].first_position == patches[i].first_position
        if same_group and len(chunks[-1]) < patches_per_forward:
            chunks[-1].append(i)
        else:
            chunks.append([i])

    values = torch.zeros(len(patches))
    for chunk in progress(chunks, disable=disable, desc="patching"):
        chunk_patches = [patches[i] for i in chunk]
        read_logits = _run_chunk(model, hook_template, layout, chunk_patches, read, runs, batch)
        for j, i in enumerate(chunk):
            values[i] = float(metric(read_logits[j * batch : (j + 1) * batch]))
    return values


def _run_chunk(
    model: Any,
    hook_template: str,
    layout: str,
    chunk: list[Patch],
    read: list[int],
    runs: _Runs,
    batch: int,
) -> Float[Tensor, "rows read_pos d_vocab"]:
    """One batched forward for patches that share their first position `start` and are sorted by
    layer. Rows are patch-major: patch j owns rows j*batch..(j+1)*batch. Returns their logits at
    the read positions."""
    start = chunk[0].first_position
    corrupted = runs.corrupted_cache
    n_layers = model.cfg.n_layers

    # The hooks: at layer L, the patches that join there write their clean values into their rows.
    joins: dict[int, list[int]] = {}  # layer -> indices (in chunk) of the patches joining there
    for j, patch in enumerate(chunk):
        joins.setdefault(patch.layer, []).append(j)

    def make_hook(layer: int) -> Callable:
        name = hook_template.format(layer=layer)

        def patch_hook(activation: Tensor, hook: Any) -> Tensor:
            activation = activation.clone()
            for j in joins[layer]:
                target = (slice(j * batch, (j + 1) * batch),) + _index(layout, chunk[j], offset=start)
                activation[target] = runs.clean_acts[name][(slice(None),) + _index(layout, chunk[j])]
            return activation

        return patch_hook

    fwd_hooks = [(hook_template.format(layer=layer), make_hook(layer)) for layer in joins]
    with model.hooks(fwd_hooks=fwd_hooks):
        resid = None  # [rows alive, seq_len - start, d_model]
        n_alive = 0
        for layer in range(chunk[0].layer, n_layers):
            if layer in joins:  # these patches start here, from the corrupted residual stream
                n_new = len(joins[layer])
                joining = corrupted["resid_pre", layer][:, start:].repeat(n_new, 1, 1)
                resid = joining if resid is None else torch.cat([resid, joining])
                n_alive += n_new
            past = None
            if start > 0:  # positions before `start` are the corrupted run's: reuse their keys/values
                past = KVCacheEntry(
                    corrupted["k", layer][:, :start].repeat(n_alive, 1, 1, 1),
                    corrupted["v", layer][:, :start].repeat(n_alive, 1, 1, 1),
                    frozen=True,
                )
            resid = model.blocks[layer](resid, None, past)

        # Unembed only the read positions; those before `start` are the corrupted run's logits.
        computed = [r - start for r in read if r >= start]
        logits = model.unembed(model.ln_final(resid[:, computed])) if computed else None
    columns, k = [], 0
    for r in read:
        if r >= start:
            columns.append(logits[:, k])
            k += 1
        else:
            columns.append(runs.corrupted_read_logits[:, read.index(r)].repeat(n_alive, 1))
    return torch.stack(columns, dim=1)


# ------------------------------------------------------------------ sweeps and their results


@dataclass
class PatchingResult:
    """The metric after each patch, shaped by what was swept: `[layer, pos]`, `[layer]`,
    `[layer, head]` or `[layer, pos, head]` (as TransformerLens' `patching` module)."""

    values: Tensor
    dims: tuple[str, ...]  # e.g. ("layer", "pos")
    activation: str
    layers: list[int]
    positions: Optional[list[int]]
    heads: Optional[list[int]]
    clean_metric: float
    corrupted_metric: float
    position_labels: Optional[list[str]] = None

    def to_df(self) -> pd.DataFrame:
        """One row per patch: layer, pos, head (where swept) and the metric."""
        axes = {"layer": self.layers, "pos": self.positions, "head": self.heads}
        index = pd.MultiIndex.from_product([axes[d] for d in self.dims], names=list(self.dims))
        df = pd.DataFrame({"metric": self.values.flatten().tolist()}, index=index).reset_index()
        df.insert(0, "activation", self.activation)
        return df

    def figure(self, title: Optional[str] = None) -> go.Figure:
        """Heatmap of the metric: layer x position, layer x head, or (layer, head) x position."""
        title = title or f"Patching {self.activation} (clean {self.clean_metric:.3g}, corrupted {self.corrupted_metric:.3g})"
        pos_labels = self.position_labels or ([str(p) for p in self.positions] if self.positions else None)
        layer_labels = [str(l) for l in self.layers]
        if self.dims == ("layer",):
            return heatmap(self.values[:, None], x_labels=["all positions"], y_labels=layer_labels, title=title, y_title="layer")
        if self.dims == ("layer", "pos"):
            return heatmap(self.values, x_labels=pos_labels, y_labels=layer_labels, title=title, x_title="position", y_title="layer")
        if self.dims == ("layer", "head"):
            head_labels = [str(h) for h in self.heads]
            return heatmap(self.values, x_labels=head_labels, y_labels=layer_labels, title=title, x_title="head", y_title="layer")
        rows = self.values.permute(0, 2, 1).reshape(len(self.layers) * len(self.heads), len(self.positions))
        row_labels = [f"L{l}H{h}" for l in self.layers for h in self.heads]
        return heatmap(rows, x_labels=pos_labels, y_labels=row_labels, title=title, x_title="position", y_title="head")


def _position_labels(model: Any, clean: Tensor, corrupted: Tensor, positions: list[int]) -> list[str]:
    """"3: ' Mary'", or "3: ' Mary'/' John'" where the first clean and corrupted prompts differ."""
    clean_strings, corrupted_strings = token_strings(model, clean[0]), token_strings(model, corrupted[0])
    return [
        f"{p}: {clean_strings[p]!r}" + ("" if clean_strings[p] == corrupted_strings[p] else f"/{corrupted_strings[p]!r}")
        for p in positions
    ]


def patch_residual(
    model: Any,
    clean: TokensLike,
    corrupted: TokensLike,
    metric: Metric,
    activation: Literal["resid_pre", "resid_mid", "attn_out", "mlp_out"] = "resid_pre",
    layers: Optional[Sequence[int]] = None,
    positions: Optional[Sequence[int]] = None,
    by_position: bool = True,
    **kwargs: Any,
) -> PatchingResult:
    """Patch a residual-stream-shaped activation (resid_pre, resid_mid, attn_out, mlp_out) at
    each (layer, position): values `[layer, pos]`; with `by_position=False` all positions at once:
    `[layer]`. `kwargs` go to `patch_activations` (read_positions, method, batch_size, memory_mb, disable)."""
    if ACTIVATIONS.get(activation, ("", ""))[1] != "pos":
        raise ValueError(f"patch_residual patches resid_pre, resid_mid, attn_out or mlp_out, not {activation!r}; use patch_heads")
    clean_tokens, corrupted_tokens = as_tokens(model, clean), as_tokens(model, corrupted)
    n_layers, seq_len = model.cfg.n_layers, corrupted_tokens.shape[1]
    layers = list(range(n_layers)) if layers is None else [l % n_layers for l in layers]
    if by_position:
        positions = position_list(positions, seq_len)
        patches = [Patch(l, p) for l in layers for p in positions]
    else:
        positions = None
        patches = [Patch(l) for l in layers]
    values, clean_metric, corrupted_metric = patch_activations(
        model, clean_tokens, corrupted_tokens, metric, activation, patches, **kwargs
    )
    if by_position:
        labels = _position_labels(model, clean_tokens, corrupted_tokens, positions)
        values = values.view(len(layers), len(positions))
        return PatchingResult(values, ("layer", "pos"), activation, layers, positions, None, clean_metric, corrupted_metric, labels)
    return PatchingResult(values, ("layer",), activation, layers, None, None, clean_metric, corrupted_metric)


def patch_heads(
    model: Any,
    clean: TokensLike,
    corrupted: TokensLike,
    metric: Metric,
    activation: Literal["z", "q", "k", "v", "pattern"] = "z",
    layers: Optional[Sequence[int]] = None,
    heads: Optional[Sequence[int]] = None,
    by_position: bool = False,
    positions: Optional[Sequence[int]] = None,
    **kwargs: Any,
) -> PatchingResult:
    """Patch one head's activation (z, q, k, v, or pattern) at every position: values
    `[layer, head]`; with `by_position=True` one position at a time (for the pattern: one query
    row): `[layer, pos, head]`. `kwargs` go to `patch_activations`."""
    if ACTIVATIONS.get(activation, ("", "pos"))[1] == "pos":
        raise ValueError(f"patch_heads patches z, q, k, v or pattern, not {activation!r}; use patch_residual")
    clean_tokens, corrupted_tokens = as_tokens(model, clean), as_tokens(model, corrupted)
    n_layers, seq_len = model.cfg.n_layers, corrupted_tokens.shape[1]
    layers = list(range(n_layers)) if layers is None else [l % n_layers for l in layers]
    heads = list(range(model.cfg.n_heads)) if heads is None else list(heads)
    if by_position:
        positions = position_list(positions, seq_len)
        patches = [Patch(l, p, h) for l in layers for p in positions for h in heads]
    else:
        positions = None
        patches = [Patch(l, None, h) for l in layers for h in heads]
    values, clean_metric, corrupted_metric = patch_activations(
        model, clean_tokens, corrupted_tokens, metric, activation, patches, **kwargs
    )
    if by_position:
        labels = _position_labels(model, clean_tokens, corrupted_tokens, positions)
        values = values.view(len(layers), len(positions), len(heads))
        dims = ("layer", "pos", "head")
        return PatchingResult(values, dims, activation, layers, positions, heads, clean_metric, corrupted_metric, labels)
    values = values.view(len(layers), len(heads))
    return PatchingResult(values, ("layer", "head"), activation, layers, None, heads, clean_metric, corrupted_metric)
