"""TransformerLens's `hook_points`: HookPoint and HookedRootModule with TL's signatures.

hookgpt's own hook points do the work; these add TL's bookkeeping: permanent hooks, context levels
(`hooks()` removes the hooks of its own level on exit, error or not), `fwd_hooks`/`bwd_hooks` lists
of `LensHandle`s, backward hooks that may return a 1-tuple, `layer()`.
"""

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal, Optional, Sequence, Union

from torch import Tensor

from hookgpt import hooks as hg_hooks
from hookgpt.hooks import HookHandle, NamesFilter  # noqa: F401  (TL exports NamesFilter here)

HookFunction = Callable[..., Any]


@dataclass
class LensHandle:
    """TL's view of one attached hook: `hook` (with `.remove()`), permanence and context level."""

    hook: HookHandle
    is_permanent: bool = False
    context_level: Optional[int] = None


def _unwrap_grad(fn: HookFunction) -> HookFunction:
    """A backward hook may return `(grad,)` in TL; hookgpt's takes the tensor."""

    def bwd_hook(grad: Tensor, hook: Any) -> Optional[Tensor]:
        out = fn(grad, hook=hook)
        return out[0] if isinstance(out, tuple) and len(out) == 1 else out

    bwd_hook.__name__ = getattr(fn, "__name__", "bwd_hook")
    return bwd_hook


class HookPoint(hg_hooks.HookPoint):
    def __init__(self):
        super().__init__()
        self.ctx: dict = {}

    @property
    def fwd_hooks(self) -> list[LensHandle]:
        return [LensHandle(h, getattr(h, "is_permanent", False), getattr(h, "context_level", None)) for h in self.fwd_handles]

    @property
    def bwd_hooks(self) -> list[LensHandle]:
        return [LensHandle(h, getattr(h, "is_permanent", False), getattr(h, "context_level", None)) for h in self.bwd_handles]

    def add_hook(
        self,
        hook: HookFunction,
        dir: Literal["fwd", "bwd"] = "fwd",
        is_permanent: bool = False,
        level: Optional[int] = None,
        prepend: bool = False,
        observe_only: bool = False,
        lazy: bool = False,
    ) -> HookHandle:
        fn = _unwrap_grad(hook) if dir == "bwd" else hook
        handle = super().add_hook(fn, dir=dir, prepend=prepend, observe_only=observe_only, lazy=lazy)
        handle.is_permanent, handle.context_level = is_permanent, level
        return handle

    def add_perma_hook(self, hook: HookFunction, dir: Literal["fwd", "bwd"] = "fwd") -> HookHandle:
        return self.add_hook(hook, dir=dir, is_permanent=True)

    def remove_hooks(
        self, dir: Literal["fwd", "bwd", "both"] = "fwd", including_permanent: bool = False, level: Optional[int] = None
    ) -> None:
        if dir not in ("fwd", "bwd", "both"):
            raise ValueError(f"Invalid direction {dir}")
        for d in ("fwd", "bwd"):
            if dir in (d, "both"):
                for handle in list(self._handles(d)):
                    permanent = getattr(handle, "is_permanent", False)
                    if including_permanent or (not permanent and (level is None or getattr(handle, "context_level", None) == level)):
                        handle.remove()

    def clear_context(self) -> None:
        self.ctx = {}

    def layer(self) -> int:
        if self.name is None:
            raise ValueError("Name cannot be None")
        return int(self.name.split(".")[1])


def as_tl_hook_point(hp: hg_hooks.HookPoint) -> HookPoint:
    """Give one of hookgpt's hook points TL's methods (same object, same attached hooks)."""
    if not isinstance(hp, HookPoint):
        hp.__class__ = HookPoint
        hp.ctx = {}
    return hp


class HookedRootModule(hg_hooks.HookedRootModule):
    """TL's hook API over hookgpt's: permanent hooks, levels, `hooks()` context manager."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.is_caching = False
        self.context_level = 0

    def setup(self) -> None:
        for module in self.modules():
            if isinstance(module, hg_hooks.HookPoint):
                as_tl_hook_point(module)
        super().setup()

    def _hook_fires(self, name: str) -> bool:
        """Whether TL would run this hook point (HookedTransformer: its use_* flags)."""
        return True

    def check_hooks_to_add(self, hook_point: HookPoint, hook_point_name: str, hook: HookFunction, dir: str = "fwd",
                           is_permanent: bool = False, prepend: bool = False) -> None:
        """Override to refuse some hooks (HookedTransformer refuses those TL's flags switch off)."""

    def check_and_add_hook(self, hook_point: HookPoint, hook_point_name: str, hook: HookFunction, dir: str = "fwd",
                           is_permanent: bool = False, level: Optional[int] = None, prepend: bool = False) -> HookHandle:
        self.check_hooks_to_add(hook_point, hook_point_name, hook, dir=dir, is_permanent=is_permanent, prepend=prepend)
        return hook_point.add_hook(hook, dir=dir, is_permanent=is_permanent, level=level, prepend=prepend)

    def add_hook(
        self,
        name: Union[str, Callable[[str], bool]],
        hook: HookFunction,
        dir: Literal["fwd", "bwd"] = "fwd",
        is_permanent: bool = False,
        level: Optional[int] = None,
        prepend: bool = False,
    ) -> list[HookHandle]:
        if isinstance(name, str):
            hook_point = self._resolve(name)[0]
            return [self.check_and_add_hook(hook_point, name, hook, dir, is_permanent, level, prepend)]
        return [
            self.check_and_add_hook(hp, hp_name, hook, dir, is_permanent, level, prepend)
            for hp_name, hp in self.hook_dict.items()
            if name(hp_name)
        ]

    def add_perma_hook(self, name: Union[str, Callable[[str], bool]], hook: HookFunction, dir: Literal["fwd", "bwd"] = "fwd") -> None:
        self.add_hook(name, hook, dir=dir, is_permanent=True)

    def remove_all_hook_fns(self, direction: Literal["fwd", "bwd", "both"] = "both", including_permanent: bool = False,
                            level: Optional[int] = None) -> None:
        for hp in self.hook_dict.values():
            hp.remove_hooks(direction, including_permanent=including_permanent, level=level)

    def clear_contexts(self) -> None:
        for hp in self.hook_dict.values():
            hp.clear_context()

    def reset_hooks(self, clear_contexts: bool = True, direction: Literal["fwd", "bwd", "both"] = "both",
                    including_permanent: bool = False, level: Optional[int] = None) -> None:
        """Remove hooks; permanent ones only with `including_permanent` (as TL)."""
        if clear_contexts:
            self.clear_contexts()
        self.remove_all_hook_fns(direction, including_permanent, level=level)
        self.is_caching = False

    def _enable_hook_with_name(self, name: str, hook: Callable, dir: Literal["fwd", "bwd"]) -> None:
        self.mod_dict[name].add_hook(hook, dir=dir, level=self.context_level)

    def _enable_hooks_for_points(self, hook_points: Iterable[tuple[str, HookPoint]], enabled: Callable, hook: Callable,
                                 dir: Literal["fwd", "bwd"]) -> None:
        for hook_name, hook_point in hook_points:
            if enabled(hook_name):
                hook_point.add_hook(hook, dir=dir, level=self.context_level)

    def _enable_hook(self, name: Union[str, Callable], hook: Callable, dir: Literal["fwd", "bwd"]) -> None:
        if isinstance(name, str):
            self._enable_hook_with_name(name=name, hook=hook, dir=dir)
        else:
            self._enable_hooks_for_points(hook_points=self.hook_dict.items(), enabled=name, hook=hook, dir=dir)

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Sequence = (), bwd_hooks: Sequence = (), reset_hooks_end: bool = True, clear_contexts: bool = False):
        try:
            self.context_level += 1
            for direction, hook_list in (("fwd", fwd_hooks), ("bwd", bwd_hooks)):
                for name, hook in hook_list:
                    for hp in self._resolve(name):
                        if self._hook_fires(hp.name):  # as in TL, a hook point its flag switches off never runs
                            hp.add_hook(hook, dir=direction, level=self.context_level)
            yield self
        finally:
            if reset_hooks_end:
                self.reset_hooks(clear_contexts, including_permanent=False, level=self.context_level)
            self.context_level -= 1

    def run_with_hooks(self, *model_args: Any, fwd_hooks: Sequence = (), bwd_hooks: Sequence = (), reset_hooks_end: bool = True,
                       clear_contexts: bool = False, **model_kwargs: Any) -> Any:
        with self.hooks(fwd_hooks, bwd_hooks, reset_hooks_end, clear_contexts):
            return self.forward(*model_args, **model_kwargs)
