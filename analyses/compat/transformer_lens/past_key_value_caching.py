"""TransformerLens's KV cache names over hookgpt's KVCache (same fields: entries with past_keys /
past_values, freeze/unfreeze, the cached attention mask)."""

from typing import Union

import torch
from torch import Tensor

from hookgpt.kv_cache import KVCache, KVCacheEntry

HookedTransformerKeyValueCacheEntry = KVCacheEntry


class HookedTransformerKeyValueCache(KVCache):
    @classmethod
    def init_cache(cls, cfg, device: Union[str, torch.device, None], batch_size: int = 1) -> "HookedTransformerKeyValueCache":
        gpt_cfg = cfg.to_gpt_config() if hasattr(cfg, "to_gpt_config") else cfg
        device = torch.device(device) if device is not None else None
        empty = KVCache.empty(gpt_cfg, batch_size, device=device, dtype=gpt_cfg.dtype)
        return cls(empty.entries, empty.attention_mask)

    @property
    def previous_attention_mask(self) -> Tensor:
        return self.attention_mask

    def append_attention_mask(self, attention_mask: Tensor) -> Tensor:
        """The mask of cached + new positions; remembered unless frozen."""
        attention_mask = attention_mask.to(self.attention_mask.device)
        full = torch.cat([self.attention_mask, attention_mask.to(self.attention_mask.dtype)], dim=-1)
        if not self.frozen:
            self.attention_mask = full
        return full
