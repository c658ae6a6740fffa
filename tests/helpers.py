"""Small helpers shared by the test modules (importable because pytest puts tests/ on sys.path)."""

import torch

from hookgpt import GPTConfig, HookedGPT

TINY = dict(n_layers=2, d_model=64, n_heads=4, d_vocab=1000, n_ctx=64)


def no_hooks(model) -> bool:
    """True when no hook is attached anywhere in `model`."""
    return all(not hp.has_hooks for hp in model.hook_dict.values())


def perturbed_model(scale: float = 0.1, seed: int = 0, **overrides) -> HookedGPT:
    """A tiny model with noise of std `scale` added to every parameter: nonzero biases and
    LayerNorm parameters, and weights big enough that edits move the outputs visibly."""
    torch.manual_seed(seed)
    model = HookedGPT(GPTConfig(**{**TINY, **overrides})).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * scale)
    return model
