"""TransformerLens's ActivationCache: hookgpt's cache, with TL's error types and TL's logit_attrs."""

from typing import Union

from torch import Tensor

from hookgpt import cache
from hookgpt.hooks import LazyActivation


class ActivationCache(cache.ActivationCache):
    """TL code reads `cache.cache_dict[name]` directly and expects tensors: the first time
    `cache_dict` is read from outside, the entries hookgpt computes lazily (attention patterns
    and scores, `hook_result`) are computed, as TL computes them in the forward pass."""

    @property
    def cache_dict(self) -> dict:
        entries = self._entries
        if any(isinstance(v, LazyActivation) for v in entries.values()):
            for name, value in entries.items():
                if isinstance(value, LazyActivation):
                    entries[name] = value.get()
        return entries

    @cache_dict.setter
    def cache_dict(self, value: dict) -> None:
        self._entries = value

    def remove_batch_dim(self) -> "ActivationCache":
        try:
            return super().remove_batch_dim()
        except ValueError as error:
            raise AssertionError(str(error)) from None

    def _logit_direction(self, tokens: Union[int, str, Tensor]) -> Tensor:
        # TL projects on W_U[:, token] alone; hookgpt includes ln_final.w (1 once LayerNorm is
        # folded, TL's default, where the two agree)
        return self.model.tokens_to_residual_directions(tokens)
