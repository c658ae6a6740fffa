"""Hook points: named places in the forward pass where you can read or replace an activation.

A `HookPoint` is an identity module. The model calls it on every interesting intermediate
(`q = self.hook_q(q)`), and it runs whatever functions are attached to it. A hook function has
the TransformerLens signature `fn(activation, hook) -> None | Tensor`: return nothing to
observe, return a tensor of the same shape to replace the activation.

`HookedRootModule` is the base class of a model made of hook points. It names every hook point
after its place in the module tree (`blocks.3.attn.hook_pattern`), and offers the ways to use
them: `add_hook`, `hooks()` (a context manager), `run_with_hooks` and `run_with_cache`.
Every hook added by those temporary forms is removed when they return, also when the forward
pass raises.

**Observe-only hooks.** A hook that returns `None` may still edit its activation in place, so the
model must treat every hook as a possible editor, and give up its fast paths (the fused LayerNorm,
computing each head's output only on demand). A hook that declares it only reads —
`add_hook(fn, observe_only=True)`, or `observe(fn)` in a `fwd_hooks` list — lets the model keep them.
Caches are such hooks; so are your own read-only hooks. An observe-only hook that returns a tensor
is an error. With `lazy=True` too, it may receive a `LazyActivation` (call `resolve(act)`) for an
activation the forward pass does not need itself (`hook_result`): it is computed only if read.
"""

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Collection, Iterator, Literal, Optional, Union

import torch
from torch import Tensor, nn

from hookgpt.errors import ArgumentError, ArgumentTypeError, HookOutputError, HookShapeError, UnknownNameError, close_matches

HookFn = Callable[..., Optional[Tensor]]
# Boundary types are deliberately broad (as in model.py): `_names_filter_fn` and `_hook_pairs`
# check them, so bad input gets a message naming the argument rather than a type-checker dump.
NamesFilter = Any  # None, a hook name, a list of hook names, or a function name -> bool
HookList = Any  # a list of (hook name or filter function, hook function) pairs
Direction = Literal["fwd", "bwd"]


class LazyActivation:
    """An activation computed the first time it is read, from inputs it keeps.

    The model hands one to lazy observe-only hooks (caches) instead of a tensor when computing the
    tensor in the forward pass would be wasted work (see `HookPoint.record_lazily`);
    `ActivationCache` turns it into the tensor on first access and keeps that.
    """

    def __init__(self, compute: Callable[..., Tensor], *inputs: Tensor):
        self._compute = compute
        self._inputs = inputs
        self._value: Optional[Tensor] = None

    def get(self) -> Tensor:
        if self._value is None:
            self._value = self._compute(*self._inputs)
            self._compute, self._inputs = None, ()  # let the inputs go
        return self._value

    def to(self, device: Union[str, torch.device]) -> "LazyActivation":
        """The same activation, computed on `device` (its inputs, or its value, move there now)."""
        if self._value is not None:
            return LazyActivation(lambda value: value, self._value.to(device))
        return LazyActivation(self._compute, *(t.to(device) for t in self._inputs))

    def then(self, fn: Callable[[Tensor], Tensor]) -> "LazyActivation":
        """The activation passed through `fn` (still computed on first access, from the same
        inputs, so that `.to(device)` afterwards still moves them)."""
        if self._value is not None:
            return LazyActivation(fn, self._value)
        compute = self._compute
        return LazyActivation(lambda *inputs: fn(compute(*inputs)), *self._inputs)


@dataclass(eq=False)
class HookHandle:
    """A handle to one attached hook; `remove()` detaches it (idempotent).

    `observe_only`: the hook promises not to change the activation (see the module docstring);
    `lazy`: it also accepts a `LazyActivation`.
    """

    hook_point: "HookPoint"
    fn: HookFn
    dir: Direction
    active: bool = True
    observe_only: bool = False
    lazy: bool = False

    def remove(self) -> None:
        if self.active:
            self.active = False
            self.detach()

    def detach(self) -> None:
        """Take the hook off its hook point, so later forward passes do not run it. A backward
        hook stays live for the tensors it was already registered on (until `remove()`)."""
        handles = self.hook_point._handles(self.dir)
        if self in handles:
            handles.remove(self)


class HookPoint(nn.Module):
    """An identity module that runs the hook functions attached to it.

    With nothing attached, `forward` returns its input at once: unused hook points cost one
    Python call. Forward hooks run in order; each sees the output of the previous one.
    Backward hooks are registered on the activation tensor and receive its gradient.
    """

    def __init__(self):
        super().__init__()
        self.name: Optional[str] = None
        self.fwd_handles: list[HookHandle] = []
        self.bwd_handles: list[HookHandle] = []

    def _handles(self, dir: Direction) -> list[HookHandle]:
        return self.fwd_handles if dir == "fwd" else self.bwd_handles

    @property
    def has_hooks(self) -> bool:
        return bool(self.fwd_handles or self.bwd_handles)

    @property
    def only_observed(self) -> bool:
        """True when no attached hook can change this activation or asks for its gradient: every
        forward hook is observe-only and there is no backward hook. Also True with no hooks.

        The model then may compute the value outside its main path, or (for lazy hooks) not at all.
        """
        return not self.bwd_handles and all(h.observe_only for h in self.fwd_handles)

    @property
    def only_lazily_observed(self) -> bool:
        """True when hooks are attached and every one is an observe-only hook that accepts a
        `LazyActivation` (caches), so the model may hand it a value it computes only if read."""
        return bool(self.fwd_handles) and not self.bwd_handles and all(h.observe_only and h.lazy for h in self.fwd_handles)

    def record_lazily(self, compute: Callable[..., Tensor], *inputs: Tensor) -> None:
        """Hand the observe-only hooks `compute(*inputs)`: lazy ones as a `LazyActivation`,
        computed only if read; the others (if any) get the tensor, computed once.

        For activations the forward pass does not otherwise need (`hook_result`).
        """
        if not self.only_observed:
            raise RuntimeError(f"{self.name}: record_lazily is only for observe-only hooks")
        lazy = LazyActivation(compute, *inputs)
        for handle in list(self.fwd_handles):
            handle.fn(lazy if handle.lazy else lazy.get(), hook=self)

    def add_hook(
        self, fn: HookFn, dir: Direction = "fwd", prepend: bool = False, observe_only: bool = False, lazy: bool = False
    ) -> HookHandle:
        """Attach `fn(activation, hook)`; see the module docstring for `observe_only` and `lazy`."""
        if dir not in ("fwd", "bwd"):
            raise ValueError(f"dir must be 'fwd' or 'bwd', got {dir!r}")
        if isinstance(fn, Observer):
            fn, observe_only, lazy = fn.fn, True, lazy or fn.lazy
        if not callable(fn):
            raise TypeError(f"a hook must be callable as fn(activation, hook), got {type(fn).__name__} on {self.name}")
        if lazy and not observe_only:
            raise ValueError("lazy=True needs observe_only=True: only a hook that just reads may get a LazyActivation")
        handle = HookHandle(self, fn, dir, observe_only=observe_only, lazy=lazy)
        handles = self._handles(dir)
        handles.insert(0, handle) if prepend else handles.append(handle)
        return handle

    def remove_hooks(self, dir: Literal["fwd", "bwd", "both"] = "both") -> None:
        for d in ("fwd", "bwd"):
            if dir in (d, "both"):
                for handle in list(self._handles(d)):
                    handle.remove()

    def forward(self, x: Tensor) -> Tensor:
        if not self.has_hooks:
            return x
        for handle in list(self.fwd_handles):
            out = handle.fn(x, hook=self)
            if out is not None:
                if handle.observe_only:
                    raise TypeError(
                        f"hook {getattr(handle.fn, '__name__', handle.fn)!r} on {self.name} was added as observe-only "
                        "but returned a value; drop observe_only to let it replace the activation"
                    )
                x = self._checked(out, x, handle.fn)
        if self.bwd_handles and x.requires_grad:
            # A node of its own in the autograd graph: the gradient of *this* use of the value.
            # (Identity hook points pass the same tensor on: `hook_mlp_in` returns resid_mid, which
            # also flows around the MLP; its gradient must not include that skip path.)
            x = x.view_as(x)
            for handle in list(self.bwd_handles):
                x.register_hook(self._grad_hook(handle))
        return x

    def _grad_hook(self, handle: HookHandle) -> Callable[[Tensor], Optional[Tensor]]:
        def run(grad: Tensor) -> Optional[Tensor]:
            if not handle.active:  # removed between forward and backward
                return None
            out = handle.fn(grad, hook=self)
            return None if out is None else self._checked(out, grad, handle.fn)

        return run

    def _checked(self, out: Any, x: Tensor, fn: HookFn) -> Tensor:
        """The tensor a hook returned, if it can stand in for `x`: same shape, dtype and device."""
        hook = f"hook {getattr(fn, '__name__', fn)!r} on {self.name}"
        if not isinstance(out, Tensor):
            raise ArgumentTypeError(
                f"{hook} returned {type(out).__name__}; "
                "a hook must return None (to observe) or a Tensor (to replace the activation)"
            )
        if out.shape != x.shape:
            raise HookShapeError(
                f"{hook} returned shape {tuple(out.shape)}, "
                f"but the activation has shape {tuple(x.shape)}; a replacing hook must keep the shape"
            )
        if out.dtype != x.dtype or out.device != x.device:
            raise HookOutputError(
                f"{hook} returned a {out.dtype} tensor on {out.device}, but the activation is {x.dtype} on "
                f"{x.device}; a replacing hook must keep dtype and device (return `new.to(act)`)"
            )
        return out

    def extra_repr(self) -> str:
        return f"name={self.name!r}, fwd={len(self.fwd_handles)}, bwd={len(self.bwd_handles)}"


@dataclass(frozen=True)
class Observer:
    """A hook function marked observe-only, for the `(name, fn)` lists of `hooks()`,
    `run_with_hooks` and friends: `fwd_hooks=[("blocks.0.hook_resid_pre", observe(fn))]`."""

    fn: HookFn
    lazy: bool = False

    def __call__(self, activation: Any, hook: "HookPoint") -> None:
        self.fn(activation, hook=hook)


def observe(fn: HookFn, lazy: bool = False) -> Observer:
    """Mark `fn` as a hook that only reads its activation (the model keeps its fast paths)."""
    return Observer(fn, lazy)


def resolve(act: Union[Tensor, LazyActivation]) -> Tensor:
    """The tensor of a cached activation, computing it if it is lazy."""
    return act.get() if isinstance(act, LazyActivation) else act


def _names_filter_fn(names_filter: Any, valid_names: Optional[Collection[str]] = None) -> Callable[[str], bool]:
    """`names_filter` (None, a name, a list of names or a function) as a function name -> bool.
    With `valid_names`, a name that is not among them raises `UnknownNameError` (a typo would
    otherwise select nothing and give an empty cache)."""
    if names_filter is None:
        return lambda name: True
    if callable(names_filter):
        return names_filter
    names = [names_filter] if isinstance(names_filter, str) else names_filter
    if not isinstance(names, (list, tuple, set, frozenset)) or not all(isinstance(n, str) for n in names):
        raise ArgumentTypeError(
            f"names_filter must be None, a hook name, a list of hook names or a function name -> bool, got {names_filter!r}"
        )
    if valid_names is not None:
        for name in names:
            if name not in valid_names:
                raise UnknownNameError(
                    f"names_filter: no hook point named {name!r}"
                    + (close_matches(name, valid_names) or "; see model.hook_dict for all names")
                )
    names = set(names)
    return lambda name: name in names


def _hook_pairs(hooks: Any, what: str) -> list[tuple[Union[str, Callable[[str], bool]], HookFn]]:
    """`fwd_hooks` / `bwd_hooks` as a list of (name or filter, hook function) pairs, or a clear error."""
    if isinstance(hooks, dict):
        raise ArgumentTypeError(f"{what} must be a list of (name, hook) pairs, got a dict; pass list({what}.items())")
    if isinstance(hooks, tuple) and len(hooks) == 2 and (isinstance(hooks[0], str) or callable(hooks[0])) and callable(hooks[1]):
        raise ArgumentTypeError(f"{what} must be a list of (name, hook) pairs, got one pair; wrap it in a list: [{what}]")
    try:
        pairs = list(hooks)
    except TypeError:
        raise ArgumentTypeError(f"{what} must be a list of (name, hook) pairs, got {type(hooks).__name__}") from None
    for pair in pairs:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise ArgumentTypeError(f"{what} must be a list of (name, hook) pairs; one entry is {pair!r}")
        name, fn = pair
        if not (isinstance(name, str) or callable(name)):
            raise ArgumentTypeError(f"{what}: a hook point name must be a str or a function name -> bool, got {name!r}")
        if not callable(fn):
            raise ArgumentTypeError(f"{what}: the hook for {name!r} is not callable, got {type(fn).__name__} {fn!r}")
    return pairs


class HookedRootModule(nn.Module):
    """Base class of a model built from `HookPoint`s. Call `setup()` at the end of `__init__`."""

    hook_dict: dict[str, HookPoint]
    mod_dict: dict[str, nn.Module]

    def setup(self) -> None:
        """Name every hook point after its path and index the modules."""
        self.mod_dict = {}
        self.hook_dict = {}
        for name, module in self.named_modules():
            if name == "":
                continue
            self.mod_dict[name] = module
            if isinstance(module, HookPoint):
                module.name = name
                self.hook_dict[name] = module

    # ------------------------------------------------------------------ adding and removing hooks

    def hook_points(self) -> list[HookPoint]:
        return list(self.hook_dict.values())

    def _resolve(self, name: Any) -> list[HookPoint]:
        if callable(name) and not isinstance(name, str):
            return [hp for hp_name, hp in self.hook_dict.items() if name(hp_name)]
        if not isinstance(name, str):
            raise ArgumentTypeError(f"a hook point name must be a str or a function name -> bool, got {name!r}")
        if name not in self.hook_dict:
            hint = close_matches(name, self.hook_dict) or "; see model.hook_dict for all names"
            raise UnknownNameError(f"no hook point named {name!r}{hint}")
        return [self.hook_dict[name]]

    def add_hook(
        self,
        name: Any,
        hook: Any,
        dir: Direction = "fwd",
        prepend: bool = False,
        observe_only: bool = False,
        lazy: bool = False,
    ) -> list[HookHandle]:
        """Attach `hook` to the hook point `name` (or to every hook point whose name passes the
        filter function `name`). Stays attached until `reset_hooks()` or the handles' `remove()`.
        `observe_only`/`lazy`: see the module docstring."""
        if not callable(hook):
            raise ArgumentTypeError(f"the hook for {name!r} is not callable, got {type(hook).__name__} {hook!r}")
        return [hp.add_hook(hook, dir=dir, prepend=prepend, observe_only=observe_only, lazy=lazy) for hp in self._resolve(name)]

    def reset_hooks(self, dir: Literal["fwd", "bwd", "both"] = "both") -> None:
        """Remove every hook from every hook point."""
        for hp in self.hook_dict.values():
            hp.remove_hooks(dir)

    @contextlib.contextmanager
    def hooks(
        self,
        fwd_hooks: HookList = (),
        bwd_hooks: HookList = (),
        reset_hooks_end: bool = True,
    ) -> Iterator["HookedRootModule"]:
        """Attach hooks for the duration of a `with` block; they are removed on exit, error or not.

        Backward hooks fire when you call `.backward()` inside the block.
        """
        fwd_pairs, bwd_pairs = _hook_pairs(fwd_hooks, "fwd_hooks"), _hook_pairs(bwd_hooks, "bwd_hooks")
        handles: list[HookHandle] = []
        try:
            for name, fn in fwd_pairs:
                handles += self.add_hook(name, fn, dir="fwd")
            for name, fn in bwd_pairs:
                handles += self.add_hook(name, fn, dir="bwd")
            yield self
        finally:
            if reset_hooks_end:
                for handle in handles:
                    handle.remove()

    def run_with_hooks(
        self,
        *model_args: Any,
        fwd_hooks: HookList = (),
        bwd_hooks: HookList = (),
        reset_hooks_end: bool = True,
        **model_kwargs: Any,
    ) -> Any:
        """Run the model once with temporary hooks: `run_with_hooks(tokens, fwd_hooks=[(name, fn)])`.

        Backward hooks fire when you call `.backward()` on the output afterwards: they are
        detached from the hook points when this returns (a later forward does not see them),
        but stay live for the graph of this run, as TransformerLens's `reset_hooks_end=False`
        intends. Under `torch.no_grad()` they could never fire, so that is an error.
        """
        bwd_pairs = _hook_pairs(bwd_hooks, "bwd_hooks")
        if bwd_pairs and not torch.is_grad_enabled():
            raise ArgumentError(
                "bwd_hooks cannot fire: gradients are disabled here (torch.no_grad() or inference_mode), "
                "so no backward pass will run on this forward's output"
            )
        with self.hooks(fwd_hooks, reset_hooks_end=reset_hooks_end):
            bwd_handles: list[HookHandle] = []
            try:
                for name, fn in bwd_pairs:
                    bwd_handles += self.add_hook(name, fn, dir="bwd")
                return self(*model_args, **model_kwargs)
            finally:
                if reset_hooks_end:
                    for handle in bwd_handles:
                        handle.detach()

    # ------------------------------------------------------------------ caching

    def get_caching_hooks(
        self,
        names_filter: NamesFilter = None,
        incl_bwd: bool = False,
        device: Optional[Union[str, torch.device]] = None,
        remove_batch_dim: bool = False,
        cache: Optional[dict[str, Tensor]] = None,
        lazy: bool = False,
    ) -> tuple[dict[str, Tensor], list[tuple[str, HookFn]], list[tuple[str, HookFn]]]:
        """Hooks that store activations (and, with `incl_bwd`, gradients as `name + "_grad"`).

        The forward hooks come marked observe-only (`observe(fn, lazy=lazy)`), so the model keeps
        its fast paths. With `lazy=True` the dict may hold `LazyActivation`s for activations the
        forward pass does not need itself (`hook_result`); `ActivationCache` computes them on first
        access.
        """
        cache = {} if cache is None else cache
        keep = _names_filter_fn(names_filter, self.hook_dict)

        def save(suffix: str) -> HookFn:
            def save_hook(act: Union[Tensor, LazyActivation], hook: HookPoint) -> None:
                if isinstance(act, LazyActivation):
                    if lazy:
                        act = act if device is None else act.to(device)
                        cache[hook.name + suffix] = act.then(lambda t: t[0]) if remove_batch_dim else act
                        return
                    act = act.get()
                act = act.detach()
                if remove_batch_dim:
                    act = act[0]
                cache[hook.name + suffix] = act if device is None else act.to(device)

            return save_hook

        names = [name for name in self.hook_dict if keep(name)]
        fwd = [(name, observe(save(""), lazy=lazy)) for name in names]
        bwd = [(name, save("_grad")) for name in names] if incl_bwd else []
        return cache, fwd, bwd

    def run_with_cache(
        self,
        *model_args: Any,
        names_filter: NamesFilter = None,
        device: Optional[Union[str, torch.device]] = None,
        remove_batch_dim: bool = False,
        incl_bwd: bool = False,
        return_cache_object: bool = True,
        **model_kwargs: Any,
    ) -> tuple[Any, Any]:
        """Run the model and return `(output, cache)` with the activations of every hook point
        that passes `names_filter` (all of them by default).

        With `incl_bwd=True` the output must be a scalar (e.g. `return_type="loss"`); the
        backward pass runs here and gradients are cached as `"<name>_grad"`.
        """
        cache, fwd, bwd = self.get_caching_hooks(names_filter, incl_bwd, device, remove_batch_dim, lazy=True)
        with self.hooks(fwd_hooks=fwd, bwd_hooks=bwd):
            out = self(*model_args, **model_kwargs)
            if incl_bwd:
                if not (isinstance(out, Tensor) and out.numel() == 1):
                    raise ValueError(
                        "run_with_cache(incl_bwd=True) needs a scalar output to differentiate; "
                        "pass return_type='loss'"
                    )
                out.backward()
        if return_cache_object:
            from hookgpt.cache import ActivationCache

            return out, ActivationCache(cache, self, has_batch_dim=not remove_batch_dim)
        return out, {name: resolve(act) for name, act in cache.items()}
