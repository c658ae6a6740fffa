"""Interventions: change activations on purpose (ablate, patch, steer), described as data.

A **site** names what to change: a hook point and an index into its activation.

    Site.head(3, 5)                  head 5 of blocks.3.attn.hook_z, every position
    Site.head(3, 5, pos=7, act="v")  its value vector at position 7
    Site.resid("pre", 2, pos=4)      blocks.2.hook_resid_pre at position 4
    Site.neuron(1, 300)              neuron 300 of blocks.1.mlp.hook_post
    Site.pattern(1, 0, query=9)      query row 9 of head 0's attention pattern in layer 1

An **intervention** says what to do there: `patch` (the value from another run's cache), `replace`
(a given value), `zero`, `mean` (over a reference batch), `resample` (from random prompts of a
reference batch, seeded), `add` (a steering vector, scaled), `scale`, `apply` (any function), or
`splice` (through a module such as a sparse autoencoder: `model.saes(sae)`).
A list of interventions is an **intervention set**: applied together, in one forward pass.

Three ways to run them:

- `with model.interventions(*ivs):` they hold for every forward pass inside the block, also
  `model.generate` (steering a generation), and are gone afterwards, also on error.
- `hooks_for(model, ivs)` gives `(name, fn)` pairs for `run_with_hooks`.
- `evaluate(model, tokens, sets, metric)`: **the batched engine**. Runs N intervention sets over
  the same prompts and returns the metric of each; every analysis that intervenes (ablation,
  patching, steering, circuits) runs through it.

## The engine, and why its fast path is exact

The plain method ("naive") is one `run_with_hooks` per set. The fast method gets the same numbers
from far less work, using only `HookedGPT.forward`'s public arguments:

1. **Batching**: sets are independent, so many run as one forward: rows are (set, prompt),
   set-major, and each set's hooks edit only its rows.
2. **Start at the lowest edited layer**: nothing below a set's first edited layer changes, so its
   rows start there from the unedited (base) run's residual stream (`start_at_layer`); sets of one
   forward join at their own layers as it climbs (`stop_at_layer`, then `start_at_layer`).
3. **Skip the unchanged prefix**: attention is causal, so positions before a set's first edited
   position are as in the base run. Only later positions are fed in; their attention reads the
   base run's keys and values of the earlier ones through a frozen `past_kv_cache`.
4. **Unembed only what the metric reads** (`logit_positions`).

Hooks you attached to the model yourself (a steering vector, an SAE) fire in the fast path exactly
as in the naive one: each hook is called once per set on a `[batch, pos, ...]` activation with
every position (the skipped prefix is filled in from the base run), as it would be in its own
forward pass. A hook that is not causal (that changes an earlier position depending on a later one)
would make the prefix differ from the base run: the engine checks that, and where it happens it
falls back to the naive method and says so once. Hooks must be deterministic functions of their
activation (not, say, counters or random noise).

The metric receives the logits at `read_positions`, `[batch, n_read, d_vocab]`, and returns a
scalar; it is called once per set, on exactly the logits that set's own forward would give.
"""

import contextlib
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal, Optional, Sequence, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm import tqdm

from hookgpt.hooks import HookHandle, HookPoint, HookShapeError, observe, resolve  # noqa: F401 (observe: re-exported)
from hookgpt.kv_cache import KVCache, KVCacheEntry

Metric = Callable[[Float[Tensor, "batch read_pos d_vocab"]], Float[Tensor, ""]]

# ------------------------------------------------------------------ sites


def _non_negative_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, Tensor) and value.numel() == 1 and not value.is_floating_point():
            value = int(value)
        else:
            raise TypeError(f"{what} must be an int, got {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"{what}={value} must be >= 0 (sites take concrete indices; count from 0)")
    return value


@dataclass(frozen=True)
class Site:
    """A hook point and an index into its activation (after the batch dimension).

    `index` holds ints and `slice(None)`s; `index[pos_dim]` is the position (an int, or
    `slice(None)` for every position). `bounds` lists `(what, value, cfg field)` range checks made
    against a model by `check`. Build sites with the constructors (`Site.head`, `Site.resid`, ...).
    """

    hook_name: str
    index: tuple = ()
    pos_dim: Optional[int] = 0
    label: str = ""
    bounds: tuple = ()

    # ---- constructors that read like the analysis

    @classmethod
    def at(cls, hook_name: str, pos: Optional[int] = None, *rest: Union[int, slice], label: Optional[str] = None) -> "Site":
        """Any hook point whose activation is `[batch, pos, ...]`: position `pos` (None: every
        position), then further indices `rest`."""
        if not isinstance(hook_name, str):
            raise TypeError(f"hook_name must be a str, got {type(hook_name).__name__}")
        p = slice(None) if pos is None else _non_negative_int(pos, "pos")
        where = "" if pos is None else f" @ pos {p}"
        return cls(hook_name, (p, *rest), 0, label or f"{hook_name}{where}")

    @classmethod
    def resid(cls, kind: str, layer: int, pos: Optional[int] = None) -> "Site":
        """The residual stream before (`pre`), inside (`mid`) or after (`post`) block `layer`."""
        if kind not in ("pre", "mid", "post"):
            raise ValueError(f"kind must be 'pre', 'mid' or 'post', got {kind!r}")
        return cls._block(f"hook_resid_{kind}", f"resid_{kind} {{layer}}", layer, pos)

    @classmethod
    def attn_out(cls, layer: int, pos: Optional[int] = None) -> "Site":
        """The attention layer's output (all heads and b_O) of block `layer`."""
        return cls._block("hook_attn_out", "attn{layer}", layer, pos)

    @classmethod
    def mlp_out(cls, layer: int, pos: Optional[int] = None) -> "Site":
        """The MLP's output of block `layer`."""
        return cls._block("hook_mlp_out", "mlp{layer}", layer, pos)

    mlp = mlp_out

    @classmethod
    def head(
        cls, layer: int, head: int, pos: Optional[int] = None, act: str = "z"
    ) -> "Site":
        """Head `head` of block `layer`: its `z` (output before W_O; the default), `q`, `k`, `v`
        or `result` (its output in the residual stream), at `pos` or every position."""
        if act not in ("z", "q", "k", "v", "result"):
            raise ValueError(f"act must be one of z, q, k, v, result, got {act!r}")
        layer, head = _non_negative_int(layer, "layer"), _non_negative_int(head, "head")
        p = slice(None) if pos is None else _non_negative_int(pos, "pos")
        suffix = "" if act == "z" else f" {act}"
        label = f"L{layer}H{head}{suffix}" + ("" if pos is None else f" @ pos {p}")
        bounds = (("layer", layer, "n_layers"), ("head", head, "n_heads"))
        return cls(f"blocks.{layer}.attn.hook_{act}", (p, head), 0, label, bounds)

    @classmethod
    def pattern(
        cls, layer: int, head: int, query: Optional[int] = None, act: str = "pattern"
    ) -> "Site":
        """Head `head`'s attention pattern (or pre-softmax scores) in block `layer`: the row of
        query position `query`, or every row."""
        if act not in ("pattern", "attn_scores"):
            raise ValueError(f"act must be 'pattern' or 'attn_scores', got {act!r}")
        layer, head = _non_negative_int(layer, "layer"), _non_negative_int(head, "head")
        q = slice(None) if query is None else _non_negative_int(query, "query")
        label = f"L{layer}H{head} {act}" + ("" if query is None else f" @ query {q}")
        bounds = (("layer", layer, "n_layers"), ("head", head, "n_heads"))
        return cls(f"blocks.{layer}.attn.hook_{act}", (head, q), 1, label, bounds)

    @classmethod
    def neuron(cls, layer: int, neuron: int, pos: Optional[int] = None, act: str = "post") -> "Site":
        """MLP neuron `neuron` of block `layer`, after (`post`, the default) or before the nonlinearity."""
        if act not in ("post", "pre"):
            raise ValueError(f"act must be 'post' or 'pre', got {act!r}")
        layer, neuron = _non_negative_int(layer, "layer"), _non_negative_int(neuron, "neuron")
        p = slice(None) if pos is None else _non_negative_int(pos, "pos")
        label = f"L{layer}N{neuron}" + ("" if pos is None else f" @ pos {p}")
        bounds = (("layer", layer, "n_layers"), ("neuron", neuron, "d_mlp"))
        return cls(f"blocks.{layer}.mlp.hook_{act}", (p, neuron), 0, label, bounds)

    @classmethod
    def embed(cls, pos: Optional[int] = None) -> "Site":
        """The token embedding (`hook_embed`)."""
        return cls.at("hook_embed", pos, label="embed" + ("" if pos is None else f" @ pos {pos}"))

    @classmethod
    def _block(cls, hook: str, label: str, layer: int, pos: Optional[int]) -> "Site":
        layer = _non_negative_int(layer, "layer")
        p = slice(None) if pos is None else _non_negative_int(pos, "pos")
        text = label.format(layer=layer) + ("" if pos is None else f" @ pos {p}")
        return cls(f"blocks.{layer}.{hook}", (p,), 0, text, (("layer", layer, "n_layers"),))

    # ---- what the engine needs to know

    @property
    def pos(self) -> Optional[int]:
        """The position this site edits (for a pattern: the query row), or None for every position."""
        if self.pos_dim is None:
            return None
        p = self.index[self.pos_dim]
        return p if isinstance(p, int) else None

    @property
    def first_position(self) -> int:
        """The earliest position this site can change."""
        return 0 if self.pos is None else self.pos

    def layer(self, n_layers: int) -> int:
        """Where a forward pass must start to reach this site: the block index, -1 for the
        embeddings (start from the tokens), `n_layers` for `ln_final`."""
        parts = self.hook_name.split(".")
        if parts[0] == "blocks" and len(parts) > 1 and parts[1].isdigit():
            return int(parts[1])
        if parts[0] == "ln_final":
            return n_layers
        return -1

    def where(self, offset: int = 0) -> tuple:
        """The index after the batch dimension, for an activation whose positions start at `offset`."""
        if offset == 0 or self.pos is None:
            return self.index
        index = list(self.index)
        index[self.pos_dim] = self.pos - offset
        return tuple(index)

    def check(self, model: Any, seq_len: Optional[int] = None) -> "Site":
        """Raise a clear error if this site does not exist in `model` (or in inputs of `seq_len`)."""
        for what, value, field in self.bounds:
            limit = getattr(model.cfg, field)
            if value >= limit:
                raise ValueError(f"site {self.label}: {what}={value} is out of range; this model has {field}={limit}")
        if self.hook_name not in model.hook_dict:
            model._resolve(self.hook_name)  # raises KeyError with the closest names
        if seq_len is not None and self.pos is not None and self.pos >= seq_len:
            raise ValueError(f"site {self.label}: position {self.pos} is out of range for inputs of {seq_len} tokens")
        return self

    def __str__(self) -> str:
        return self.label or self.hook_name


site = Site  # `site.head(L, h)` reads like the analysis


# ------------------------------------------------------------------ interventions

Op = Literal["patch", "replace", "zero", "mean", "resample", "add", "scale", "apply"]


@dataclass(frozen=True, eq=False)
class Intervention:
    """One change at one site. Build them with `patch`, `replace`, `zero`, `mean`, `resample`,
    `add`, `scale`, `apply`."""

    site: Site
    op: Op
    value: Any = None  # patch: a cache or full activation; replace: the slice; add: the vector; ...
    factor: float = 1.0  # add: the scale of the vector; scale: the factor
    seed: int = 0  # resample

    def __repr__(self) -> str:
        return f"{self.op}({self.site})"


def _as_site(s: Union[Site, str]) -> Site:
    if isinstance(s, Site):
        return s
    if isinstance(s, str):
        return Site.at(s)
    raise TypeError(f"expected a Site (e.g. Site.head(0, 1)) or a hook name, got {type(s).__name__}")


def patch(s: Union[Site, str], source: Any) -> Intervention:
    """Set the site to its value in another run: `source` is that run's cache (an
    `ActivationCache` or dict holding the site's hook) or its full activation `[batch, ...]`."""
    return Intervention(_as_site(s), "patch", source)


def replace(s: Union[Site, str], value: Tensor) -> Intervention:
    """Set the site to `value`, shaped like the site's part of the activation (with or without
    the batch dimension; broadcasting applies)."""
    return Intervention(_as_site(s), "replace", _tensor(value, "value"))


def zero(s: Union[Site, str]) -> Intervention:
    """Set the site to 0 (zero ablation)."""
    return Intervention(_as_site(s), "zero")


def mean(s: Union[Site, str], reference: Tensor) -> Intervention:
    """Set the site to its mean over the prompts of `reference` (token ids `[batch, pos]`), at
    each position (mean ablation)."""
    return Intervention(_as_site(s), "mean", _reference(reference))


def resample(s: Union[Site, str], reference: Tensor, seed: int = 0) -> Intervention:
    """Set the site, for each prompt, to its value on a random prompt of `reference` (token ids;
    seeded, so reruns agree): resample ablation."""
    return Intervention(_as_site(s), "resample", _reference(reference), seed=int(seed))


def add(s: Union[Site, str], vector: Tensor, scale: Union[int, float] = 1.0) -> Intervention:
    """Add `scale * vector` to the site (steering); `vector` broadcasts over the site's part,
    e.g. `[d_model]` for a residual-stream site."""
    return Intervention(_as_site(s), "add", _tensor(vector, "vector"), factor=_number(scale, "scale"))


def scale(s: Union[Site, str], factor: Union[int, float]) -> Intervention:
    """Multiply the site by `factor`."""
    return Intervention(_as_site(s), "scale", factor=_number(factor, "factor"))


def apply(s: Union[Site, str], fn: Callable[[Tensor], Tensor]) -> Intervention:
    """Replace the site's part `x` (`[batch, ...]`) of the activation by `fn(x)`, of the same shape."""
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    return Intervention(_as_site(s), "apply", fn)


def splice(module: Any, use_error_term: bool = False, hook_name: Optional[str] = None) -> Intervention:
    """Run the activation through `module` and use its output instead: a sparse autoencoder's
    reconstruction (`module(x, use_error_term=...)`, at `module.cfg.hook_name` as in SAELens, or
    at `hook_name`). With `use_error_term=True` an SAE returns reconstruction + error, which equals
    its input unless a hook edits its features."""
    name = hook_name or getattr(getattr(module, "cfg", None), "hook_name", None)
    if not name:
        raise ValueError("splice: the module has no cfg.hook_name; pass hook_name= (the hook whose activation it replaces)")
    if not callable(module):
        raise TypeError(f"splice: expected a callable module (an SAE), got {type(module).__name__}")

    def through(x: Tensor) -> Tensor:
        return module(x, use_error_term=use_error_term).to(x.dtype)

    return Intervention(Site.at(name, label=f"{type(module).__name__} at {name}"), "apply", through)


def _tensor(value: Any, what: str) -> Tensor:
    if not isinstance(value, Tensor):
        try:
            value = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{what} must be a tensor, got {type(value).__name__}") from None
    if not value.is_floating_point():
        value = value.float()
    return value


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _reference(reference: Any) -> Tensor:
    if not isinstance(reference, Tensor) or reference.is_floating_point() or reference.ndim != 2 or reference.shape[0] == 0:
        got = f"{reference.dtype} of shape {tuple(reference.shape)}" if isinstance(reference, Tensor) else type(reference).__name__
        raise ValueError(f"reference must be token ids [batch, pos] with batch >= 1, got {got}")
    return reference


# ------------------------------------------------------------------ turning interventions into edits


@dataclass
class _Edit:
    """An intervention made concrete for one model and input: what to do to the site's part `x`
    of the activation (`[batch, ...]`)."""

    site: Site
    kind: str  # set, zero, add, mul, fn, resample (mean: until prepare() computes it)
    value: Any = None
    batch_axis: bool = False  # `value` has a leading batch dimension
    seed: int = 0

    def apply(self, x: Tensor, offset: int, length: int) -> None:
        """Edit `x` in place. `offset`/`length`: the positions the activation holds, for values
        that span every position (a pos=None site under a KV cache sees only the new ones)."""
        if self.kind == "zero":
            x.zero_()
        elif self.kind == "mul":
            x.mul_(self.value)
        elif self.kind == "fn":
            out = self.value(x.clone())
            if not isinstance(out, Tensor) or out.shape != x.shape:
                got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise HookShapeError(f"apply({self.site}): fn returned {got}, expected a tensor of shape {tuple(x.shape)}")
            x.copy_(out)
        else:
            value = self._windowed(self.value, x, offset, length)
            if self.kind == "resample":
                value = value[_picks(value.shape[0], x.shape[0], self.seed, value.device)]
            try:
                if self.kind == "add":
                    x.add_(value.to(x.dtype))
                else:
                    x.copy_(value.to(x.dtype).expand_as(x) if value.ndim <= x.ndim else value)
            except RuntimeError as e:
                raise ValueError(
                    f"{self.kind} at {self.site}: a value of shape {tuple(value.shape)} does not fit the site's "
                    f"part of the activation, of shape {tuple(x.shape)} ([batch, ...])"
                ) from e

    def _windowed(self, value: Tensor, x: Tensor, offset: int, length: int) -> Tensor:
        """The positions of `value` that `x` holds, where `value` spans every position."""
        spans_positions = value.ndim == x.ndim - int(not self.batch_axis)  # shaped like the site's part
        if self.kind == "add" or self.site.pos is not None or self.site.pos_dim is None or not spans_positions:
            return value
        axis = self.site.pos_dim + int(self.batch_axis)  # the value's position axis
        if offset == 0 and value.shape[axis] == length:
            return value
        return value.narrow(axis, offset, length)


def _picks(n_reference: int, batch: int, seed: int, device: torch.device) -> Tensor:
    """Which reference prompt each of `batch` prompts takes its resampled value from (seeded)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(n_reference, (batch,), generator=generator).to(device)


def prepare(model: Any, interventions: Sequence[Intervention], seq_len: Optional[int] = None) -> list[_Edit]:
    """Check each intervention against `model` and make it concrete (mean and resample values are
    computed here, from one run of each reference batch)."""
    edits, references = [], {}
    for iv in interventions:
        if not isinstance(iv, Intervention):
            raise TypeError(f"expected an Intervention (made by patch, zero, mean, add, ...), got {type(iv).__name__}")
        s = iv.site.check(model, seq_len)
        part = (slice(None),) + s.index
        if iv.op == "patch":
            source = iv.value
            if not isinstance(source, Tensor):
                try:
                    source = source[s.hook_name]
                except (KeyError, TypeError):
                    raise KeyError(f"patch({s}): the source holds no activation {s.hook_name!r}") from None
            source = resolve(source)
            edits.append(_Edit(s, "set", _part(source, part, s), batch_axis=True))
        elif iv.op == "replace":
            edits.append(_Edit(s, "set", iv.value.to(model.device)))
        elif iv.op == "zero":
            edits.append(_Edit(s, "zero"))
        elif iv.op == "scale":
            edits.append(_Edit(s, "mul", iv.factor))
        elif iv.op == "add":
            edits.append(_Edit(s, "add", (iv.factor * iv.value).to(model.device)))
        elif iv.op == "apply":
            edits.append(_Edit(s, "fn", iv.value))
        elif iv.op in ("mean", "resample"):
            key = id(iv.value)
            if key not in references:
                references[key] = (iv.value, set())
            references[key][1].add(s.hook_name)
            edits.append(_Edit(s, iv.op, iv, seed=iv.seed))
        else:
            raise ValueError(f"unknown intervention op {iv.op!r}")
    caches = {}
    for key, (tokens, names) in references.items():
        with torch.no_grad():
            _, caches[key] = model.run_with_cache(tokens.to(model.device), names_filter=sorted(names), return_type=None)
    for edit in edits:
        if edit.kind in ("mean", "resample"):
            iv = edit.value
            ref_len = iv.value.shape[1]
            if seq_len is not None and edit.site.pos is None and edit.site.pos_dim is not None and ref_len != seq_len:
                raise ValueError(
                    f"{iv.op}({edit.site}): the reference has {ref_len} positions and the input {seq_len}; a site "
                    "at every position takes its values position by position, so they must match"
                )
            if edit.site.pos is not None and edit.site.pos >= ref_len:
                raise ValueError(f"{iv.op}({edit.site}): position {edit.site.pos} is beyond the reference's {ref_len} tokens")
            part = _part(resolve(caches[id(iv.value)][edit.site.hook_name]), (slice(None),) + edit.site.index, edit.site)
            if edit.kind == "mean":
                edit.kind, edit.value = "set", part.mean(dim=0)
            else:
                edit.value, edit.batch_axis = part, True
    return edits


def _part(activation: Tensor, part: tuple, s: Site) -> Tensor:
    try:
        return activation[part]
    except IndexError as e:
        raise ValueError(f"site {s}: index {part[1:]} does not fit an activation of shape {tuple(activation.shape)}") from e


# ------------------------------------------------------------------ hooks that apply edits


def _edit_hook(model: Any, edits_by_rows: list[tuple[Optional[slice], _Edit]]) -> Callable:
    """One hook applying `edits_by_rows` (each to its rows, or all rows) to a fresh copy of the
    activation. Positions are translated with `model.position_offset` (KV-cached forwards)."""

    def intervene(activation: Tensor, hook: HookPoint) -> Tensor:
        activation = activation.clone()  # never edit a tensor someone else may hold
        offset = model.position_offset  # None: a plain forward; else positions before it are KV-cached
        shift = offset or 0
        for rows, edit in edits_by_rows:
            s = edit.site
            target = activation if rows is None else activation[rows]
            length = target.shape[1 + s.pos_dim] if s.pos_dim is not None else 0
            if s.pos is not None and not 0 <= s.pos - shift < length:
                if not model.generating:
                    raise ValueError(f"site {s}: position {s.pos} is out of range for inputs of {length} tokens")
                continue  # a generation step: that position is already cached, or not reached yet
            edit.apply(target[(slice(None),) + s.where(shift)], shift, length)
        return activation

    return intervene


def hooks_for(model: Any, edits: Sequence[Union[Intervention, _Edit]], rows: Optional[Sequence[slice]] = None) -> list[tuple[str, Callable]]:
    """`(hook name, fn)` pairs applying `edits`, for `run_with_hooks`/`hooks()`. With `rows`,
    edit i applies only to the batch rows `rows[i]`."""
    if any(isinstance(e, Intervention) for e in edits):
        edits = prepare(model, edits)
    by_name: dict[str, list[tuple[Optional[slice], _Edit]]] = {}
    for i, edit in enumerate(edits):
        by_name.setdefault(edit.site.hook_name, []).append((None if rows is None else rows[i], edit))
    return [(name, _edit_hook(model, pairs)) for name, pairs in by_name.items()]


@contextlib.contextmanager
def spliced(model: Any, saes: Sequence[Any], use_error_term: bool = False) -> Iterator[Any]:
    """`model.saes(...)`: splice each module in (see `splice`), and while it is in, list its own
    hook points in `model.hook_dict` under the hook's name (SAELens's naming:
    `blocks.1.hook_resid_pre.hook_sae_acts_post`), so its features cache, and take interventions,
    like any activation. All undone on exit, also on error."""
    ops = [splice(sae, use_error_term) for sae in saes]
    names = [op.site.hook_name for op in ops]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"two SAEs read the same hook {twice}; splice one SAE per hook")
    added: list[tuple[str, HookPoint, Optional[str]]] = []
    try:
        for sae, name in zip(saes, names):
            for inner, hp in getattr(sae, "hook_dict", {}).items():
                full = f"{name}.{inner}"
                if full in model.hook_dict:
                    raise ValueError(f"{full} is already a hook point of the model")
                added.append((full, hp, hp.name))
                model.hook_dict[full], hp.name = hp, full
        with attached(model, *ops):
            yield model
    finally:
        for full, hp, old_name in added:
            model.hook_dict.pop(full, None)
            hp.name = old_name


@contextlib.contextmanager
def attached(model: Any, *interventions: Intervention) -> Iterator[Any]:
    """`model.interventions(...)`: the interventions hold for every forward pass (and generation)
    inside the block; removed on exit, also on error."""
    flat = [iv for item in interventions for iv in (item if isinstance(item, (list, tuple)) else [item])]
    with model.hooks(fwd_hooks=hooks_for(model, prepare(model, flat))):
        yield model


# ------------------------------------------------------------------ the engine


@dataclass
class _Plan:
    """One intervention set, made concrete."""

    edits: list[_Edit]
    layer: int  # the lowest layer it edits (-1: the embeddings)
    first_position: int


class _NotExact(Exception):
    """A hook already attached to the model is not causal: the fast path would differ."""


def rows_per_forward(model: Any, seq_len: int, memory_mb: Union[int, float], read_positions: Optional[int] = None) -> int:
    """Roughly how many sequences of `seq_len` fit in one forward within `memory_mb`: the widest
    activations of a layer (MLP hidden, attention pattern, residuals) and the logits (of
    `read_positions` positions, or all)."""
    cfg = model.cfg
    n_logit_positions = seq_len if read_positions is None else read_positions
    floats = seq_len * (8 * cfg.d_model + 3 * cfg.d_mlp + 2 * cfg.n_heads * seq_len) + 2 * n_logit_positions * cfg.d_vocab
    bytes_per_row = floats * torch.finfo(cfg.dtype).bits // 8
    return max(1, int(memory_mb * 2**20 // bytes_per_row))


def evaluate(
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    sets: Sequence[Any],  # each a list of Interventions; checked here, for a clearer message
    metric: Metric,
    read_positions: Union[None, int, Sequence[int]] = -1,
    method: Literal["fast", "naive"] = "fast",
    batch_size: Optional[int] = None,
    memory_mb: Union[int, float] = 1024,
    disable: Optional[bool] = None,
    desc: str = "interventions",
) -> tuple[Float[Tensor, "set"], float]:
    """Run each intervention set on `tokens`; returns (metric per set, metric with no intervention).

    Args:
        model: a HookedGPT (hooks already attached to it apply, in both methods alike).
        tokens: token ids `[batch, pos]`, unpadded.
        sets: the intervention sets; an empty set gives the unedited metric.
        metric: the logits at `read_positions` `[batch, n_read, d_vocab]` -> a scalar.
        read_positions: positions whose logits the metric reads (None: all; default: the last).
        method: "fast" (see the module docstring) or "naive" (one `run_with_hooks` per set).
        batch_size: rows (sets x prompts) per forward in the fast method; default from `memory_mb`.
        disable: hide the progress bar (default: shown only in a terminal, after a few seconds).
    """
    if method not in ("fast", "naive"):
        raise ValueError(f"method must be 'fast' or 'naive', got {method!r}")
    tokens = _checked_tokens(model, tokens)
    batch, seq_len = tokens.shape
    read = _positions(read_positions, seq_len)
    with torch.no_grad():
        for i, ivs in enumerate(sets):
            if isinstance(ivs, Intervention):
                raise TypeError(f"sets[{i}] is one Intervention; pass a list of sets, each a list of interventions")
        sets = [list(ivs) for ivs in sets]
        # prepared together: one run per reference batch for every mean/resample of every set
        flat = prepare(model, [iv for ivs in sets for iv in ivs], seq_len)
        plans, start = [], 0
        for ivs in sets:
            edits, start = flat[start : start + len(ivs)], start + len(ivs)
            layer = min((e.site.layer(model.cfg.n_layers) for e in edits), default=model.cfg.n_layers)
            plans.append(_Plan(edits, layer, min((e.site.first_position for e in edits), default=seq_len)))
        own = {id(m) for m in model.modules()}
        nested = sorted({e.site.hook_name for p in plans for e in p.edits if id(model.hook_dict[e.site.hook_name]) not in own})
        if method == "fast" and nested:
            # a hook point inside a spliced module (an SAE's features) is reached only inside a hook,
            # where the fast path's rows are not the batch's: run these sets one forward each
            warnings.warn(f"interventions on {nested} (inside a spliced module) run in the naive loop", stacklevel=2)
            method = "naive"
        if method == "fast" and model.cfg.n_layers > 0:
            try:
                return _fast(model, tokens, plans, metric, read, batch_size, memory_mb, disable, desc)
            except _NotExact as e:
                warnings.warn(f"{e}: the fast path would not be exact, so the engine uses the naive one", stacklevel=2)
        return _naive(model, tokens, plans, metric, read, disable, desc)


def _checked_tokens(model: Any, tokens: Any) -> Tensor:
    if not isinstance(tokens, Tensor) or tokens.is_floating_point() or tokens.dtype == torch.bool:
        raise TypeError(f"tokens must be an integer tensor of token ids [batch, pos], got {getattr(tokens, 'dtype', type(tokens).__name__)}")
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.ndim != 2 or 0 in tokens.shape:
        raise ValueError(f"tokens must have shape [batch, pos] with batch, pos >= 1, got {tuple(tokens.shape)}")
    return tokens.to(model.device).long()


def _positions(positions: Union[None, int, Sequence[int]], seq_len: int) -> list[int]:
    if positions is None:
        return list(range(seq_len))
    if isinstance(positions, Tensor):
        positions = positions.flatten().tolist()
    if isinstance(positions, int):
        positions = [positions]
    out = []
    for p in positions:
        if isinstance(p, bool) or not isinstance(p, int):
            raise TypeError(f"read_positions must be ints, got {p!r}")
        if not -seq_len <= p < seq_len:
            raise ValueError(f"read_positions: position {p} is out of range for inputs of {seq_len} tokens")
        out.append(p % seq_len)
    return out


def _progress(total: int, disable: Optional[bool], desc: str) -> tqdm:
    return tqdm(total=total, disable=disable, desc=desc, delay=3.0, leave=False)


def _naive(model, tokens, plans, metric, read, disable, desc) -> tuple[Tensor, float]:
    """The reference: one full forward per set, its interventions as ordinary hooks."""
    base = float(metric(model(tokens)[:, read]))  # all positions: bitwise the plain forward's logits
    values = torch.full((len(plans),), base)
    with _progress(len(plans), disable, f"{desc} (naive)") as bar:
        for i, plan in enumerate(plans):
            if plan.edits:
                logits = model.run_with_hooks(tokens, fwd_hooks=hooks_for(model, plan.edits), logit_positions=read)
                values[i] = float(metric(logits))
            bar.update(1)
    return values, base


@dataclass
class _Base:
    """What the fast path keeps from the unedited run."""

    block_input: dict[int, Tensor]  # layer -> the residual stream entering it (before any hook)
    keys: dict[int, Tensor]  # layer -> hook_k after every hook (the keys attention used)
    values: dict[int, Tensor]
    pre: dict[str, Tensor]  # hooked hook points: the activation before the user's hooks ...
    post: dict[str, Tensor]  # ... and after them
    at_sites: dict[str, Tensor]  # hook points that sets replace: the base activation there
    read_logits: Tensor  # [batch, n_read, d_vocab]

    def unchanged_by(self, plan: "_Plan") -> bool:
        """True when every edit of `plan` sets its site to the value it has anyway (patching a
        position where the clean and corrupted runs agree): its metric is the base run's."""
        for edit in plan.edits:
            if edit.kind not in ("set", "resample"):
                return False
            now = self.at_sites[edit.site.hook_name][(slice(None),) + edit.site.index]
            value = edit.value  # [batch, ...] or the part without its batch dimension (broadcast below)
            if edit.kind == "resample":
                value = value[_picks(value.shape[0], now.shape[0], edit.seed, value.device)]
            if value.shape[-now.ndim + 1 :] != now.shape[1:] or not torch.equal(value.to(now.dtype).expand_as(now), now):
                return False
        return True


def _user_hook_points(model: Any) -> list[HookPoint]:
    """Hook points with a forward hook attached by the user that may edit its activation."""
    return [hp for hp in model.hook_dict.values() if any(not h.observe_only for h in hp.fwd_handles)]


def _position_dim(name: str) -> int:
    """The position (query) axis of an activation, counting the batch axis."""
    return 2 if name.endswith(("hook_pattern", "hook_attn_scores")) else 1


def _base_run(model, tokens, plans, read, user_points) -> _Base:
    n_layers = model.cfg.n_layers
    join_layers = {p.layer for p in plans if p.edits and p.layer >= 0}
    low = min((p.layer for p in plans if p.edits), default=n_layers)
    store: dict[str, Tensor] = {}

    def keep(key: str) -> Callable:
        def save(act: Tensor, hook: HookPoint) -> None:
            store[key] = act.detach().clone()  # a copy: a later hook may edit the tensor in place

        return save

    handles: list[HookHandle] = []
    try:
        for layer in join_layers:
            if layer < n_layers:
                handles.append(model.blocks[layer].hook_resid_pre.add_hook(keep(f"in{layer}"), prepend=True, observe_only=True))
            else:
                handles.append(model.blocks[-1].hook_resid_post.add_hook(keep(f"in{layer}"), observe_only=True))
        for layer in range(max(low, 0), n_layers):
            attn = model.blocks[layer].attn
            handles.append(attn.hook_k.add_hook(keep(f"k{layer}"), observe_only=True))
            handles.append(attn.hook_v.add_hook(keep(f"v{layer}"), observe_only=True))
        for hp in user_points:
            handles.append(hp.add_hook(keep(f"pre:{hp.name}"), prepend=True, observe_only=True))
            handles.append(hp.add_hook(keep(f"post:{hp.name}"), observe_only=True))
        for name in {e.site.hook_name for p in plans for e in p.edits if e.kind in ("set", "resample")}:
            handles.append(model.hook_dict[name].add_hook(keep(f"site:{name}"), observe_only=True))
        read_logits = model(tokens)[:, read]  # all positions: bitwise the plain forward's logits
    finally:
        for handle in handles:
            handle.remove()
    pick = lambda prefix: {int(k[len(prefix):]): v for k, v in store.items() if k.startswith(prefix) and k[len(prefix):].isdigit()}  # noqa: E731
    return _Base(
        pick("in"),
        pick("k"),
        pick("v"),
        {k[4:]: v for k, v in store.items() if k.startswith("pre:")},
        {k[5:]: v for k, v in store.items() if k.startswith("post:")},
        {k[5:]: v for k, v in store.items() if k.startswith("site:")},
        read_logits,
    )


@contextlib.contextmanager
def _per_set_user_hooks(model: Any, user_points: list[HookPoint], base: _Base, batch: int, state: dict) -> Iterator[None]:
    """While the fast path runs, present each user hook point's hooks with what they would see
    in a set's own forward: `[batch, every position, ...]`, one set at a time (the skipped prefix
    filled in from the base run). `state["start"]` is the first position fed in."""
    saved: list[tuple[HookHandle, Callable]] = []

    def chained(hp: HookPoint, fns: list[Callable]) -> Callable:
        dim = _position_dim(hp.name)

        def run_as_own_forward(x: Tensor, hook: HookPoint) -> Tensor:
            start, outs = state["start"], []
            for j in range(x.shape[0] // batch):
                act = x[j * batch : (j + 1) * batch]
                if start:
                    act = torch.cat([base.pre[hp.name].narrow(dim, 0, start), act], dim=dim)
                for fn in fns:
                    out = fn(act, hook)
                    if out is not None:
                        act = hp._checked(out, act, fn)
                if start:
                    if not torch.allclose(act.narrow(dim, 0, start), base.post[hp.name].narrow(dim, 0, start), rtol=1e-5, atol=1e-6):
                        raise _NotExact(f"a hook on {hp.name} changes positions before {start} depending on later ones")
                    if dim == 2 and _attends_to_the_future(act, hp.name):
                        raise _NotExact(f"a hook on {hp.name} lets positions attend to later ones")
                    act = act.narrow(dim, start, act.shape[dim] - start)
                outs.append(act)
            return torch.cat(outs)

        return run_as_own_forward

    def no_op(x: Tensor, hook: HookPoint) -> None:
        return None

    try:
        for hp in user_points:
            handles = list(hp.fwd_handles)
            fns = [h.fn for h in handles]
            carrier = next(h for h in handles if not h.observe_only)
            for h in handles:
                saved.append((h, h.fn))
                h.fn = chained(hp, fns) if h is carrier else no_op
        yield
    finally:
        for handle, fn in saved:
            handle.fn = fn


def _attends_to_the_future(act: Tensor, name: str) -> bool:
    """Does an attention pattern (or score) `[batch, n_heads, query_pos, key_pos]` give weight to
    keys after their query? Then earlier positions depend on later ones: not causal."""
    future = torch.ones(act.shape[-2:], dtype=torch.bool, device=act.device).triu(1)
    masked = act[..., future]
    return bool((masked != 0).any()) if name.endswith("hook_pattern") else bool((masked != float("-inf")).any())


def _fast(model, tokens, plans, metric, read, batch_size, memory_mb, disable, desc) -> tuple[Tensor, float]:
    batch, seq_len = tokens.shape
    user_points = _user_hook_points(model)
    base = _base_run(model, tokens, plans, read, user_points)
    base_metric = float(metric(base.read_logits))
    values = torch.full((len(plans),), base_metric)

    # Sets with nothing to run (their metric is the base run's): no edits, every position the metric
    # reads lies before the first edited one (causal attention: those logits are the base run's).
    # edited one (causal attention: those logits are the base run's), or edits that change nothing.
    todo = [
        i for i, p in enumerate(plans) if p.edits and any(r >= p.first_position for r in read) and not base.unchanged_by(p)
    ]
    rows = batch_size or rows_per_forward(model, seq_len, memory_mb, len(read))
    per_forward = max(1, rows // batch)
    todo.sort(key=lambda i: (plans[i].first_position, plans[i].layer))
    chunks: list[list[int]] = []
    for i in todo:
        if chunks and plans[chunks[-1][0]].first_position == plans[i].first_position and len(chunks[-1]) < per_forward:
            chunks[-1].append(i)
        else:
            chunks.append([i])

    state = {"start": 0}
    with _per_set_user_hooks(model, user_points, base, batch, state), _progress(len(todo), disable, desc) as bar:
        for chunk in chunks:
            start = plans[chunk[0]].first_position
            state["start"] = start
            read_logits = _run_chunk(model, tokens, [plans[i] for i in chunk], read, base, batch, start)
            for j, i in enumerate(chunk):
                values[i] = float(metric(read_logits[j * batch : (j + 1) * batch]))
            bar.update(len(chunk))
    return values, base_metric


def _run_chunk(model, tokens, chunk: list[_Plan], read, base: _Base, batch: int, start: int) -> Tensor:
    """One batched run for sets that share their first position `start`, sorted by layer: rows are
    set-major; each set joins at its own lowest layer. Returns the logits at the read positions."""
    edits = [(slice(j * batch, (j + 1) * batch), e) for j, plan in enumerate(chunk) for e in plan.edits]
    fwd_hooks = hooks_for(model, [e for _, e in edits], rows=[r for r, _ in edits])
    computed = [r - start for r in read if r >= start]
    joins = sorted({plan.layer for plan in chunk})
    with model.hooks(fwd_hooks=fwd_hooks):
        resid, n_alive = None, 0
        for k, layer in enumerate(joins):
            n_new = sum(plan.layer == layer for plan in chunk)
            if layer < 0:
                joining = tokens[:, start:].repeat(n_new, 1)
            else:
                joining = base.block_input[layer][:, start:].repeat(n_new, 1, 1)
            resid = joining if resid is None else torch.cat([resid, joining])
            n_alive += n_new
            kv = _prefix_cache(model, base, start, n_alive, max(layer, 0)) if start else None
            kwargs = dict(start_at_layer=None if layer < 0 else layer, past_kv_cache=kv)
            if k + 1 < len(joins):
                resid = model(resid, stop_at_layer=joins[k + 1], **kwargs)
            else:
                logits = model(resid, logit_positions=computed, **kwargs)
    columns, c = [], 0
    for n, r in enumerate(read):
        if r >= start:
            columns.append(logits[:, c])
            c += 1
        else:
            columns.append(base.read_logits[:, n].repeat(len(chunk), 1))
    return torch.stack(columns, dim=1)


def _prefix_cache(model: Any, base: _Base, start: int, n_sets: int, low: int) -> KVCache:
    """A frozen KV cache holding the base run's keys/values of positions < `start`, for `n_sets`
    sets of rows (layers below `low` are never read; they get empty entries)."""
    cfg, rows = model.cfg, n_sets * base.read_logits.shape[0]
    entries = []
    for layer in range(cfg.n_layers):
        if layer < low:
            unread = torch.empty(rows, 0, cfg.n_heads, cfg.d_head, dtype=cfg.dtype, device=model.device)
            entries.append(KVCacheEntry(unread, unread, frozen=True))
            continue
        k = base.keys[layer][:, :start].repeat(n_sets, 1, 1, 1)
        v = base.values[layer][:, :start].repeat(n_sets, 1, 1, 1)
        entries.append(KVCacheEntry(k, v, frozen=True))
    mask = torch.ones(rows, start, dtype=torch.long, device=model.device)
    return KVCache(entries, mask, frozen=True)
