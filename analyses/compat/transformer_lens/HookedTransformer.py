"""TransformerLens's HookedTransformer: hookgpt's HookedGPT with TL's names, signatures and defaults.

One model, one forward: this class maps TL's arguments onto `HookedGPT.forward` (prepend_bos and
padding_side defaults from the config and tokenizer, the attention mask inferred as TL infers it)
and adds TL's methods. `from_pretrained` loads with hookgpt's loader and applies TL's weight
processing defaults (fold_ln, center_writing_weights, center_unembed, fold_value_biases).
"""

from typing import Any, Optional, Union

import numpy as np
import torch
from torch import Tensor

from hookgpt import HookedGPT, Tokenizer, components
from hookgpt import generate as hg_generate
from hookgpt import loading
from hookgpt.cache import accumulated_bias
from hookgpt.hooks import LazyActivation, observe
from hookgpt.slicing import Slice

from analyses.compat.transformer_lens import utils
from analyses.compat.transformer_lens.ActivationCache import ActivationCache
from analyses.compat.transformer_lens.FactoredMatrix import FactoredMatrix
from analyses.compat.transformer_lens.hook_points import HookedRootModule, HookPoint
from analyses.compat.transformer_lens.HookedTransformerConfig import HookedTransformerConfig
from analyses.compat.transformer_lens.past_key_value_caching import HookedTransformerKeyValueCache

USE_DEFAULT_VALUE = None
GPT2_TOKENIZER_NAMES = ("gpt2", "openai-community/gpt2", "gpt2-small", "distilgpt2")
# hook points TL computes only when a flag is on (hookgpt always has them)
_FLAGGED_HOOKS = {
    "attn.hook_result": ("use_attn_result", "set_use_attn_result"),
    "hook_q_input": ("use_split_qkv_input", "set_use_split_qkv_input"),
    "hook_k_input": ("use_split_qkv_input", "set_use_split_qkv_input"),
    "hook_v_input": ("use_split_qkv_input", "set_use_split_qkv_input"),
    "hook_attn_in": ("use_attn_in", "set_use_attn_in"),
    "hook_mlp_in": ("use_hook_mlp_in", "set_use_hook_mlp_in"),
}


def _as_hookgpt_tokenizer(tokenizer: Any) -> Tokenizer:
    """hookgpt's tokenizer for a TL tokenizer argument: GPT-2's BPE only."""
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    vocab = getattr(tokenizer, "get_vocab", lambda: {})()
    if len(vocab) == 50257 and vocab.get("<|endoftext|>") == 50256 and vocab.get("Hello") == 15496:
        return Tokenizer.gpt2()
    raise NotImplementedError(
        f"tokenizer {getattr(tokenizer, 'name_or_path', type(tokenizer).__name__)!r} is not supported: "
        "hookgpt's TransformerLens layer uses GPT-2's BPE (hookgpt.Tokenizer) only"
    )


class PosEmbed(components.PosEmbed):
    """hookgpt's positional embedding, also callable as TL's `pos_embed(tokens, past_kv_pos_offset,
    attention_mask=)`. The model's own forward passes positions (inside `HookedGPT.forward`)."""

    in_model_forward = False

    def forward(self, tokens: Tensor, past_kv_pos_offset: int = 0, attention_mask: Optional[Tensor] = None) -> Tensor:
        if self.in_model_forward:
            return self.W_pos[tokens]  # hookgpt's call: positions
        batch, n_pos = tokens.shape
        if attention_mask is None:
            positions = torch.arange(past_kv_pos_offset, past_kv_pos_offset + n_pos, device=tokens.device).expand(batch, n_pos)
            return self.W_pos[positions]
        positions = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)[:, past_kv_pos_offset : past_kv_pos_offset + n_pos]
        padding = ~attention_mask.bool()[:, past_kv_pos_offset : past_kv_pos_offset + n_pos, None]
        return torch.where(padding, 0.0, self.W_pos[positions])


class HookedTransformer(HookedRootModule, HookedGPT):
    def __init__(self, cfg: Union[HookedTransformerConfig, dict], tokenizer: Any = None, move_to_device: bool = True,
                 default_padding_side: str = "right"):
        cfg = HookedTransformerConfig.unwrap(cfg)
        if isinstance(cfg, str):
            raise ValueError("Please use HookedTransformer.from_pretrained() to load a model by name")
        hg_tokenizer = self._resolve_tokenizer(cfg, tokenizer)
        object.__setattr__(self, "_tl_cfg", cfg)
        super().__init__(cfg.to_gpt_config(), tokenizer=hg_tokenizer, init_weights=cfg.init_weights)
        self._adopt(cfg, hg_tokenizer, default_padding_side)

    @staticmethod
    def _resolve_tokenizer(cfg: HookedTransformerConfig, tokenizer: Any) -> Optional[Tokenizer]:
        if tokenizer is not None:
            tokenizer = _as_hookgpt_tokenizer(tokenizer)
        elif cfg.tokenizer_name is not None:
            if cfg.tokenizer_name not in GPT2_TOKENIZER_NAMES:
                raise NotImplementedError(f"tokenizer_name={cfg.tokenizer_name!r} is not supported: GPT-2's BPE only")
            tokenizer = Tokenizer.gpt2()
        if tokenizer is not None and cfg.d_vocab == -1:
            cfg.d_vocab = tokenizer.vocab_size
            if cfg.d_vocab_out == -1:
                cfg.d_vocab_out = cfg.d_vocab
        if cfg.d_vocab == -1:
            raise ValueError("HookedTransformerConfig needs d_vocab (or a tokenizer / tokenizer_name to take it from)")
        return tokenizer

    def _adopt(self, cfg: HookedTransformerConfig, tokenizer: Optional[Tokenizer], default_padding_side: str) -> None:
        """Finish making a HookedGPT into this class: TL config, tokenizer, TL hook points."""
        object.__setattr__(self, "_tl_cfg", cfg)
        self.cfg = cfg
        self.context_level = getattr(self, "context_level", 0)
        self.is_caching = False
        self.pos_embed.__class__ = PosEmbed
        self.tokenizer = tokenizer
        if self._tokenizer is not None:
            self._tokenizer.padding_side = default_padding_side
            self._tokenizer.name_or_path = "gpt2"
        self.setup()

    def setup(self) -> None:
        if getattr(self, "_tl_cfg", None) is not None and self._tl_cfg.use_hook_tokens and "hook_tokens" not in self._modules:
            self.hook_tokens = HookPoint()  # [batch, pos], TL's use_hook_tokens
        super().setup()

    # ------------------------------------------------------------------ tokenizer

    @property
    def tokenizer(self) -> Optional[Tokenizer]:
        return self._tokenizer  # TL: None when the model has none

    @tokenizer.setter
    def tokenizer(self, value: Any) -> None:
        HookedGPT.tokenizer.fset(self, value)

    def set_tokenizer(self, tokenizer: Any, default_padding_side: str = "right") -> None:
        self.tokenizer = _as_hookgpt_tokenizer(tokenizer)
        self._tokenizer.padding_side = default_padding_side
        self._tokenizer.name_or_path = getattr(tokenizer, "name_or_path", "gpt2")

    def _need_tokenizer(self) -> Tokenizer:
        assert self.tokenizer is not None, "Cannot use to_tokens without a tokenizer"
        return self.tokenizer

    def _prepend_bos(self, prepend_bos: Optional[bool]) -> bool:
        return self.cfg.default_prepend_bos if prepend_bos is None else prepend_bos

    def _padding(self, padding_side: Optional[str]) -> str:
        if padding_side is not None:
            return padding_side
        return self.tokenizer.padding_side if self.tokenizer is not None else "right"

    def to_tokens(self, input: Union[str, list[str]], prepend_bos: Optional[bool] = USE_DEFAULT_VALUE,
                  padding_side: Optional[str] = USE_DEFAULT_VALUE, move_to_device: bool = True, truncate: bool = True) -> Tensor:
        self._need_tokenizer()
        return HookedGPT.to_tokens(self, input, prepend_bos=self._prepend_bos(prepend_bos), padding_side=self._padding(padding_side), truncate=truncate)

    def to_str_tokens(self, input: Any, prepend_bos: Optional[bool] = USE_DEFAULT_VALUE, padding_side: Optional[str] = USE_DEFAULT_VALUE) -> Any:
        self._need_tokenizer()
        if isinstance(input, list) and input and isinstance(input[0], str):
            return [self.to_str_tokens(s, prepend_bos, padding_side) for s in input]
        if isinstance(input, str):
            return HookedGPT.to_str_tokens(self, input, prepend_bos=self._prepend_bos(prepend_bos))
        ids = torch.as_tensor(np.asarray(input.cpu() if isinstance(input, Tensor) else input))
        if ids.ndim == 0:
            ids = ids[None]
        ids = ids.squeeze()
        if ids.ndim == 0:
            ids = ids[None]
        if ids.ndim == 2:
            return [self.tokenizer.decode_tokens(row.tolist()) for row in ids]
        return self.tokenizer.decode_tokens(ids.long().tolist())

    def to_single_str_token(self, int_token: int) -> str:
        assert isinstance(int_token, int)
        token = self.to_str_tokens(torch.tensor([int_token]))
        assert len(token) == 1
        return token[0]

    def to_string(self, tokens: Any) -> Any:
        self._need_tokenizer()
        return HookedGPT.to_string(self, tokens)

    def get_token_position(self, single_token: Union[str, int], input: Any, mode: str = "first",
                           prepend_bos: Optional[bool] = USE_DEFAULT_VALUE, padding_side: Optional[str] = USE_DEFAULT_VALUE) -> int:
        if isinstance(input, Tensor):
            input = input.long()
        try:
            return HookedGPT.get_token_position(self, single_token, input, mode=mode, prepend_bos=self._prepend_bos(prepend_bos))
        except ValueError as error:
            if "does not occur" in str(error):
                raise AssertionError("The token does not occur in the prompt") from None
            raise

    # ------------------------------------------------------------------ the forward pass

    def _tokens_and_mask(self, input: Any, prepend_bos: Optional[bool], padding_side: Optional[str],
                         attention_mask: Optional[Tensor], past_kv_cache: Any) -> tuple[Tensor, Optional[Tensor]]:
        """TL's input_to_embed rules: text is tokenized; the mask is inferred from the pad token for
        left padding or with a KV cache, unless given."""
        prepend_bos, padding_side = self._prepend_bos(prepend_bos), self._padding(padding_side)
        if isinstance(input, (str, list)):
            assert self.tokenizer is not None, "Must provide a tokenizer if passing a string to the model"
            tokens = self.to_tokens(input, prepend_bos=prepend_bos, padding_side=padding_side)
        else:
            tokens = input
        if tokens.ndim == 1:
            tokens = tokens[None]
        tokens = tokens.to(self.device)
        if attention_mask is None and ((self.tokenizer is not None and padding_side == "left") or past_kv_cache is not None):
            if self.tokenizer is None:
                raise ValueError("Cannot compute attention mask without a tokenizer.")
            attention_mask = utils.infer_attention_mask(tokens, self.tokenizer.pad_token_id, self.tokenizer.bos_token_id, padding_side, prepend_bos)
        return tokens, attention_mask

    def forward(
        self,
        input: Any,
        return_type: Optional[str] = "logits",
        loss_per_token: bool = False,
        prepend_bos: Optional[bool] = USE_DEFAULT_VALUE,
        padding_side: Optional[str] = USE_DEFAULT_VALUE,
        start_at_layer: Optional[int] = None,
        tokens: Optional[Tensor] = None,
        shortformer_pos_embed: Optional[Tensor] = None,
        attention_mask: Optional[Tensor] = None,
        stop_at_layer: Optional[int] = None,
        past_kv_cache: Optional[HookedTransformerKeyValueCache] = None,
        logit_positions: Optional[Any] = None,  # hookgpt's: unembed only these positions
    ) -> Any:
        if not isinstance(self.cfg, HookedTransformerConfig):  # inside hookgpt's generate: hookgpt's own forward
            return self._hookgpt_forward(input, return_type=return_type, attention_mask=attention_mask, past_kv_cache=past_kv_cache)
        if start_at_layer is None:
            input, attention_mask = self._tokens_and_mask(input, prepend_bos, padding_side, attention_mask, past_kv_cache)
            if self.cfg.use_hook_tokens:
                input = self.hook_tokens(input)
        elif attention_mask is not None and past_kv_cache is not None and attention_mask.shape[1] == past_kv_cache.length + input.shape[1]:
            attention_mask = attention_mask[:, past_kv_cache.length :]  # TL passes the mask of cached + new positions
        return self._hookgpt_forward(
            input, return_type=return_type, loss_per_token=loss_per_token, prepend_bos=self._prepend_bos(prepend_bos),
            padding_side=self._padding(padding_side), attention_mask=attention_mask, start_at_layer=start_at_layer,
            stop_at_layer=stop_at_layer, tokens=tokens, past_kv_cache=past_kv_cache, logit_positions=logit_positions,
        )

    def _hookgpt_forward(self, *args: Any, **kwargs: Any) -> Any:
        self.pos_embed.in_model_forward = True
        try:
            return HookedGPT.forward(self, *args, **kwargs)
        finally:
            self.pos_embed.in_model_forward = False

    def input_to_embed(self, input: Any, prepend_bos: Optional[bool] = USE_DEFAULT_VALUE, padding_side: Optional[str] = USE_DEFAULT_VALUE,
                       attention_mask: Optional[Tensor] = None, past_kv_cache: Optional[HookedTransformerKeyValueCache] = None
                       ) -> tuple[Tensor, Tensor, None, Optional[Tensor]]:
        """`(residual, tokens, shortformer_pos_embed=None, attention_mask)` as TL: the residual stream
        before block 0; with a KV cache the mask covers cached + new positions (and is appended)."""
        tokens, attention_mask = self._tokens_and_mask(input, prepend_bos, padding_side, attention_mask, past_kv_cache)
        past = None if past_kv_cache is None else past_kv_cache.attention_mask
        residual = self._hookgpt_forward(tokens, attention_mask=attention_mask, stop_at_layer=0, past_kv_cache=past_kv_cache)
        if past is not None:
            new = attention_mask if attention_mask is not None else torch.ones_like(tokens)
            attention_mask = torch.cat([past.to(new), new], dim=1)
        return residual, tokens, None, attention_mask

    # ------------------------------------------------------------------ hooks and caching

    def _hook_fires(self, name: str) -> bool:
        for suffix, (flag, _) in _FLAGGED_HOOKS.items():
            if name.endswith(suffix):
                return bool(getattr(self.cfg, flag))
        return True

    def check_hooks_to_add(self, hook_point: HookPoint, hook_point_name: str, hook: Any, dir: str = "fwd",
                           is_permanent: bool = False, prepend: bool = False) -> None:
        for suffix, (flag, setter) in _FLAGGED_HOOKS.items():
            if hook_point_name.endswith(suffix):
                assert getattr(self.cfg, flag), f"Cannot add hook {hook_point_name} if {flag} is False (model.{setter}(True))"

    def set_use_attn_result(self, use_attn_result: bool) -> None:
        self.cfg.use_attn_result = use_attn_result

    def set_use_split_qkv_input(self, use_split_qkv_input: bool) -> None:
        self.cfg.use_split_qkv_input = use_split_qkv_input

    def set_use_hook_mlp_in(self, use_hook_mlp_in: bool) -> None:
        self.cfg.use_hook_mlp_in = use_hook_mlp_in

    def set_use_attn_in(self, use_attn_in: bool) -> None:
        self.cfg.use_attn_in = use_attn_in

    def set_ungroup_grouped_query_attention(self, ungroup: bool) -> None:
        self.cfg.ungroup_grouped_query_attention = ungroup

    def get_caching_hooks(self, names_filter: Any = None, incl_bwd: bool = False, device: Any = None, remove_batch_dim: bool = False,
                          cache: Optional[dict] = None, pos_slice: Any = None, lazy: bool = False) -> tuple[dict, list, list]:
        """TL's caching hooks (with `pos_slice`), over hookgpt's: only hook points TL would run."""
        keep = _names_filter(names_filter)
        names = [name for name in self.hook_dict if keep(name) and self._hook_fires(name)]
        cache = {} if cache is None else cache
        pos_slice = Slice.unwrap(pos_slice)
        if pos_slice.mode == "identity":
            cache, fwd, bwd = HookedGPT.get_caching_hooks(self, names, incl_bwd, device, remove_batch_dim, cache, lazy=lazy)
            return cache, fwd, bwd

        def save(suffix: str):
            def save_hook(act: Any, hook: Any) -> None:
                act = act.get() if isinstance(act, LazyActivation) else act
                act = act.detach().to(device) if device is not None else act.detach()
                if remove_batch_dim:
                    act = act[0]
                pos_dim = -3 if hook.name.endswith(("hook_q", "hook_k", "hook_v", "hook_z", "hook_result")) else -2
                cache[hook.name + suffix] = pos_slice.apply(act, dim=pos_dim) if act.ndim >= -pos_dim else act

            return save_hook

        fwd = [(name, observe(save(""))) for name in names]
        bwd = [(name, save("_grad")) for name in names] if incl_bwd else []
        return cache, fwd, bwd

    def run_with_cache(self, *model_args: Any, names_filter: Any = None, device: Any = None, remove_batch_dim: bool = False,
                       incl_bwd: bool = False, reset_hooks_end: bool = True, clear_contexts: bool = False, pos_slice: Any = None,
                       return_cache_object: bool = True, **model_kwargs: Any) -> tuple[Any, Any]:
        cache_dict, fwd, bwd = self.get_caching_hooks(names_filter, incl_bwd, device, remove_batch_dim, pos_slice=pos_slice, lazy=True)
        with self.hooks(fwd_hooks=fwd, bwd_hooks=bwd, reset_hooks_end=reset_hooks_end, clear_contexts=clear_contexts):
            out = self(*model_args, **model_kwargs)
            if incl_bwd:
                out.backward()
        if return_cache_object:
            return out, ActivationCache(cache_dict, self, has_batch_dim=not remove_batch_dim)
        return out, {k: (v.get() if isinstance(v, LazyActivation) else v) for k, v in cache_dict.items()}

    # ------------------------------------------------------------------ weights

    def accumulated_bias(self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True) -> Tensor:
        return accumulated_bias(self, layer, mlp_input, include_mlp_biases)

    @property
    def QK(self) -> FactoredMatrix:
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    @property
    def OV(self) -> FactoredMatrix:
        return FactoredMatrix(self.W_V, self.W_O)

    def move_model_modules_to_device(self) -> None:
        self.to(self.cfg.device)

    @torch.no_grad()
    def fold_value_biases_(self) -> None:
        """TL's fold_value_biases: b_V @ W_O moves into b_O (the pattern's rows sum to 1), b_V = 0."""
        for block in self.blocks:
            attn = block.attn
            attn.b_O.add_((attn.b_V[:, :, None] * attn.W_O).sum((0, 1)))
            attn.b_V.zero_()

    @torch.no_grad()
    def refactor_factored_attn_matrices_(self) -> None:
        """TL's refactor_factored_attn_matrices: W_Q, W_K (with their biases as an extra input row)
        made "even" from the SVD of W_QK; W_V = U S, W_O = Vh^T from the SVD of W_OV; b_V folded into b_O."""
        for block in self.blocks:
            attn = block.attn
            W_Q_eff = torch.cat([attn.W_Q, attn.b_Q[:, None, :]], dim=1)
            W_K_eff = torch.cat([attn.W_K, attn.b_K[:, None, :]], dim=1)
            Q_even, K_even_T = FactoredMatrix(W_Q_eff, W_K_eff.transpose(-1, -2)).make_even().pair
            K_even = K_even_T.transpose(-1, -2)
            attn.W_Q.copy_(Q_even[:, :-1]), attn.b_Q.copy_(Q_even[:, -1]), attn.W_K.copy_(K_even[:, :-1]), attn.b_K.copy_(K_even[:, -1])
            attn.b_O.add_((attn.b_V[:, :, None] * attn.W_O).sum((0, 1)))
            attn.b_V.zero_()
            U, S, Vh = FactoredMatrix(attn.W_V, attn.W_O).svd()
            attn.W_V.copy_(U @ S.diag_embed()), attn.W_O.copy_(Vh.transpose(-1, -2))

    @classmethod
    def from_pretrained(
        cls,
        model_name: str,
        fold_ln: bool = True,
        center_writing_weights: bool = True,
        center_unembed: bool = True,
        refactor_factored_attn_matrices: bool = False,
        checkpoint_index: Optional[int] = None,
        checkpoint_value: Optional[int] = None,
        hf_model: Any = None,
        device: Any = None,
        n_devices: int = 1,
        tokenizer: Any = None,
        move_to_device: bool = True,
        fold_value_biases: bool = True,
        default_prepend_bos: Optional[bool] = None,
        default_padding_side: str = "right",
        dtype: Any = "float32",
        first_n_layers: Optional[int] = None,
        **from_pretrained_kwargs: Any,
    ) -> "HookedTransformer":
        """Load a model hookgpt can find by name or path, processed with TL's defaults."""
        for name, value, default in (("checkpoint_index", checkpoint_index, None), ("checkpoint_value", checkpoint_value, None),
                                     ("hf_model", hf_model, None), ("n_devices", n_devices, 1), ("first_n_layers", first_n_layers, None)):
            if value != default:
                raise NotImplementedError(f"from_pretrained({name}=...) is not supported by hookgpt's TransformerLens layer")
        dtype = from_pretrained_kwargs.pop("torch_dtype", dtype)
        if from_pretrained_kwargs:
            raise TypeError(f"from_pretrained got unexpected keyword arguments {sorted(from_pretrained_kwargs)}")
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        base = loading.from_pretrained(model_name, fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                                       center_unembed=center_unembed, dtype=dtype, device=device)
        if not (fold_ln or center_writing_weights or center_unembed):
            loading.untie_embeddings(base)  # TL models have their own W_U
        tl_cfg = HookedTransformerConfig.from_gpt_config(
            base.cfg, normalization_type="LNPre" if fold_ln else "LN", tokenizer_name="gpt2",
            default_prepend_bos=True if default_prepend_bos is None else default_prepend_bos,
            device=str(base.device), default_padding_side=default_padding_side,
        )
        tl_tokenizer = _as_hookgpt_tokenizer(tokenizer) if tokenizer is not None else base._tokenizer or Tokenizer.gpt2()
        base.__class__ = cls
        base._adopt(tl_cfg, tl_tokenizer, default_padding_side)
        if fold_value_biases:
            base.fold_value_biases_()
        if refactor_factored_attn_matrices:
            base.refactor_factored_attn_matrices_()
        return base

    @classmethod
    def from_pretrained_no_processing(cls, model_name: str, fold_ln: bool = False, center_writing_weights: bool = False,
                                      center_unembed: bool = False, refactor_factored_attn_matrices: bool = False,
                                      fold_value_biases: bool = False, dtype: Any = torch.float32, default_prepend_bos: Optional[bool] = None,
                                      default_padding_side: str = "right", **from_pretrained_kwargs: Any) -> "HookedTransformer":
        return cls.from_pretrained(model_name, fold_ln=fold_ln, center_writing_weights=center_writing_weights, center_unembed=center_unembed,
                                   refactor_factored_attn_matrices=refactor_factored_attn_matrices, fold_value_biases=fold_value_biases,
                                   dtype=dtype, default_prepend_bos=default_prepend_bos, default_padding_side=default_padding_side,
                                   **from_pretrained_kwargs)

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def generate(
        self,
        input: Any = "",
        max_new_tokens: int = 10,
        stop_at_eos: bool = True,
        eos_token_id: Optional[int] = None,
        do_sample: bool = True,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        temperature: float = 1.0,
        freq_penalty: float = 0.0,
        use_past_kv_cache: bool = True,
        prepend_bos: Optional[bool] = USE_DEFAULT_VALUE,
        padding_side: Optional[str] = USE_DEFAULT_VALUE,
        return_type: Optional[str] = "input",
        verbose: bool = True,
    ) -> Any:
        """TL's generate (sampling by default): text, tokens or embeddings in; return_type "input"
        (same kind as the input), "str", "tokens" or "embeds"."""
        if freq_penalty != 0.0:
            raise NotImplementedError("generate(freq_penalty=...) is not supported by hookgpt's TransformerLens layer")
        if return_type not in ("input", "str", "tokens", "embeds"):
            raise ValueError(f"return_type must be 'input', 'str', 'tokens' or 'embeds', got {return_type!r}")
        if isinstance(input, (str, list)):
            assert self.tokenizer is not None, "Must provide a tokenizer if passing a string to the model"
            kind = "str"
        else:
            kind = "embeds" if input.is_floating_point() else "tokens"
        if stop_at_eos and eos_token_id is None:
            assert self.tokenizer is not None and self.tokenizer.eos_token_id is not None, (
                "Must pass a eos_token_id if stop_at_eos is True and tokenizer is None or has no eos_token_id"
            )
            eos_token_id = self.tokenizer.eos_token_id
        if return_type == "input":
            return_type = kind
        if kind == "embeds":
            tokens = self._generate_from_embeds(input, max_new_tokens, stop_at_eos, eos_token_id, do_sample, top_k, top_p, temperature)
            if return_type == "embeds":
                return torch.cat([input, self.embed(tokens)], dim=1)
            return self._decode(tokens) if return_type == "str" else tokens
        if kind == "str":
            tokens = self.to_tokens(input, prepend_bos=prepend_bos, padding_side="left")
        else:
            tokens = input if input.ndim == 2 else input[None]
        mask = utils.infer_attention_mask(tokens, self.tokenizer.pad_token_id, self.tokenizer.bos_token_id, "left",
                                          self._prepend_bos(prepend_bos)) if self.tokenizer is not None and kind == "str" else None
        self.cfg = self._tl_cfg.to_gpt_config()  # hookgpt's generate reads (and type-checks) a GPTConfig
        try:
            out = self._generate_tokens(tokens, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                   do_sample=do_sample, eos_token_id=eos_token_id, stop_at_eos=stop_at_eos, use_kv_cache=use_past_kv_cache,
                                   return_type="tokens", attention_mask=mask, verbose=verbose)
        finally:
            self.cfg = self._tl_cfg
        if return_type == "tokens":
            return out
        if return_type == "embeds":
            return self.embed(out)
        return self._decode(out)

    def _decode(self, tokens: Tensor) -> Union[str, list[str]]:
        """TL's generate output text: special tokens skipped, a batch of one as a str."""
        special = {self.tokenizer.bos_token_id, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
        texts = [self.tokenizer.decode([t for t in row.tolist() if t not in special]) for row in tokens]
        return texts[0] if len(texts) == 1 else texts

    def _generate_tokens(self, tokens: Tensor, **kwargs: Any) -> Tensor:
        return hg_generate.generate(self, tokens, **kwargs)

    def _generate_from_embeds(self, embeds: Tensor, max_new_tokens: int, stop_at_eos: bool, eos_token_id: Optional[int],
                              do_sample: bool, top_k: Optional[int], top_p: Optional[float], temperature: float) -> Tensor:
        """Token embeddings `[batch, pos, d_model]` in (TL's embeds input): positions are added here."""
        embeds = embeds if embeds.ndim == 3 else embeds[None]
        batch = embeds.shape[0]
        new: list[Tensor] = []
        finished = torch.zeros(batch, dtype=torch.bool, device=embeds.device)
        for _ in range(max_new_tokens):
            positions = torch.arange(embeds.shape[1], device=embeds.device).expand(batch, -1)
            residual = embeds + self.W_pos[positions]
            logits = self._hookgpt_forward(residual, start_at_layer=0)[:, -1]
            token = hg_generate.sample_next_token(logits, do_sample, temperature, top_k, top_p)
            if stop_at_eos and eos_token_id is not None:
                token = torch.where(finished, eos_token_id, token)
                finished |= token == eos_token_id
            new.append(token[:, None])
            embeds = torch.cat([embeds, self.embed(token[:, None])], dim=1)
            if stop_at_eos and bool(finished.all()):
                break
        return torch.cat(new, dim=1) if new else torch.zeros(batch, 0, dtype=torch.long, device=embeds.device)


def _names_filter(names_filter: Any):
    if names_filter is None:
        return lambda name: True
    if isinstance(names_filter, str):
        return lambda name: name == names_filter
    if callable(names_filter):
        return names_filter
    if isinstance(names_filter, (list, tuple, set)):
        names = set(names_filter)
        return lambda name: name in names
    raise ValueError("names_filter must be a string, list of strings, or function")
