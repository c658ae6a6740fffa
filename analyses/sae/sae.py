"""The sparse autoencoder: a wide, sparse dictionary of directions for one hook's activations.

    x  ->  sae_in = x - b_dec  ->  pre = sae_in @ W_enc + b_enc  ->  acts = f(pre)  ->  recons = acts @ W_dec + b_dec

`W_enc [d_in, d_sae]`, `b_enc [d_sae]`, `W_dec [d_sae, d_in]` (one row per feature: its direction in
the model's activation space), `b_dec [d_in]`. Three choices of the activation `f`:

- `"standard"`: ReLU, trained with an L1 penalty on `acts * |W_dec row|` (the decoder-norm-weighted
  penalty, so the SAE cannot shrink its activations by growing its decoder).
- `"topk"`: keep the `k` largest pre-activations of each input (then ReLU), zero the rest (Gao et
  al. 2024). Sparsity is fixed by `k`; decoder rows are kept at unit norm.
- `"jumprelu"`: `pre` where `pre > threshold` (one threshold per feature), else 0 (Rajamanoharan
  et al. 2024). The threshold is learned through a straight-through estimator of the step
  function's gradient (a rectangle kernel of width `bandwidth`); decoder rows are kept at unit norm.

The SAE is a `HookedRootModule` with SAELens's hook names, so its features cache and patch like
any activation: `hook_sae_input`, `hook_sae_acts_pre`, `hook_sae_acts_post`, `hook_sae_recons`,
`hook_sae_error` (input minus reconstruction, when spliced with the error term), `hook_sae_output`.
"""

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from hookgpt.hooks import HookedRootModule, HookPoint

ARCHITECTURES = ("standard", "topk", "jumprelu")


@dataclass(frozen=True)
class SAEConfig:
    """What an SAE is: its size and architecture, and which activations it reads.

    Args:
        d_in: width of the activations (the hook's last dimension).
        d_sae: number of features.
        architecture: "standard" (ReLU + L1), "topk" or "jumprelu".
        hook_name: the model hook it was trained on (e.g. "blocks.1.hook_resid_pre").
        k: active features per input (topk only).
        jumprelu_init_threshold: initial threshold of every feature (jumprelu only).
        jumprelu_bandwidth: width of the straight-through kernel (jumprelu only).
        apply_b_dec_to_input: subtract `b_dec` from the input before encoding.
        model_name, context_size, prepend_bos, dataset: where the activations came from (metadata).
        dtype: parameter dtype, e.g. "float32".
    """

    d_in: int
    d_sae: int
    architecture: str = "standard"
    hook_name: str = ""
    k: Optional[int] = None
    jumprelu_init_threshold: float = 0.001
    jumprelu_bandwidth: float = 0.001
    apply_b_dec_to_input: bool = True
    model_name: str = ""
    context_size: Optional[int] = None
    prepend_bos: bool = True
    dataset: str = ""
    dtype: str = "float32"

    def __post_init__(self):
        for name in ("d_in", "d_sae"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SAEConfig.{name} must be a positive int, got {value!r}")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"SAEConfig.architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.architecture == "topk":
            if not isinstance(self.k, int) or not 1 <= self.k <= self.d_sae:
                raise ValueError(f"a topk SAE needs k, an int in [1, d_sae={self.d_sae}], got k={self.k!r}")
        elif self.k is not None:
            raise ValueError(f"k is only for architecture='topk', got k={self.k} with architecture={self.architecture!r}")
        if self.jumprelu_init_threshold <= 0 or self.jumprelu_bandwidth <= 0:
            raise ValueError("jumprelu_init_threshold and jumprelu_bandwidth must be > 0")
        if not isinstance(getattr(torch, self.dtype, None), torch.dtype):
            raise ValueError(f"SAEConfig.dtype must name a torch dtype such as 'float32', got {self.dtype!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SAEConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown SAEConfig fields {unknown}; known: {sorted(known)}")
        return cls(**d)

    def replace(self, **changes: Any) -> "SAEConfig":
        return dataclasses.replace(self, **changes)


# ----------------------------------------------------------------------------- JumpReLU's estimator


def _rectangle(x: Tensor) -> Tensor:
    """The kernel K(x) = 1 on (-1/2, 1/2), else 0."""
    return ((x > -0.5) & (x < 0.5)).to(x.dtype)


class _JumpReLU(torch.autograd.Function):
    """pre * H(pre - threshold). Gradient to `pre`: H(pre - threshold) (the ordinary one); to the
    threshold, the straight-through estimate -threshold/bandwidth * K((pre - threshold)/bandwidth)."""

    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        pre, threshold = ctx.saved_tensors
        grad_pre = grad * (pre > threshold).to(pre.dtype)
        grad_threshold = -(threshold / ctx.bandwidth) * _rectangle((pre - threshold) / ctx.bandwidth) * grad
        return grad_pre, grad_threshold.reshape(-1, threshold.shape[-1]).sum(0), None


class _Step(torch.autograd.Function):
    """H(pre - threshold), the count behind JumpReLU's L0 penalty. No gradient to `pre`; to the
    threshold, the straight-through estimate -1/bandwidth * K((pre - threshold)/bandwidth)."""

    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor, None]:
        pre, threshold = ctx.saved_tensors
        grad_threshold = -(1.0 / ctx.bandwidth) * _rectangle((pre - threshold) / ctx.bandwidth) * grad
        return None, grad_threshold.reshape(-1, threshold.shape[-1]).sum(0), None


def jumprelu_l0(pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """Features active per input, `[...]`, differentiable in the threshold (JumpReLU's sparsity loss)."""
    return _Step.apply(pre, threshold, bandwidth).sum(-1)


# ----------------------------------------------------------------------------- the module


class SAE(HookedRootModule):
    """A sparse autoencoder on activations `[..., d_in]`.

    >>> sae = SAE(SAEConfig(d_in=64, d_sae=512, architecture="topk", k=8, hook_name="blocks.1.hook_resid_pre"))
    >>> acts = sae.encode(x)          # [..., d_sae], at most 8 nonzero per input
    >>> x_hat = sae.decode(acts)      # [..., d_in]
    >>> x_hat, cache = sae.run_with_cache(x)   # cache["hook_sae_acts_post"], ...
    """

    def __init__(self, cfg: SAEConfig, seed: Optional[int] = None, decoder_init_norm: Optional[float] = None):
        """Build with Anthropic's initialisation: decoder rows random directions of norm
        `decoder_init_norm` (0.1 for "standard", 1 otherwise), `W_enc = W_dec.T`, biases zero.
        `seed` makes the initial weights reproducible without touching the global RNG."""
        super().__init__()
        if not isinstance(cfg, SAEConfig):
            raise TypeError(f"SAE needs an SAEConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        dtype = cfg.torch_dtype
        self.W_enc = nn.Parameter(torch.empty(cfg.d_in, cfg.d_sae, dtype=dtype))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dtype))
        self.W_dec = nn.Parameter(torch.empty(cfg.d_sae, cfg.d_in, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, dtype=dtype))
        if cfg.architecture == "jumprelu":
            # learned in log space, so it stays positive
            self.log_threshold = nn.Parameter(torch.full((cfg.d_sae,), math.log(cfg.jumprelu_init_threshold), dtype=dtype))

        self.hook_sae_input = HookPoint()  # [..., d_in]
        self.hook_sae_acts_pre = HookPoint()  # [..., d_sae]
        self.hook_sae_acts_post = HookPoint()  # [..., d_sae]
        self.hook_sae_recons = HookPoint()  # [..., d_in]
        self.hook_sae_error = HookPoint()  # [..., d_in]
        self.hook_sae_output = HookPoint()  # [..., d_in]
        self.init_weights(seed, decoder_init_norm)
        self.setup()

    @torch.no_grad()
    def init_weights(self, seed: Optional[int] = None, decoder_init_norm: Optional[float] = None) -> None:
        if decoder_init_norm is None:
            decoder_init_norm = 0.1 if self.cfg.architecture == "standard" else 1.0
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        directions = torch.randn(self.cfg.d_sae, self.cfg.d_in, generator=generator, dtype=torch.float64)
        directions = directions / directions.norm(dim=-1, keepdim=True) * decoder_init_norm
        self.W_dec.copy_(directions)
        self.W_enc.copy_(directions.T)
        self.b_enc.zero_()
        self.b_dec.zero_()

    # ------------------------------------------------------------------ properties

    @property
    def threshold(self) -> Float[Tensor, "d_sae"]:
        """JumpReLU's per-feature threshold."""
        if self.cfg.architecture != "jumprelu":
            raise AttributeError(f"a {self.cfg.architecture!r} SAE has no threshold (only 'jumprelu' SAEs do)")
        return self.log_threshold.exp()

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    def extra_repr(self) -> str:
        k = f", k={self.cfg.k}" if self.cfg.k else ""
        return f"d_in={self.cfg.d_in}, d_sae={self.cfg.d_sae}, architecture={self.cfg.architecture!r}{k}, hook_name={self.cfg.hook_name!r}"

    # ------------------------------------------------------------------ the maths

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(f"an SAE encodes float activations [..., d_in={self.cfg.d_in}], got {getattr(x, 'dtype', type(x).__name__)}")
        if x.shape[-1] != self.cfg.d_in:
            raise ValueError(
                f"this SAE reads activations [..., d_in={self.cfg.d_in}] ({self.cfg.hook_name or 'no hook name'}), "
                f"got shape {tuple(x.shape)}"
            )

    def pre_activations(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """`(x - b_dec) @ W_enc + b_enc`, without hooks."""
        sae_in = x.to(self.dtype) - self.b_dec if self.cfg.apply_b_dec_to_input else x.to(self.dtype)
        return sae_in @ self.W_enc + self.b_enc

    def activation(self, pre: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_sae"]:
        """The architecture's nonlinearity: ReLU, TopK or JumpReLU."""
        if self.cfg.architecture == "standard":
            return F.relu(pre)
        if self.cfg.architecture == "topk":
            values, indices = pre.topk(self.cfg.k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, indices, F.relu(values))
        return _JumpReLU.apply(pre, self.threshold, self.cfg.jumprelu_bandwidth)

    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """Feature activations of `x`; fires `hook_sae_input`, `hook_sae_acts_pre`, `hook_sae_acts_post`."""
        self._check_input(x)
        sae_in = self.hook_sae_input(x.to(self.dtype))
        pre = self.hook_sae_acts_pre(self.pre_activations(sae_in))
        return self.hook_sae_acts_post(self.activation(pre))

    def decode(self, acts: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_in"]:
        """`acts @ W_dec + b_dec`; fires `hook_sae_recons`."""
        if acts.shape[-1] != self.cfg.d_sae:
            raise ValueError(f"decode needs feature activations [..., d_sae={self.cfg.d_sae}], got shape {tuple(acts.shape)}")
        return self.hook_sae_recons(acts @ self.W_dec + self.b_dec)

    def forward(self, x: Float[Tensor, "... d_in"], use_error_term: bool = False) -> Float[Tensor, "... d_in"]:
        """The reconstruction of `x`; with `use_error_term`, reconstruction + (x - reconstruction),
        which is `x` itself unless a hook edited the features (the edit then changes `x` by
        exactly the edit's effect on the reconstruction)."""
        recons = self.decode(self.encode(x))
        if not use_error_term:
            return self.hook_sae_output(recons)
        x = x.to(self.dtype)
        if any(hp.has_hooks for hp in (self.hook_sae_input, self.hook_sae_acts_pre, self.hook_sae_acts_post, self.hook_sae_recons)):
            clean = self.activation(self.pre_activations(x)) @ self.W_dec + self.b_dec  # as if nothing were hooked
        else:
            clean = recons
        error = self.hook_sae_error(x - clean)
        return self.hook_sae_output(recons + error)

    # ------------------------------------------------------------------ decoder norms

    @torch.no_grad()
    def set_decoder_norm_to_unit_norm(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp(min=1e-8))

    @torch.no_grad()
    def remove_gradient_parallel_to_decoder_directions(self) -> None:
        """Project each decoder row's gradient onto the row's tangent space (so a step keeps it
        near unit norm; `set_decoder_norm_to_unit_norm` after the step puts it back exactly)."""
        if self.W_dec.grad is None:
            return
        unit = self.W_dec / self.W_dec.norm(dim=-1, keepdim=True).clamp(min=1e-8)
        parallel = (self.W_dec.grad * unit).sum(-1, keepdim=True)
        self.W_dec.grad.sub_(parallel * unit)

    # ------------------------------------------------------------------ files

    def save_pretrained(self, directory: Union[str, os.PathLike]) -> None:
        """Write the SAE in SAELens's layout: `cfg.json` + `sae_weights.safetensors` (see `analyses.sae.saelens`)."""
        from analyses.sae.saelens import save_sae

        save_sae(self, directory)

    @classmethod
    def from_pretrained(cls, name_or_path: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu") -> "SAE":
        """Load an SAE: a directory in SAELens's layout (written by hookgpt or by SAELens), or the
        name of an SAE shipped with hookgpt (`analyses.sae.list_pretrained_saes()`)."""
        from analyses.sae.saelens import load_sae

        return load_sae(name_or_path, device=device)

    def config_json(self) -> str:
        return json.dumps(self.cfg.to_dict(), indent=2)
