"""Key/value cache: the keys and values of positions already processed, kept for reuse.

Attention at a new position needs the keys and values of every earlier position. Those never
change once computed (the model is causal), so incremental decoding stores them per layer and
runs each new token through the model alone. Activation patching uses the same trick: positions
before the patched one are identical in every patched run, so their keys/values are computed once.

A `frozen` cache is read but never extended, so one prefix can serve many forward passes.
"""

from dataclasses import dataclass, field
from typing import Optional

import torch
from jaxtyping import Float, Int
from torch import Tensor

from hookgpt.config import GPTConfig


@dataclass
class KVCacheEntry:
    """The past keys and values of one layer, `[batch, pos, n_heads, d_head]` each."""

    past_keys: Float[Tensor, "batch pos n_heads d_head"]
    past_values: Float[Tensor, "batch pos n_heads d_head"]
    frozen: bool = False

    def append(
        self,
        new_keys: Float[Tensor, "batch new_pos n_heads d_head"],
        new_values: Float[Tensor, "batch new_pos n_heads d_head"],
    ) -> tuple[Float[Tensor, "batch all_pos n_heads d_head"], Float[Tensor, "batch all_pos n_heads d_head"]]:
        """Return past + new keys and values; remember them unless frozen."""
        keys = torch.cat([self.past_keys.to(new_keys.dtype), new_keys], dim=1)
        values = torch.cat([self.past_values.to(new_values.dtype), new_values], dim=1)
        if not self.frozen:
            self.past_keys, self.past_values = keys, values
        return keys, values


@dataclass
class KVCache:
    """One `KVCacheEntry` per layer plus the attention mask of the cached positions."""

    entries: list[KVCacheEntry]
    attention_mask: Int[Tensor, "batch pos"]
    frozen: bool = False
    _pending_mask: Optional[Tensor] = field(default=None, repr=False)

    @classmethod
    def empty(
        cls, cfg: GPTConfig, batch_size: int, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None
    ) -> "KVCache":
        dtype = dtype or cfg.dtype
        shape = (batch_size, 0, cfg.n_heads, cfg.d_head)
        entries = [
            KVCacheEntry(torch.empty(shape, device=device, dtype=dtype), torch.empty(shape, device=device, dtype=dtype))
            for _ in range(cfg.n_layers)
        ]
        return cls(entries, torch.ones((batch_size, 0), dtype=torch.long, device=device))

    def __getitem__(self, layer: int) -> KVCacheEntry:
        return self.entries[layer]

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def batch_size(self) -> int:
        return self.attention_mask.shape[0]

    @property
    def length(self) -> int:
        """How many positions are cached."""
        return self.attention_mask.shape[1]

    def freeze(self) -> "KVCache":
        """Make this cache (and every entry) read-only: forward passes use it but don't extend it."""
        self.frozen = True
        for entry in self.entries:
            entry.frozen = True
        return self

    def unfreeze(self) -> "KVCache":
        self.frozen = False
        for entry in self.entries:
            entry.frozen = False
        return self

    def extend_mask(self, new_mask: Int[Tensor, "batch new_pos"]) -> None:
        """Record the attention mask of positions just appended (called by the model)."""
        if not self.frozen:
            self.attention_mask = torch.cat([self.attention_mask, new_mask.to(self.attention_mask)], dim=1)

    def expand(self, n: int) -> "KVCache":
        """A frozen cache for a batch `n` times larger (each row repeated `n` times, row-major),
        sharing memory with this one: one prefix reused across `n` patched runs."""
        entries = [
            KVCacheEntry(
                e.past_keys.repeat_interleave(n, dim=0), e.past_values.repeat_interleave(n, dim=0), frozen=True
            )
            for e in self.entries
        ]
        return KVCache(entries, self.attention_mask.repeat_interleave(n, dim=0), frozen=True)
