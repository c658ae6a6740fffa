"""SAEs on disk in SAELens's layout, so they move between hookgpt and SAELens.

    my_sae/
      cfg.json                   {"architecture": "topk", "d_in": 64, "d_sae": 512, "k": 8, ...,
                                  "metadata": {"hook_name": "blocks.1.hook_resid_pre", "model_name": ...}}
      sae_weights.safetensors    W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in]
                                 (+ threshold [d_sae] for "jumprelu")

`cfg.json` follows SAELens 6 (`SAE.save_model` / `SAE.load_from_disk`): the architecture's fields at
the top, where the activations come from under `metadata` (with `sae_lens_version`, which tells
SAELens the file is in its 6.x format). hookgpt's own training settings ride along under
`metadata.hookgpt`; SAELens ignores them. `load_sae` also reads the flat pre-6 layout
(`hook_name`, `activation_fn_str`, `activation_fn_kwargs.k` at the top level).

Only what hookgpt can run is accepted: the "standard", "topk" and "jumprelu" architectures, no
activation normalisation or reshaping. Anything else raises, naming the field.
"""

import json
import os
from pathlib import Path
from typing import Any, Union

import torch
from safetensors.torch import load_file, save_file

from hookgpt.atomic import atomic_write, write_text_atomic

from .sae import SAE, SAEConfig

CFG_NAME = "cfg.json"
WEIGHTS_NAME = "sae_weights.safetensors"
CARD_NAME = "README.md"
SAE_LENS_FORMAT_VERSION = "6.0.0"  # the cfg.json layout written here
SHIPPED_SAE_DIR = Path(__file__).resolve().parent / "data"

PathLike = Union[str, os.PathLike]


class SAEFormatError(ValueError):
    """A directory that is not an SAE hookgpt can load."""


def saelens_config(sae: SAE) -> dict[str, Any]:
    """The `cfg.json` of `sae` in SAELens 6's layout."""
    cfg = sae.cfg
    out: dict[str, Any] = {
        "architecture": cfg.architecture,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": str(sae.dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
        "normalize_activations": "none",
        "reshape_activations": "none",
    }
    if cfg.architecture == "topk":
        out["k"] = cfg.k
        out["rescale_acts_by_decoder_norm"] = False  # hookgpt keeps TopK decoder rows at unit norm instead
    out["metadata"] = {
        "sae_lens_version": SAE_LENS_FORMAT_VERSION,
        "sae_lens_training_version": None,
        "model_name": cfg.model_name,
        "hook_name": cfg.hook_name,
        "hook_head_index": None,
        "prepend_bos": cfg.prepend_bos,
        "context_size": cfg.context_size,
        "dataset_path": cfg.dataset,
        "hookgpt": {"jumprelu_bandwidth": cfg.jumprelu_bandwidth, "jumprelu_init_threshold": cfg.jumprelu_init_threshold},
    }
    return out


def save_sae(sae: SAE, directory: PathLike) -> Path:
    """Write `sae` to `directory` (created if needed) as `cfg.json` + `sae_weights.safetensors`,
    each file atomically. Returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = {name: getattr(sae, name).detach().cpu().contiguous() for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
    if sae.cfg.architecture == "jumprelu":
        weights["threshold"] = sae.threshold.detach().cpu().contiguous()
    with atomic_write(directory / WEIGHTS_NAME) as tmp:
        save_file(weights, str(tmp))
    write_text_atomic(directory / CFG_NAME, json.dumps(saelens_config(sae), indent=2) + "\n")
    return directory


def _config_from_saelens(raw: dict[str, Any], where: Path) -> SAEConfig:
    """An `SAEConfig` from a SAELens cfg.json (6.x layout or the flat pre-6 one)."""
    meta = dict(raw.get("metadata") or {})
    flat = {**raw, **meta}  # pre-6 files keep everything at the top level
    architecture = raw.get("architecture", "standard")
    activation_fn = flat.get("activation_fn", flat.get("activation_fn_str", "relu"))
    k = raw.get("k")
    if activation_fn == "topk":  # pre-6 TopK: architecture "standard" with a topk activation
        architecture, k = "topk", (flat.get("activation_fn_kwargs") or {}).get("k", k)
    if architecture not in ("standard", "topk", "jumprelu"):
        raise SAEFormatError(f"{where}: architecture {architecture!r} is not supported by hookgpt (standard, topk, jumprelu)")
    if architecture == "standard" and activation_fn not in ("relu", None):
        raise SAEFormatError(f"{where}: activation_fn {activation_fn!r} is not supported (hookgpt's standard SAE uses relu)")
    for field, ok in (("normalize_activations", "none"), ("reshape_activations", "none")):
        if flat.get(field, ok) not in (ok, None):
            raise SAEFormatError(f"{where}: {field}={flat[field]!r} is not supported by hookgpt (only {ok!r})")
    if flat.get("rescale_acts_by_decoder_norm"):
        raise SAEFormatError(f"{where}: rescale_acts_by_decoder_norm=True is not supported; fold the decoder norms into the SAE first")
    if flat.get("finetuning_scaling_factor"):
        raise SAEFormatError(f"{where}: finetuning_scaling_factor is not supported by hookgpt")
    if flat.get("hook_head_index") is not None:
        raise SAEFormatError(f"{where}: SAEs on one head (hook_head_index) are not supported by hookgpt")
    extra = meta.get("hookgpt") or {}
    for name in ("d_in", "d_sae"):
        if name not in raw:
            raise SAEFormatError(f"{where}: cfg.json has no {name!r}")
    return SAEConfig(
        d_in=int(raw["d_in"]),
        d_sae=int(raw["d_sae"]),
        architecture=architecture,
        hook_name=flat.get("hook_name") or "",
        k=int(k) if architecture == "topk" else None,
        jumprelu_init_threshold=float(extra.get("jumprelu_init_threshold", 0.001)),
        jumprelu_bandwidth=float(extra.get("jumprelu_bandwidth", 0.001)),
        apply_b_dec_to_input=bool(flat.get("apply_b_dec_to_input", True)),
        model_name=flat.get("model_name") or "",
        context_size=flat.get("context_size"),
        prepend_bos=bool(flat.get("prepend_bos", True)),
        dataset=flat.get("dataset_path") or "",
        dtype=str(flat.get("dtype", "float32")).removeprefix("torch."),
    )


def _sae_directory(name_or_path: PathLike) -> Path:
    path = Path(name_or_path)
    if (path / CFG_NAME).is_file():
        return path
    shipped = SHIPPED_SAE_DIR / str(name_or_path)
    if isinstance(name_or_path, str) and "/" not in name_or_path and (shipped / CFG_NAME).is_file():
        return shipped
    if path.exists():
        raise SAEFormatError(f"{path} has no {CFG_NAME}: not an SAE directory in SAELens's layout")
    raise FileNotFoundError(
        f"no SAE {str(name_or_path)!r}: not a directory with {CFG_NAME}, nor a shipped SAE ({', '.join(list_pretrained_saes()) or 'none'})"
    )


def load_sae(name_or_path: PathLike, device: Union[str, torch.device] = "cpu") -> SAE:
    """Load an SAE from a directory in SAELens's layout or by the name of a shipped one.
    The weights are read with safetensors (data only, never code)."""
    directory = _sae_directory(name_or_path)
    try:
        raw = json.loads((directory / CFG_NAME).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SAEFormatError(f"{directory / CFG_NAME} is not valid JSON: {e}") from e
    cfg = _config_from_saelens(raw, directory)
    weights_path = directory / WEIGHTS_NAME
    if not weights_path.is_file():
        raise SAEFormatError(f"{directory} has no {WEIGHTS_NAME}")
    weights = load_file(str(weights_path))
    expected = {"W_enc": (cfg.d_in, cfg.d_sae), "b_enc": (cfg.d_sae,), "W_dec": (cfg.d_sae, cfg.d_in), "b_dec": (cfg.d_in,)}
    if cfg.architecture == "jumprelu":
        if "threshold" not in weights and "log_threshold" in weights:  # a training checkpoint
            weights["threshold"] = weights.pop("log_threshold").exp()
        expected["threshold"] = (cfg.d_sae,)
    for name, shape in expected.items():
        if name not in weights:
            raise SAEFormatError(f"{weights_path} has no tensor {name!r} (it holds {sorted(weights)})")
        if tuple(weights[name].shape) != shape:
            raise SAEFormatError(f"{weights_path}: {name} has shape {tuple(weights[name].shape)}, cfg.json implies {shape}")
    sae = SAE(cfg)
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(sae, name).copy_(weights[name])
        if cfg.architecture == "jumprelu":
            threshold = weights["threshold"].double()
            if bool((threshold <= 0).any()):
                raise SAEFormatError(f"{weights_path}: hookgpt's JumpReLU needs positive thresholds, found {float(threshold.min())}")
            sae.log_threshold.copy_(threshold.log())
    return sae.to(device)


def list_pretrained_saes() -> list[str]:
    """Names of the SAEs shipped with hookgpt (load one with `SAE.from_pretrained(name)`)."""
    if not SHIPPED_SAE_DIR.is_dir():
        return []
    return sorted(p.name for p in SHIPPED_SAE_DIR.iterdir() if (p / CFG_NAME).is_file())


def pretrained_sae_card(name: str) -> dict[str, Any]:
    """The shipped SAE's measured numbers (`card.json`: data, steps, L0, explained variance, CE recovered)."""
    path = SHIPPED_SAE_DIR / name / "card.json"
    if not path.is_file():
        raise FileNotFoundError(f"no shipped SAE {name!r} (shipped: {', '.join(list_pretrained_saes()) or 'none'})")
    return json.loads(path.read_text(encoding="utf-8"))

