"""TransformerLens 2.x's public API over hookgpt: change `import transformer_lens` to
`from analyses.compat import transformer_lens` and TL code runs on hookgpt models.

A thin layer: names, signatures and defaults mapped onto hookgpt's one implementation (model,
cache, FactoredMatrix, KV cache) and analyses' patching and head scans. What a GPT-2-architecture
library cannot do raises NotImplementedError naming the TransformerLens feature. The README's
"Differences from TransformerLens" lists every difference that remains.
"""

import sys
import types


class _Package(types.ModuleType):
    """As in TransformerLens, `transformer_lens.HookedTransformer` is the class although a module of
    that name exists; importing the module (under any alias) must not replace the class."""

    _CLASS_NAMES = ("HookedTransformer", "HookedTransformerConfig", "ActivationCache", "FactoredMatrix")

    def __setattr__(self, name, value):
        if name in self._CLASS_NAMES and isinstance(value, types.ModuleType) and name in self.__dict__:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

from analyses.compat.transformer_lens import hook_points, utils  # noqa: E402
from analyses.compat.transformer_lens import past_key_value_caching  # noqa: E402
from analyses.compat.transformer_lens.ActivationCache import ActivationCache  # noqa: E402
from analyses.compat.transformer_lens.FactoredMatrix import FactoredMatrix  # noqa: E402
from analyses.compat.transformer_lens.HookedTransformerConfig import HookedTransformerConfig  # noqa: E402
from analyses.compat.transformer_lens.HookedTransformer import HookedTransformer  # noqa: E402
from analyses.compat.transformer_lens.hook_points import HookPoint  # noqa: E402

__all__ = ["ActivationCache", "FactoredMatrix", "HookPoint", "HookedTransformer", "HookedTransformerConfig",
           "hook_points", "past_key_value_caching", "utils"]
