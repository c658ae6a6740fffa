"""GPTConfig: every hyperparameter of a GPT-2 style model in one dataclass.

The presets are GPT-2's published sizes. A config is plain data: it can be written to JSON
(`to_dict`) and read back (`from_dict`), which is how checkpoints remember their shape.
"""

import dataclasses
import numbers
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

ACT_FNS = ("gelu_new", "gelu", "relu")
NORMALIZATION_TYPES = ("LN", None)


@dataclass(frozen=True)
class GPTConfig:
    """Shape and behaviour of a GPT-2 style transformer.

    Defaults are GPT-2 small. `d_mlp=None` means `4 * d_model`; `d_head=None` means
    `d_model // n_heads`; `d_vocab_out=None` means `d_vocab` (TransformerLens's names).

    `normalization_type` is "LN" (GPT-2's LayerNorm) or None (no normalisation: every LayerNorm
    is the identity and has no weights; its hooks still exist, `hook_normalized` sees the
    residual unchanged). `d_vocab_out` lets the unembedding predict fewer ids than the
    embedding reads (e.g. a task's answers, without its separator token); it needs untied embeddings.

    A config is immutable: two models built from one config never affect each other. Make a
    changed copy with `dataclasses.replace(cfg, n_layers=4)` (or `cfg.replace(n_layers=4)`).
    """

    n_layers: int = 12
    d_model: int = 768
    n_heads: int = 12
    d_head: Optional[int] = None
    d_mlp: Optional[int] = None
    d_vocab: int = 50257
    d_vocab_out: Optional[int] = None
    n_ctx: int = 1024
    act_fn: str = "gelu_new"
    layer_norm_eps: float = 1e-5
    normalization_type: Optional[str] = "LN"
    attn_only: bool = False
    tie_embeddings: bool = False
    init_range: float = 0.02
    dtype: torch.dtype = torch.float32
    model_name: str = "custom"
    # Set by weight processing (loading.process_weights); recorded so a saved model says what it is.
    folded_ln: bool = False
    centered_writing_weights: bool = False
    centered_unembed: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        _check_field_types({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        if self.d_head is None:
            if self.d_model % self.n_heads != 0:
                raise ValueError(
                    f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                    "pass d_head explicitly"
                )
            object.__setattr__(self, "d_head", self.d_model // self.n_heads)  # frozen: set once here
        if self.d_mlp is None:
            object.__setattr__(self, "d_mlp", 4 * self.d_model)
        if self.d_vocab_out is None:
            object.__setattr__(self, "d_vocab_out", self.d_vocab)
        if self.normalization_type not in NORMALIZATION_TYPES:
            raise ValueError(f"normalization_type={self.normalization_type!r} is not supported; expected one of {NORMALIZATION_TYPES}")
        if self.tie_embeddings and self.d_vocab_out != self.d_vocab:
            raise ValueError(f"tie_embeddings needs d_vocab_out == d_vocab, got d_vocab_out={self.d_vocab_out}, d_vocab={self.d_vocab}")
        if self.act_fn not in ACT_FNS:
            raise ValueError(f"act_fn={self.act_fn!r} is not supported; expected one of {ACT_FNS}")
        for name in ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_vocab", "d_vocab_out", "n_ctx"):
            value = getattr(self, name)
            if value < (0 if name == "n_layers" else 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    def replace(self, **changes: Any) -> "GPTConfig":
        """A copy with some fields changed (`dataclasses.replace`)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["dtype"] = str(self.dtype).replace("torch.", "")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GPTConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown GPTConfig fields {sorted(unknown)}; known fields are {sorted(known)}")
        d = dict(d)
        if isinstance(d.get("dtype"), str):
            d["dtype"] = getattr(torch, d["dtype"].replace("torch.", ""), d["dtype"])
        _check_field_types(d)  # before construction: JSON may say "n_layers": "2"
        return cls(**d)

    @classmethod
    def preset(cls, name: str, **overrides) -> "GPTConfig":
        """A named preset (`gpt2`, `gpt2-medium`, `gpt2-large`, `gpt2-xl`), optionally overridden."""
        if name not in PRESETS:
            import difflib

            close = difflib.get_close_matches(name, PRESETS, n=3)
            raise KeyError(f"no preset named {name!r}; did you mean {close}? Presets: {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], "model_name": name, **overrides})


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


# What each field holds, as (description, check); a config read from JSON may hold anything.
FIELD_TYPES: dict[str, tuple[str, Any]] = {
    **{name: ("an integer", _is_int) for name in ("n_layers", "d_model", "n_heads", "d_vocab", "n_ctx")},
    **{name: ("an integer or None", lambda v: v is None or _is_int(v)) for name in ("d_head", "d_mlp")},
    **{name: ("a number", lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool)) for name in ("layer_norm_eps", "init_range")},
    **{
        name: ("True or False", lambda v: isinstance(v, bool))
        for name in ("attn_only", "tie_embeddings", "folded_ln", "centered_writing_weights", "centered_unembed")
    },
    **{name: ("a string", lambda v: isinstance(v, str)) for name in ("act_fn", "model_name")},
    "dtype": ("a torch.dtype (or its name, e.g. 'float32')", lambda v: isinstance(v, torch.dtype)),
    "extra": ("a dict", lambda v: isinstance(v, dict)),
}


def _check_field_types(values: dict[str, Any]) -> None:
    from hookgpt.errors import ArgumentTypeError

    for name, value in values.items():
        kind, ok = FIELD_TYPES.get(name, ("", lambda v: True))
        if not ok(value):
            raise ArgumentTypeError(f"GPTConfig.{name} must be {kind}, got {type(value).__name__} {value!r}")


# GPT-2's published hyperparameters (Radford et al. 2019; Hugging Face config.json files).
# GPT-2 ties the unembedding to the embedding.
PRESETS: dict[str, dict[str, Any]] = {
    "gpt2": dict(n_layers=12, d_model=768, n_heads=12, tie_embeddings=True),
    "gpt2-medium": dict(n_layers=24, d_model=1024, n_heads=16, tie_embeddings=True),
    "gpt2-large": dict(n_layers=36, d_model=1280, n_heads=20, tie_embeddings=True),
    "gpt2-xl": dict(n_layers=48, d_model=1600, n_heads=25, tie_embeddings=True),
}
