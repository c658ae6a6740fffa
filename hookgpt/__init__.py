"""hookgpt: a clean GPT-2 with a named hook on every activation.

    from hookgpt import HookedGPT
    model = HookedGPT.from_pretrained("hookgpt-shakespeare")
    logits, cache = model.run_with_cache("To be, or not to be")
"""

from hookgpt.cache import ActivationCache, get_act_name
from hookgpt.config import GPTConfig
from hookgpt.factored import FactoredMatrix
from hookgpt.hooks import HookedRootModule, HookPoint, HookShapeError
from hookgpt.kv_cache import KVCache
from hookgpt.model import HookedGPT
from hookgpt.tokenizer import Tokenizer

__version__ = "0.1.0"

__all__ = [
    "ActivationCache",
    "FactoredMatrix",
    "GPTConfig",
    "HookedGPT",
    "HookedRootModule",
    "HookPoint",
    "HookShapeError",
    "KVCache",
    "Tokenizer",
    "get_act_name",
]
