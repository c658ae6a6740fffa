"""Sparse autoencoders on hookgpt's hooks: train, load, splice, inspect and steer features.

    from analyses.sae import SAE, SAEConfig, SAETrainConfig, train_sae, ShardActivations, splice, feature_dashboards

    sae = SAE.from_pretrained("hookgpt-shakespeare-resid-pre-1")   # shipped, offline
    with splice(model, sae, use_error_term=True):                 # the hook now runs through the SAE
        logits = model(tokens)

Modules, one idea each:

- `sae`: the SAE module (`SAEConfig`, `SAE`): "standard" (ReLU + L1), "topk", "jumprelu"; its hook points.
- `activations`: training data: `TensorActivations`, `ShardActivations` (memory-mapped `analyses.collect`
  shards), `ModelActivations` (streamed from the model).
- `training`: `train_sae` with checkpoints, exact resume and `torchrun`.
- `evaluate`: L0, explained variance, MSE, dead/dense fractions, CE loss recovered.
- `interventions`: `splice(model, *saes)`, feature ablation / clamping / steering, feature attribution.
- `saelens`: SAELens's directory layout (`cfg.json` + `sae_weights.safetensors`), shipped SAEs.
- `dashboard`: per-feature dashboard data (top contexts, histogram, logits, steering) and its views.
"""

from .activations import ModelActivations, ShardActivations, TensorActivations
from .dashboard import FeatureDashboards, feature_dashboards
from .evaluate import SAEEvaluation, evaluate_sae
from .interventions import (
    FeatureAttribution,
    ablate_features,
    clamp_features,
    feature_attribution,
    splice,
    steer_features,
    steering_hook,
)
from .sae import ARCHITECTURES, SAE, SAEConfig
from .saelens import list_pretrained_saes, load_sae, pretrained_sae_card, save_sae
from .training import SAETrainConfig, read_log, train_sae

__all__ = [
    "ARCHITECTURES",
    "FeatureAttribution",
    "FeatureDashboards",
    "ModelActivations",
    "SAE",
    "SAEConfig",
    "SAEEvaluation",
    "SAETrainConfig",
    "ShardActivations",
    "TensorActivations",
    "ablate_features",
    "clamp_features",
    "evaluate_sae",
    "feature_attribution",
    "feature_dashboards",
    "list_pretrained_saes",
    "load_sae",
    "pretrained_sae_card",
    "read_log",
    "save_sae",
    "splice",
    "steer_features",
    "steering_hook",
    "train_sae",
]
