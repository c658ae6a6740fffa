"""TransformerLens's ActivationCache: hookgpt's cache, with TL's error types and TL's logit_attrs."""

from typing import Union

from torch import Tensor

from hookgpt import cache


class ActivationCache(cache.ActivationCache):
    def remove_batch_dim(self) -> "ActivationCache":
        try:
            return super().remove_batch_dim()
        except ValueError as error:
            raise AssertionError(str(error)) from None

    def _logit_direction(self, tokens: Union[int, str, Tensor]) -> Tensor:
        # TL projects on W_U[:, token] alone; hookgpt includes ln_final.w (1 once LayerNorm is
        # folded, TL's default, where the two agree)
        return self.model.tokens_to_residual_directions(tokens)
