"""HookedTransformerConfig: TransformerLens's config, for the GPT-2 architecture hookgpt implements.

The fields are TransformerLens 2.x's, with its defaults and derived values (`n_heads` from
`d_model // d_head`, `d_mlp = 4 * d_model`, `d_vocab_out = d_vocab`, ...), and the config is mutable
as TransformerLens's is (`model.cfg.default_prepend_bos = False`). A value of another architecture
(rotary, grouped-query attention, RMSNorm, SoLU, ...) is accepted here, as TransformerLens accepts
it, and refused with an error naming it when a model is built (`to_gpt_config`).
"""

import copy
import math
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch

from hookgpt import GPTConfig
from hookgpt.config import ACT_FNS


@dataclass
class HookedTransformerConfig:
    n_layers: int
    d_model: int
    n_ctx: int
    d_head: int
    model_name: str = "custom"
    n_heads: int = -1
    d_mlp: Optional[int] = None
    act_fn: Optional[str] = None
    d_vocab: int = -1
    eps: float = 1e-5
    use_attn_result: bool = False
    use_attn_scale: bool = True
    attn_scale: float = -1.0
    use_split_qkv_input: bool = False
    use_hook_mlp_in: bool = False
    use_attn_in: bool = False
    use_local_attn: bool = False
    ungroup_grouped_query_attention: bool = False
    original_architecture: Optional[str] = None
    from_checkpoint: bool = False
    checkpoint_index: Optional[int] = None
    checkpoint_label_type: Optional[str] = None
    checkpoint_value: Optional[int] = None
    tokenizer_name: Optional[str] = None
    window_size: Optional[int] = None
    attn_types: Optional[list] = None
    init_mode: str = "gpt2"
    normalization_type: Optional[str] = "LN"
    device: Optional[str] = None
    n_devices: int = 1
    attention_dir: str = "causal"
    attn_only: bool = False
    seed: Optional[int] = None
    initializer_range: float = -1.0
    init_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    positional_embedding_type: str = "standard"
    final_rms: bool = False
    d_vocab_out: int = -1
    parallel_attn_mlp: bool = False
    rotary_dim: Optional[int] = None
    n_params: Optional[int] = None
    use_hook_tokens: bool = False
    gated_mlp: bool = False
    default_prepend_bos: bool = True
    dtype: torch.dtype = torch.float32
    tokenizer_prepends_bos: Optional[bool] = None
    n_key_value_heads: Optional[int] = None
    post_embedding_ln: bool = False
    rotary_base: int = 10000
    trust_remote_code: bool = False
    rotary_adjacent_pairs: bool = False
    load_in_4bit: bool = False
    num_experts: Optional[int] = None
    experts_per_token: Optional[int] = None
    relative_attention_max_distance: Optional[int] = None
    relative_attention_num_buckets: Optional[int] = None
    decoder_start_token_id: Optional[int] = None
    tie_word_embeddings: bool = False
    use_normalization_before_and_after: bool = False
    attn_scores_soft_cap: float = -1.0
    output_logits_soft_cap: float = -1.0
    use_NTK_by_parts_rope: bool = False
    default_padding_side: str = "right"

    def __post_init__(self):
        if self.n_heads == -1:
            self.n_heads = self.d_model // self.d_head
        if self.d_mlp is None and not self.attn_only:
            self.d_mlp = 4 * self.d_model
        if self.initializer_range < 0:
            self.initializer_range = 0.8 / math.sqrt(self.d_model)  # TransformerLens's "gpt2" init
        if self.d_vocab_out == -1:
            self.d_vocab_out = self.d_vocab
        if self.device is None:
            self.device = "cpu"
        if isinstance(self.dtype, str):
            self.dtype = getattr(torch, self.dtype)

    @classmethod
    def unwrap(cls, config: Union[dict, "HookedTransformerConfig"]) -> "HookedTransformerConfig":
        return cls.from_dict(config) if isinstance(config, dict) else config

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any]) -> "HookedTransformerConfig":
        return cls(**config_dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def is_layer_norm_activation(self) -> bool:
        return self.act_fn is not None and self.act_fn.endswith("_ln")

    # ------------------------------------------------------------------ what hookgpt's model code reads

    @property
    def layer_norm_eps(self) -> float:
        return self.eps

    @property
    def init_range(self) -> float:
        return self.initializer_range

    @property
    def tie_embeddings(self) -> bool:
        return False  # a TransformerLens model has its own W_U (weight processing unties)

    def replace(self, **changes: Any) -> "HookedTransformerConfig":
        """A copy with fields changed (hookgpt's weight processing calls this; its record-keeping
        flags have no TransformerLens field and are left out)."""
        new = copy.copy(self)
        for name, value in changes.items():
            name = {"layer_norm_eps": "eps", "init_range": "initializer_range"}.get(name, name)
            if name in ("folded_ln", "centered_writing_weights", "centered_unembed", "tie_embeddings"):
                continue
            setattr(new, name, value)
        return new

    def to_gpt_config(self) -> GPTConfig:
        """The hookgpt config of the same model; a TransformerLens feature outside GPT-2's
        architecture raises NotImplementedError naming it."""
        unsupported = {
            "positional_embedding_type": (self.positional_embedding_type, "standard"),
            "n_key_value_heads (grouped-query attention)": (self.n_key_value_heads, None),
            "attention_dir": (self.attention_dir, "causal"),
            "use_local_attn": (self.use_local_attn, False),
            "gated_mlp": (self.gated_mlp, False),
            "parallel_attn_mlp": (self.parallel_attn_mlp, False),
            "final_rms": (self.final_rms, False),
            "post_embedding_ln": (self.post_embedding_ln, False),
            "num_experts": (self.num_experts, None),
            "scale_attn_by_inverse_layer_idx": (self.scale_attn_by_inverse_layer_idx, False),
            "use_attn_scale": (self.use_attn_scale, True),
            "attn_scores_soft_cap": (self.attn_scores_soft_cap, -1.0),
            "output_logits_soft_cap": (self.output_logits_soft_cap, -1.0),
            "use_normalization_before_and_after": (self.use_normalization_before_and_after, False),
        }
        for feature, (value, supported) in unsupported.items():
            if value != supported:
                raise NotImplementedError(
                    f"TransformerLens feature {feature}={value!r} is not supported: hookgpt implements "
                    f"GPT-2's architecture only ({feature.split()[0]}={supported!r})"
                )
        if self.normalization_type not in ("LN", "LNPre"):
            raise NotImplementedError(
                f"TransformerLens normalization_type={self.normalization_type!r} is not supported: hookgpt has "
                "GPT-2's LayerNorm only ('LN', or 'LNPre' once folded)"
            )
        if self.attn_scale not in (-1.0, math.sqrt(self.d_head)):
            raise NotImplementedError(f"TransformerLens attn_scale={self.attn_scale} is not supported: hookgpt scales by sqrt(d_head)")
        act_fn = self.act_fn if self.act_fn is not None else "gelu_new"
        if act_fn not in ACT_FNS:
            raise NotImplementedError(f"TransformerLens act_fn={act_fn!r} is not supported; hookgpt has {list(ACT_FNS)}")
        if self.d_vocab_out != self.d_vocab:
            raise NotImplementedError(
                f"TransformerLens d_vocab_out={self.d_vocab_out} != d_vocab={self.d_vocab} is not supported: "
                "hookgpt's unembedding has one row per input token"
            )
        return GPTConfig(
            n_layers=self.n_layers, d_model=self.d_model, n_heads=self.n_heads, d_head=self.d_head,
            d_mlp=self.d_mlp, d_vocab=self.d_vocab, n_ctx=self.n_ctx, act_fn=act_fn, layer_norm_eps=self.eps,
            attn_only=self.attn_only, init_range=self.initializer_range, dtype=self.dtype, model_name=self.model_name,
        )

    @classmethod
    def from_gpt_config(cls, cfg: GPTConfig, **fields: Any) -> "HookedTransformerConfig":
        return cls(
            n_layers=cfg.n_layers, d_model=cfg.d_model, n_ctx=cfg.n_ctx, d_head=cfg.d_head, n_heads=cfg.n_heads,
            d_mlp=None if cfg.attn_only else cfg.d_mlp, act_fn=cfg.act_fn, d_vocab=cfg.d_vocab, eps=cfg.layer_norm_eps,
            attn_only=cfg.attn_only, dtype=cfg.dtype, model_name=cfg.model_name, original_architecture="GPT2LMHeadModel",
            initializer_range=cfg.init_range, **fields,
        )
