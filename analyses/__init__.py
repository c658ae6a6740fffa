"""Analyses of a HookedGPT: each a small function of `(model, ...)`.

    from analyses import logit_lens, attribution, heads, ablation, patching, steering, collect

- `logit_lens`: what each layer's residual stream would predict (`logit_lens(model, text)`).
- `attribution`: direct logit attribution of embeddings, heads, MLPs and neurons.
- `heads`: head scans (previous-token, duplicate-token, induction, first-token, current-token,
  your own template), `top_heads`.
- `ablation`: zero / mean / resample ablation of heads, MLPs, neurons, residual positions.
- `patching`: activation patching sweeps, batched (`method="fast"`) or one run per patch.
- `circuits`: circuit discovery: attribution patching (AtP, AtP*), edge attribution (EAP,
  EAP-IG), path patching, edge patching, faithfulness of a circuit, and its view.
- `steering`: a direction from contrastive prompts, added at a site: metric, probabilities, text.
- `metrics`: the metric contract they share, and `logit_diff` / `logit_diff_metric`.

Ablation, patching and steering build interventions (`hookgpt.interventions`) and run them
through its batched engine.
- `collect`: activations over a dataset to safetensors shards, and back.
- `fourier`: Fourier analysis of modular-arithmetic models (key frequencies, neuron clusters,
  restricted/excluded loss, progress measures over training checkpoints).
- `sae`: sparse autoencoders: train on any hook, splice, attribute and steer features, dashboards.
- `plotting`: the plotly helpers they share.

Tensors for code, `.to_df()` for tables, `.figure()` / `plot_...` for plots. No analysis leaves a
hook attached or changes a cache it is given. Interactive HTML views live in `analyses.render`.

Submodules are imported on first use, so `import analyses.render` does not load torch models.
"""

import importlib
from typing import Any

__all__ = ["ablation", "attribution", "circuits", "collect", "fourier", "heads", "logit_lens", "metrics", "patching", "plotting", "sae", "steering"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return importlib.import_module(f"analyses.{name}")
    raise AttributeError(f"module 'analyses' has no attribute {name!r}")
