"""HookedGPT: the full transformer, built from the components, with a hook on every activation.

    tokens -> embed + pos_embed -> blocks[0..n_layers) -> ln_final -> unembed -> logits

`forward` accepts text or token ids, can stop early (`stop_at_layer`) or start from a residual
stream (`start_at_layer`), and returns logits, the loss, both, or nothing. The hook API
(`run_with_hooks`, `run_with_cache`, `hooks()`, `add_hook`) comes from `HookedRootModule`.
"""

import copy
import math
import os
from typing import Any, Literal, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from hookgpt import tokenizer as tok
from hookgpt.components import AttentionMask, Embed, LayerNorm, PosEmbed, TransformerBlock, Unembed
from hookgpt.config import GPTConfig
from hookgpt.errors import ArgumentError, ArgumentTypeError
from hookgpt.factored import FactoredMatrix
from hookgpt.hooks import HookedRootModule, HookPoint
from hookgpt.kv_cache import KVCache

# Boundary types are deliberately broad: `forward` checks its input itself, so that bad input gets
# a message saying what was expected rather than a type-checker dump. The accepted forms are text,
# a list of texts, token ids [batch, pos] or [pos], or (with start_at_layer) a residual stream
# [batch, pos, d_model]; return types "logits", "loss", "both" or None.
ReturnType = Any  # "logits", "loss", "both" or None
ModelInput = Any  # text, a list of texts, token ids [batch, pos] / [pos], or a residual stream
MaskInput = Any  # None, or [batch, pos] of 0s and 1s: a tensor, an array or nested lists
LayerInput = Any  # None or an int
CacheInput = Any  # None or a KVCache


class HookedGPT(HookedRootModule):
    """A GPT-2 style transformer whose every activation is behind a named `HookPoint`.

    >>> model = HookedGPT(GPTConfig(n_layers=2, d_model=64, n_heads=4))
    >>> logits, cache = model.run_with_cache("Hello world")
    >>> cache["pattern", 0].shape   # [batch, n_heads, query_pos, key_pos]
    """

    def __init__(self, cfg: Union[GPTConfig, str, None] = None, tokenizer: Optional[tok.Tokenizer] = None, init_weights: bool = True):
        super().__init__()
        if cfg is None:
            cfg = GPTConfig()
        elif isinstance(cfg, str):
            cfg = GPTConfig.preset(cfg)
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.position_offset: Optional[int] = None  # in a forward with past_kv_cache: how many positions are cached
        self.generating = False  # True during the forward passes of `generate`

        self.embed = Embed(cfg)
        self.hook_embed = HookPoint()  # [batch, pos, d_model]
        self.pos_embed = PosEmbed(cfg)
        self.hook_pos_embed = HookPoint()  # [batch, pos, d_model]
        self.blocks = nn.ModuleList([TransformerBlock(cfg, layer) for layer in range(cfg.n_layers)])
        self.ln_final = LayerNorm(cfg)
        self.unembed = Unembed(cfg, tied_embed=self.embed if cfg.tie_embeddings else None)
        if init_weights:
            self.init_weights()
        self.setup()

    # ------------------------------------------------------------------ initialisation

    def init_weights(self) -> None:
        """GPT-2 initialisation: N(0, init_range) weights, zero biases, unit LayerNorm gains.
        Matrices that write into the residual stream (W_O, W_out) get std scaled by
        1/sqrt(2 * n_layers), so the residual's variance does not grow with depth."""
        std = self.cfg.init_range
        residual_std = std / math.sqrt(2 * max(self.cfg.n_layers, 1))
        with torch.no_grad():
            for name, param in self.named_parameters():
                leaf = name.rsplit(".", 1)[-1]
                if leaf in ("W_O", "W_out"):
                    param.normal_(0.0, residual_std)
                elif leaf.startswith("W_"):
                    param.normal_(0.0, std)
                elif leaf == "w":
                    param.fill_(1.0)
                else:
                    param.zero_()

    # ------------------------------------------------------------------ tokens in, tokens out

    @property
    def tokenizer(self) -> tok.Tokenizer:
        """The tokenizer (GPT-2's BPE, shipped with the package, unless another was given)."""
        if self._tokenizer is None:
            if self.cfg.d_vocab < 50257:
                raise ArgumentError(
                    f"this model has d_vocab={self.cfg.d_vocab}, smaller than GPT-2's 50257 tokens; "
                    "pass a matching tokenizer (HookedGPT(cfg, tokenizer=...)) or feed token ids"
                )
            self.tokenizer = tok.Tokenizer.gpt2()
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, value: Optional[tok.Tokenizer]) -> None:
        if value is not None and getattr(value, "_source", "") is None:
            # the shipped GPT-2 tokenizer is one cached object: give this model its own (sharing the
            # vocabulary), so that e.g. `model.tokenizer.padding_side = "left"` stays with this model
            value = copy.copy(value)
        self._tokenizer = value

    def to_tokens(
        self,
        input: Union[str, list[str]],
        prepend_bos: bool = True,
        padding_side: Optional[Literal["left", "right"]] = None,
        truncate: bool = False,
    ) -> Int[Tensor, "batch pos"]:
        """Text to a `[batch, pos]` tensor of token ids (BOS prepended, padded to equal length on
        `padding_side`; None: `model.tokenizer.padding_side`, "right" unless set)."""
        tokens = tok.to_tokens(self.tokenizer, input, prepend_bos=prepend_bos, padding_side=padding_side)
        if truncate:
            tokens = tokens[:, : self.cfg.n_ctx]
        return tokens.to(self.device)

    def to_string(self, tokens: Union[Int[Tensor, "batch pos"], Int[Tensor, "pos"], list[int]]) -> Union[str, list[str]]:
        return tok.to_string(self.tokenizer, tokens)

    def to_str_tokens(self, input: Union[str, Int[Tensor, "pos"], Int[Tensor, "1 pos"], list[int]], prepend_bos: bool = True) -> list[str]:
        return tok.to_str_tokens(self.tokenizer, input, prepend_bos=prepend_bos)

    def to_single_token(self, string: str) -> int:
        return tok.to_single_token(self.tokenizer, string)

    def get_token_position(
        self,
        single_token: Union[str, int],
        input: Union[str, Int[Tensor, "pos"], Int[Tensor, "1 pos"]],
        mode: Literal["first", "last"] = "first",
        prepend_bos: bool = True,
    ) -> int:
        return tok.get_token_position(self.tokenizer, single_token, input, mode=mode, prepend_bos=prepend_bos)

    # ------------------------------------------------------------------ the forward pass

    def forward(
        self,
        input: ModelInput,
        return_type: ReturnType = "logits",
        loss_per_token: bool = False,
        prepend_bos: bool = True,
        padding_side: Optional[str] = None,
        attention_mask: MaskInput = None,
        start_at_layer: LayerInput = None,
        stop_at_layer: LayerInput = None,
        tokens: Optional[Int[Tensor, "batch pos"]] = None,
        past_kv_cache: CacheInput = None,
        logit_positions: Optional[Sequence[int]] = None,
    ) -> Any:
        """Run the model.

        Args:
            input: text, a list of texts (padded; the attention mask is made for you), token ids
                `[batch, pos]` or `[pos]`, or with `start_at_layer` a residual stream `[batch, pos, d_model]`.
            return_type: "logits" `[batch, pos, d_vocab]`, "loss" (mean next-token cross-entropy),
                "both" (logits, loss), or None.
            loss_per_token: return the loss as `[batch, pos - 1]` instead of its mean.
            padding_side: the side text batches are padded on, and the side token ids are taken to be
                padded on (None: `model.tokenizer.padding_side`, "right" unless set).
            attention_mask: `[batch, pos]`, 1 for real tokens and 0 for padding. Positions are counted
                over real tokens only, so left padding gives the same outputs as no padding. When
                LEFT-padded token ids come without one, it is inferred from the pad token as
                TransformerLens does (`infer_attention_mask`): leading pad tokens are padding, except
                the BOS a `prepend_bos` prompt starts with.
            start_at_layer: `input` is the residual stream before this block; embeddings are skipped.
                Pass `tokens` too if you want a loss.
            stop_at_layer: return the residual stream before this block (negative counts from the end;
                `n_layers` gives the last block's output before `ln_final`).
            past_kv_cache: keys/values of earlier positions (see `hookgpt.kv_cache`); `input` holds
                only the new positions. While such a forward runs, `model.position_offset` is the
                number of cached positions, so a hook can tell which positions it sees (it is None
                in a forward without a cache).
            logit_positions: unembed only these positions of the input (logits `[batch,
                len(logit_positions), d_vocab]`); `ln_final` and its hooks still see every position.
                Saves the biggest matrix product when only a few positions are read. Not with a loss.
        """
        if return_type not in ("logits", "loss", "both", None):
            raise ArgumentError(f"return_type must be 'logits', 'loss', 'both' or None, got {return_type!r}")
        past_len = 0 if past_kv_cache is None else self._check_kv_cache(past_kv_cache)

        if isinstance(input, (str, list)):
            input, text_mask = tok.to_tokens_with_mask(self.tokenizer, input, prepend_bos=prepend_bos, padding_side=padding_side)
            input = input.to(self.device)
            attention_mask = text_mask.to(self.device) if attention_mask is None else attention_mask
        elif attention_mask is None and start_at_layer is None and self._padding_side(padding_side) == "left":
            attention_mask = self._inferred_attention_mask(input, prepend_bos)
        if start_at_layer is None:
            tokens = self._validated_tokens(input, past_len)
        else:
            self._check_residual(input, start_at_layer)
        batch, new_len = (input if start_at_layer is not None else tokens).shape[:2]
        full_mask = self._full_attention_mask(attention_mask, past_kv_cache, batch, new_len)
        read = self._logit_positions(logit_positions, new_len, return_type)

        start = 0 if start_at_layer is None else self._layer_index(start_at_layer, "start_at_layer")
        stop = self.cfg.n_layers if stop_at_layer is None else self._layer_index(stop_at_layer, "stop_at_layer")
        if stop < start:
            raise ArgumentError(
                f"stop_at_layer={stop_at_layer} comes before start_at_layer={start_at_layer}: no layer would run"
            )

        mask = self._block_mask(full_mask, new_len)
        outer_offset, self.position_offset = self.position_offset, None if past_kv_cache is None else past_len
        try:
            if start_at_layer is None:
                positions = self._positions(full_mask, past_len, new_len, batch)
                residual = self.hook_embed(self.embed(tokens)) + self.hook_pos_embed(self.pos_embed(positions))
            else:
                residual = input
            for layer in range(start, stop):
                entry = None if past_kv_cache is None else past_kv_cache[layer]
                residual = self.blocks[layer](residual, mask, entry)
            if stop_at_layer is None:
                normalized = self.ln_final(residual)
        finally:
            self.position_offset = outer_offset
        if past_kv_cache is not None:
            past_kv_cache.extend_mask(full_mask[:, past_len:] if full_mask is not None else torch.ones(batch, new_len, dtype=torch.long, device=self.device))
        if stop_at_layer is not None:
            return residual

        if return_type is None:
            return None  # (ln_final still ran above: its hooks fire, so caching sees them)
        logits = self.unembed(normalized if read is None else normalized[:, read])
        if return_type == "logits":
            return logits
        if tokens is None:
            raise ArgumentError("a loss needs the token ids: pass tokens=... together with start_at_layer")
        new_mask = None if full_mask is None else full_mask[:, past_len:]
        loss = self.loss_fn(logits, tokens, new_mask, per_token=loss_per_token)
        return loss if return_type == "loss" else (logits, loss)

    def loss_fn(
        self,
        logits: Float[Tensor, "batch pos d_vocab"],
        tokens: Int[Tensor, "batch pos"],
        attention_mask: Optional[Int[Tensor, "batch pos"]] = None,
        per_token: bool = False,
    ) -> Tensor:
        """Next-token cross-entropy: logits at position i predict token i + 1. Padding is left out
        (per-token losses there are 0)."""
        if tokens.shape[1] < 2:
            raise ArgumentError("the loss needs at least 2 tokens per sequence (one to predict from, one to predict)")
        # targets[:, i] = tokens[:, i + 1]; the last position has none (ignore_index). Shifting the
        # targets rather than slicing the logits avoids copying a [batch, pos, d_vocab] tensor.
        targets = torch.full_like(tokens, -100, device=logits.device)
        targets[:, :-1] = tokens[:, 1:]
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none")
        loss = loss.view(tokens.shape)[:, :-1].to(logits.dtype)  # [batch, pos - 1]
        if attention_mask is None:
            return loss if per_token else loss.mean()
        keep = (attention_mask[:, :-1] * attention_mask[:, 1:]).to(loss.dtype)
        loss = loss * keep
        return loss if per_token else loss.sum() / keep.sum().clamp(min=1)

    # ------------------------------------------------------------------ input checks and masks

    def _padding_side(self, padding_side: Optional[str]) -> str:
        if padding_side is not None:
            return padding_side
        return getattr(self._tokenizer, "padding_side", "right") if self._tokenizer is not None else "right"

    def _inferred_attention_mask(self, tokens: Tensor, prepend_bos: bool) -> Optional[Tensor]:
        """The mask of left-padded token ids given without one (None if nothing is padding)."""
        if not isinstance(tokens, Tensor) or tokens.is_floating_point():
            return None  # _validated_tokens says what is wrong
        try:
            tokenizer = self.tokenizer
        except ValueError as error:
            raise ValueError(
                "left-padded token ids without attention_mask: the mask is inferred from the pad token, "
                "but this model has no tokenizer; pass attention_mask"
            ) from error
        mask = infer_attention_mask(tokens if tokens.ndim == 2 else tokens[None], tokenizer.pad_token_id, tokenizer.bos_token_id, "left", prepend_bos)
        return None if bool(mask.all()) else mask

    def _validated_tokens(self, tokens: Any, past_len: int) -> Int[Tensor, "batch pos"]:
        """Token ids as a long tensor `[batch, pos]` on the model's device, or a clear error.
        Any integer dtype is accepted (uint16 is the trainer's token-file dtype)."""
        if not isinstance(tokens, Tensor):
            raise ArgumentTypeError(
                f"input: expected text, a list of texts or a tensor of token ids, got {type(tokens).__name__}"
            )
        if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
            raise ArgumentTypeError(
                f"input: token ids must be an integer tensor, got {tokens.dtype}; "
                "to feed a residual stream, pass start_at_layer"
            )
        if tokens.ndim == 1:
            tokens = tokens[None]
        if tokens.ndim != 2:
            raise ArgumentError(f"input: token ids must have shape [batch, pos] or [pos], got shape {tuple(tokens.shape)}")
        if tokens.shape[0] == 0:
            raise ArgumentError(f"input: got an empty batch (shape {tuple(tokens.shape)}); pass at least one sequence")
        if tokens.shape[1] == 0:
            raise ArgumentError("input: got an empty sequence (0 tokens)")
        length = past_len + tokens.shape[1]
        if length > self.cfg.n_ctx:
            what = f"{tokens.shape[1]} tokens" if not past_len else f"{past_len} cached + {tokens.shape[1]} new tokens"
            raise ArgumentError(
                f"input: sequence of {what} is longer than the model's context n_ctx={self.cfg.n_ctx}; "
                "shorten the input (to_tokens(..., truncate=True) cuts it)"
            )
        if tokens.dtype != torch.long:
            tokens = tokens.to(torch.int32).long() if tokens.dtype == torch.uint16 else tokens.long()
        low, high = int(tokens.min()), int(tokens.max())
        if low < 0 or high >= self.cfg.d_vocab:
            bad = low if low < 0 else high
            where = tuple(int(i) for i in (tokens == bad).nonzero()[0])
            raise ArgumentError(
                f"input: token id {bad} at index {where} is out of range: this model's vocabulary has "
                f"d_vocab={self.cfg.d_vocab} ids (0..{self.cfg.d_vocab - 1})"
            )
        return tokens.to(self.device)

    def _logit_positions(self, logit_positions: Optional[Sequence[int]], new_len: int, return_type: ReturnType) -> Optional[list[int]]:
        if logit_positions is None:
            return None
        if return_type in ("loss", "both"):
            raise ArgumentError(f"logit_positions is for return_type='logits' (a loss needs every position), got {return_type!r}")
        read = [int(p) for p in logit_positions]
        bad = [p for p in read if not -new_len <= p < new_len]
        if bad:
            raise ArgumentError(f"logit_positions {bad} out of range for an input of {new_len} positions")
        return [p % new_len for p in read]

    def _check_residual(self, residual: Any, start_at_layer: Any) -> None:
        """With `start_at_layer`, the input is a residual stream `[batch, pos, d_model]` of floats."""
        if not isinstance(residual, Tensor) or residual.ndim != 3 or residual.shape[-1] != self.cfg.d_model or not residual.is_floating_point():
            got = f"{residual.dtype} of shape {tuple(residual.shape)}" if isinstance(residual, Tensor) else type(residual).__name__
            raise ArgumentError(
                f"input: with start_at_layer={start_at_layer} the input must be a residual stream [batch, pos, d_model="
                f"{self.cfg.d_model}] of floats, got {got}"
            )
        if residual.shape[0] == 0 or residual.shape[1] == 0:
            raise ArgumentError(f"input: got an empty residual stream of shape {tuple(residual.shape)}")

    def _layer_index(self, layer: Any, what: str) -> int:
        """A layer number in [0, n_layers] (negative counts from the end), or a clear error."""
        if isinstance(layer, Tensor) and layer.ndim == 0 and not layer.is_floating_point() and layer.dtype != torch.bool:
            layer = int(layer)
        if isinstance(layer, bool) or not isinstance(layer, int) and not hasattr(layer, "__index__"):
            raise ArgumentTypeError(f"{what} must be an integer layer index, got {type(layer).__name__} {layer!r}")
        layer, n = layer.__index__(), self.cfg.n_layers
        if not -n <= layer <= n:
            raise ArgumentError(f"{what}={layer} is out of range for a model with n_layers={n} (valid: {-n}..{n})")
        return layer % n if layer < 0 else layer

    def _full_attention_mask(
        self, attention_mask: Any, past_kv_cache: Any, batch: int, new_len: int
    ) -> Optional[Int[Tensor, "batch all_pos"]]:
        """The mask over past + new positions, or None when every position is a real token."""
        if attention_mask is not None:
            attention_mask = _checked_mask(attention_mask, (batch, new_len)).to(self.device)
        if past_kv_cache is not None:
            if past_kv_cache.batch_size != batch:
                raise ArgumentError(f"past_kv_cache holds a batch of {past_kv_cache.batch_size}, the input a batch of {batch}")
            new = attention_mask if attention_mask is not None else torch.ones(batch, new_len, dtype=torch.long, device=self.device)
            attention_mask = torch.cat([past_kv_cache.attention_mask.to(self.device), new], dim=1)
        if attention_mask is not None and not bool(attention_mask.any(dim=1).all()):
            row = int((~attention_mask.bool().any(dim=1)).nonzero()[0])
            raise ArgumentError(f"attention_mask: row {row} is all zeros; every sequence needs at least one real token (1)")
        if attention_mask is not None and bool(attention_mask.all()):
            return None
        return attention_mask

    def _check_kv_cache(self, past_kv_cache: Any) -> int:
        """A KV cache must be a `KVCache` made for this model's shape; returns its length."""
        if not isinstance(past_kv_cache, KVCache):
            raise ArgumentTypeError(f"past_kv_cache must be a KVCache (KVCache.empty(model.cfg, batch)), got {type(past_kv_cache).__name__}")
        cfg = self.cfg
        if len(past_kv_cache) != cfg.n_layers:
            raise ArgumentError(f"past_kv_cache has {len(past_kv_cache)} layers, this model n_layers={cfg.n_layers}: it was made for another config")
        keys = past_kv_cache[0].past_keys if len(past_kv_cache) else None
        if keys is not None and tuple(keys.shape[2:]) != (cfg.n_heads, cfg.d_head):
            raise ArgumentError(
                f"past_kv_cache holds [n_heads, d_head] = {tuple(keys.shape[2:])}, this model {(cfg.n_heads, cfg.d_head)}: "
                "it was made for another config"
            )
        return past_kv_cache.length

    def _positions(self, full_mask: Optional[Tensor], past_len: int, new_len: int, batch: int) -> Int[Tensor, "batch pos"]:
        if full_mask is None:
            return torch.arange(past_len, past_len + new_len, device=self.device).expand(batch, new_len)
        # count real tokens only, so a left-padded sequence starts at position 0
        return (full_mask.cumsum(dim=-1) - 1).clamp(min=0)[:, -new_len:]

    def _block_mask(self, full_mask: Optional[Tensor], new_len: int) -> AttentionMask:
        """Which keys each new query may attend to: causal, real tokens only. `None` = plain causal
        over the new positions (lets attention use its fastest kernel)."""
        if full_mask is None:
            return None
        key_len = full_mask.shape[1]
        causal = torch.ones(new_len, key_len, dtype=torch.bool, device=self.device).tril(diagonal=key_len - new_len)
        allowed = causal[None] & full_mask.bool()[:, None, :]
        # a padding query with no real key before it would have an empty softmax: let it see itself
        allowed |= _self_diagonal(new_len, key_len, self.device)
        return allowed[:, None]

    # ------------------------------------------------------------------ weights, stacked over layers

    @property
    def device(self) -> torch.device:
        return self.embed.W_E.device

    @property
    def W_E(self) -> Float[Tensor, "d_vocab d_model"]:
        return self.embed.W_E

    @property
    def W_pos(self) -> Float[Tensor, "n_ctx d_model"]:
        return self.pos_embed.W_pos

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        return self.unembed.W_U

    @property
    def b_U(self) -> Float[Tensor, "d_vocab"]:
        return self.unembed.b_U

    def _stack(self, module: str, name: str) -> Tensor:
        return torch.stack([getattr(getattr(block, module), name) for block in self.blocks], dim=0)

    @property
    def W_Q(self) -> Float[Tensor, "layer n_heads d_model d_head"]:
        return self._stack("attn", "W_Q")

    @property
    def W_K(self) -> Float[Tensor, "layer n_heads d_model d_head"]:
        return self._stack("attn", "W_K")

    @property
    def W_V(self) -> Float[Tensor, "layer n_heads d_model d_head"]:
        return self._stack("attn", "W_V")

    @property
    def W_O(self) -> Float[Tensor, "layer n_heads d_head d_model"]:
        return self._stack("attn", "W_O")

    @property
    def b_Q(self) -> Float[Tensor, "layer n_heads d_head"]:
        return self._stack("attn", "b_Q")

    @property
    def b_K(self) -> Float[Tensor, "layer n_heads d_head"]:
        return self._stack("attn", "b_K")

    @property
    def b_V(self) -> Float[Tensor, "layer n_heads d_head"]:
        return self._stack("attn", "b_V")

    @property
    def b_O(self) -> Float[Tensor, "layer d_model"]:
        return self._stack("attn", "b_O")

    @property
    def W_in(self) -> Float[Tensor, "layer d_model d_mlp"]:
        return self._stack("mlp", "W_in")

    @property
    def W_out(self) -> Float[Tensor, "layer d_mlp d_model"]:
        return self._stack("mlp", "W_out")

    @property
    def b_in(self) -> Float[Tensor, "layer d_mlp"]:
        return self._stack("mlp", "b_in")

    @property
    def b_out(self) -> Float[Tensor, "layer d_model"]:
        return self._stack("mlp", "b_out")

    @property
    def QK(self) -> FactoredMatrix:
        """Each head's bilinear attention form W_Q W_K^T, `[layer, n_heads, d_model, d_model]`, factored."""
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    @property
    def OV(self) -> FactoredMatrix:
        """Each head's map from what it reads to what it writes, W_V W_O, `[layer, n_heads, d_model, d_model]`, factored."""
        return FactoredMatrix(self.W_V, self.W_O)

    def tokens_to_residual_directions(self, tokens: Union[int, str, Int[Tensor, "..."]]) -> Tensor:
        """The unembedding column(s) of `tokens`: `[d_model]` for one token, `[..., d_model]` for a tensor."""
        if isinstance(tokens, str):
            tokens = self.to_single_token(tokens)
        if isinstance(tokens, int):
            return self.W_U[:, tokens]
        return self.W_U[:, tokens.to(self.device)].movedim(0, -1)

    def n_params(self, include_embeddings: bool = True) -> int:
        return sum(
            p.numel() for name, p in self.named_parameters() if include_embeddings or not name.startswith(("embed", "pos_embed", "unembed"))
        )

    # ------------------------------------------------------------------ loading, saving, generating

    @classmethod
    def from_pretrained(cls, name_or_path: Union[str, os.PathLike], **kwargs: Any) -> "HookedGPT":
        """Load a model: a hookgpt checkpoint, a Hugging Face GPT-2 directory, a model name in the
        local Hugging Face cache, or a model shipped with hookgpt. See `hookgpt.loading`."""
        from hookgpt.loading import from_pretrained

        return from_pretrained(name_or_path, **kwargs)

    def save_pretrained(self, directory: Union[str, os.PathLike]) -> None:
        """Write the weights (safetensors) and config (JSON) to `directory`, atomically."""
        from hookgpt.loading import save_pretrained

        save_pretrained(self, directory)

    def interventions(self, *interventions: Any) -> Any:
        """A context manager: the interventions (`hookgpt.interventions`: patch, zero, add, ...) hold
        for every forward pass and generation inside the `with` block, and are removed on exit.

        >>> from hookgpt.interventions import Site, add
        >>> with model.interventions(add(Site.resid("pre", 1), direction, scale=4.0)):
        ...     steered = model.generate("Once upon a time", max_new_tokens=20)
        """
        from hookgpt.interventions import attached

        return attached(self, *interventions)

    def saes(self, *saes: Any, use_error_term: bool = False) -> Any:
        """A context manager: each sparse autoencoder replaces the activation of its hook
        (`sae.cfg.hook_name`) by its reconstruction (plus its error term with `use_error_term`, so
        outputs stay exact) for every forward and generation inside the block
        (`hookgpt.interventions.splice`; SAEs from `analyses.sae` or any module of that form).
        While spliced, an SAE's own hook points are the model's too, named after the hook
        (`blocks.1.hook_resid_pre.hook_sae_acts_post`): cache them, or intervene on features with
        `Site.at(name, pos, feature)`."""
        from hookgpt.interventions import spliced

        if not saes:
            raise ValueError("saes() needs at least one SAE")
        return spliced(self, saes, use_error_term)

    def generate(self, input: Any = "", max_new_tokens: int = 10, **kwargs: Any) -> Any:
        """Continue a prompt; see `hookgpt.generate.generate` for the options."""
        from hookgpt.generate import generate

        return generate(self, input, max_new_tokens=max_new_tokens, **kwargs)


def infer_attention_mask(
    tokens: Int[Tensor, "batch pos"], pad_token_id: int, bos_token_id: int, padding_side: str = "right", prepend_bos: bool = True
) -> Int[Tensor, "batch pos"]:
    """The attention mask of padded token ids, from the pad token (TransformerLens's
    `utils.get_attention_mask`): right padding is the run of pad tokens at the end of each row,
    left padding the run at the start -- except that when BOS is the pad token (GPT-2) and
    `prepend_bos`, the last token of that run is the row's BOS, a real token."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    real = tokens != pad_token_id
    if padding_side == "right":
        is_pad = real.flip(-1).cumsum(-1).flip(-1) == 0  # no real token at or after this position
        return (~is_pad).long()
    is_pad = real.cumsum(-1) == 0  # no real token at or before this position
    mask = (~is_pad).long()
    if prepend_bos and bos_token_id == pad_token_id:
        n_pad = is_pad.sum(-1)
        rows = torch.arange(tokens.shape[0], device=tokens.device)
        mask[rows, (n_pad - 1).clamp(min=0)] = 1  # the BOS (a row with no padding keeps its first token)
    return mask


def _checked_mask(attention_mask: Any, shape: tuple[int, int]) -> Int[Tensor, "batch pos"]:
    """An attention mask (tensor, numpy array or nested list) of 0s and 1s with the input's
    `[batch, pos]` shape, as a long tensor; anything else is an error naming the argument."""
    if not isinstance(attention_mask, Tensor):
        try:
            attention_mask = torch.as_tensor(attention_mask)
        except (TypeError, ValueError, RuntimeError):
            raise ArgumentTypeError(
                f"attention_mask must be a tensor (or array / nested list) of 0s and 1s, got {type(attention_mask).__name__}"
            ) from None
    if attention_mask.is_complex():
        raise ArgumentTypeError(f"attention_mask must hold 0s and 1s, got dtype {attention_mask.dtype}")
    if tuple(attention_mask.shape) != tuple(shape):
        raise ArgumentError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected [batch, pos] = {tuple(shape)}")
    if attention_mask.dtype != torch.bool and not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
        bad = attention_mask[(attention_mask != 0) & (attention_mask != 1)][0].item()
        raise ArgumentError(f"attention_mask must hold only 0 (padding) and 1 (real token), found {bad}")
    return attention_mask.long()


def _self_diagonal(query_len: int, key_len: int, device: torch.device) -> Tensor:
    """`[query_pos, key_pos]`, True where key is the query's own position."""
    offset = key_len - query_len
    eye = torch.zeros(query_len, key_len, dtype=torch.bool, device=device)
    eye[torch.arange(query_len), torch.arange(query_len) + offset] = True
    return eye[None]

