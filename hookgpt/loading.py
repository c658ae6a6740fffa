"""Loading and saving: Hugging Face GPT-2 checkpoints <-> hookgpt, and hookgpt's own format.

hookgpt's format is a directory with `config.json` (a `GPTConfig`) and `model.safetensors`
(the state dict in the layout of DESIGN.md). Hugging Face GPT-2 stores attention as one fused
`Conv1D` (`c_attn`, `[d_model, 3 * d_model]`, used as `x @ W`); `convert_hf_state_dict` splits
it into per-head `W_Q/W_K/W_V` and `to_hf_state_dict` fuses it back.

`from_pretrained(name_or_path)` looks for a checkpoint in this order:

1. a model shipped with hookgpt (`hookgpt/data/models/<name>/`, see `list_shipped_models()`);
2. a local directory, in hookgpt's format or Hugging Face's (`config.json` with
   `model_type: gpt2` plus `model.safetensors`, sharded safetensors or `pytorch_model.bin`);
3. a model name in the local Hugging Face cache (downloaded first when a network is there and
   `HF_HUB_OFFLINE` is not set).

Loading never holds two copies of the weights: the model is built on the `meta` device (no
memory), the safetensors file is memory-mapped, and `load_state_dict(assign=True)` adopts the
tensors. Files a checkpoint names (the shards of an index) must lie inside its directory.
Weight processing (`fold_ln`, `center_writing_weights`, `center_unembed`) lives in
`hookgpt.processing`; its functions are importable from here too.

Saving (`save_pretrained`, `save_hf_pretrained`) writes the whole model into a temporary
directory next to the target and swaps it in (`hookgpt.atomic.atomic_directory`), so the target
holds the old model or the new one at every instant, whatever kills the save.
"""

import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import torch
from einops import rearrange
from torch import Tensor

from hookgpt.atomic import atomic_directory, recover_directory
from hookgpt.config import GPTConfig
from hookgpt.errors import ArgumentError, CheckpointError, ModelNotFoundError
from hookgpt.model import HookedGPT
from hookgpt.processing import (  # noqa: F401  (re-exported: `hookgpt.loading.process_weights` etc. keep working)
    center_unembed_,
    center_writing_weights_,
    fold_layer_norms,
    process_weights,
    untie_embeddings,
)
from hookgpt.tokenizer import Tokenizer

SHIPPED_DIR = Path(__file__).parent / "data" / "models"
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
HF_INDEX_FILE, HF_BIN_FILE = "model.safetensors.index.json", "pytorch_model.bin"
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")

PathLike = Union[str, os.PathLike]
DeviceLike = Union[str, torch.device, None]
DtypeLike = Union[str, torch.dtype, None]


# ---------------------------------------------------------------------------------------------
# Hugging Face GPT-2 <-> hookgpt
# ---------------------------------------------------------------------------------------------


def config_from_hf(hf_config: dict[str, Any], model_name: str = "custom") -> GPTConfig:
    """A `GPTConfig` from the fields of a Hugging Face GPT-2 `config.json`."""
    if hf_config.get("model_type", "gpt2") != "gpt2":
        raise CheckpointError(f"only GPT-2 checkpoints are supported, this one has model_type={hf_config.get('model_type')!r}")
    for field, unsupported in (("scale_attn_by_inverse_layer_idx", True), ("scale_attn_weights", False), ("add_cross_attention", True)):
        if hf_config.get(field, not unsupported) == unsupported:
            raise CheckpointError(f"{field}={unsupported} is not supported (hookgpt implements GPT-2's standard attention)")
    missing = [key for key in ("n_layer", "n_embd", "n_head", "vocab_size", "n_positions") if key not in hf_config]
    if missing:
        raise CheckpointError(f"a GPT-2 config.json needs the fields {missing}, which this one lacks")
    act = hf_config.get("activation_function", "gelu_new")
    act = {"gelu_pytorch_tanh": "gelu_new", "gelu_fast": "gelu_new"}.get(act, act)
    d_model = hf_config["n_embd"]
    return GPTConfig(
        n_layers=hf_config["n_layer"],
        d_model=d_model,
        n_heads=hf_config["n_head"],
        d_mlp=hf_config.get("n_inner") or 4 * d_model,
        d_vocab=hf_config["vocab_size"],
        n_ctx=hf_config["n_positions"],
        act_fn=act,
        layer_norm_eps=hf_config.get("layer_norm_epsilon", 1e-5),
        tie_embeddings=hf_config.get("tie_word_embeddings", True),
        init_range=hf_config.get("initializer_range", 0.02),
        model_name=model_name,
    )


def config_to_hf(cfg: GPTConfig) -> dict[str, Any]:
    """The Hugging Face `config.json` fields for a (non-attention-only) hookgpt config."""
    if cfg.attn_only:
        raise ValueError("transformers' GPT-2 has MLPs in every block; an attention-only model cannot be exported")
    if cfg.d_head * cfg.n_heads != cfg.d_model:
        raise ValueError(f"transformers' GPT-2 needs d_head * n_heads == d_model, got {cfg.d_head} * {cfg.n_heads} != {cfg.d_model}")
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "n_layer": cfg.n_layers,
        "n_embd": cfg.d_model,
        "n_head": cfg.n_heads,
        "n_inner": cfg.d_mlp,
        "vocab_size": cfg.d_vocab,
        "n_positions": cfg.n_ctx,
        "activation_function": cfg.act_fn,
        "layer_norm_epsilon": cfg.layer_norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": cfg.init_range,
        "bos_token_id": 50256,
        "eos_token_id": 50256,
    }


def convert_hf_state_dict(hf_sd: dict[str, Tensor], cfg: GPTConfig) -> dict[str, Tensor]:
    """Hugging Face GPT-2 weights (`transformer.h.0.attn.c_attn.weight`, ...) -> hookgpt names and layout."""
    sd = {k.removeprefix("transformer."): v for k, v in hf_sd.items()}
    n_heads = cfg.n_heads

    def need(key: str) -> Tensor:
        if key not in sd:
            raise CheckpointError(f"the checkpoint has no weight {key!r} (n_layers={cfg.n_layers} in the config)")
        return sd[key]

    out = {
        "embed.W_E": need("wte.weight"),
        "pos_embed.W_pos": need("wpe.weight"),
        "ln_final.w": need("ln_f.weight"),
        "ln_final.b": need("ln_f.bias"),
        "unembed.b_U": torch.zeros(cfg.d_vocab, dtype=need("wte.weight").dtype),
    }
    if not cfg.tie_embeddings:
        out["unembed.W_U"] = sd.get("lm_head.weight", need("wte.weight")).T
    for l in range(cfg.n_layers):
        h, b = f"h.{l}.", f"blocks.{l}."
        W_Q, W_K, W_V = need(h + "attn.c_attn.weight").chunk(3, dim=1)  # each [d_model, n_heads * d_head]
        b_Q, b_K, b_V = need(h + "attn.c_attn.bias").chunk(3, dim=0)
        for name, W, bias in (("Q", W_Q, b_Q), ("K", W_K, b_K), ("V", W_V, b_V)):
            out[b + f"attn.W_{name}"] = rearrange(W, "d_model (n_heads d_head) -> n_heads d_model d_head", n_heads=n_heads)
            out[b + f"attn.b_{name}"] = rearrange(bias, "(n_heads d_head) -> n_heads d_head", n_heads=n_heads)
        out[b + "attn.W_O"] = rearrange(
            need(h + "attn.c_proj.weight"), "(n_heads d_head) d_model -> n_heads d_head d_model", n_heads=n_heads
        )
        out[b + "attn.b_O"] = need(h + "attn.c_proj.bias")
        out[b + "ln1.w"], out[b + "ln1.b"] = need(h + "ln_1.weight"), need(h + "ln_1.bias")
        out[b + "ln2.w"], out[b + "ln2.b"] = need(h + "ln_2.weight"), need(h + "ln_2.bias")
        out[b + "mlp.W_in"], out[b + "mlp.b_in"] = need(h + "mlp.c_fc.weight"), need(h + "mlp.c_fc.bias")
        out[b + "mlp.W_out"], out[b + "mlp.b_out"] = need(h + "mlp.c_proj.weight"), need(h + "mlp.c_proj.bias")
    return {k: v.contiguous() for k, v in out.items()}


def to_hf_state_dict(model: HookedGPT) -> dict[str, Tensor]:
    """hookgpt weights -> a `GPT2LMHeadModel` state dict (the inverse of `convert_hf_state_dict`).

    `unembed.b_U` has no place in GPT-2; exporting a model whose b_U is non-zero (e.g. after
    `center_unembed`... which keeps it zero, or training with a bias) raises an error.
    """
    cfg = model.cfg
    config_to_hf(cfg)  # raises for configs transformers cannot express
    if model.b_U.detach().abs().max() > 0:
        raise ValueError("this model has a non-zero unembedding bias b_U, which transformers' GPT-2 cannot hold")
    sd = {
        "transformer.wte.weight": model.W_E,
        "transformer.wpe.weight": model.W_pos,
        "transformer.ln_f.weight": model.ln_final.w,
        "transformer.ln_f.bias": model.ln_final.b,
        "lm_head.weight": model.W_U.T,
    }
    for l, block in enumerate(model.blocks):
        h, attn = f"transformer.h.{l}.", block.attn
        sd[h + "attn.c_attn.weight"] = torch.cat(
            [rearrange(W, "n_heads d_model d_head -> d_model (n_heads d_head)") for W in (attn.W_Q, attn.W_K, attn.W_V)], dim=1
        )
        sd[h + "attn.c_attn.bias"] = torch.cat([rearrange(b, "n_heads d_head -> (n_heads d_head)") for b in (attn.b_Q, attn.b_K, attn.b_V)])
        sd[h + "attn.c_proj.weight"] = rearrange(attn.W_O, "n_heads d_head d_model -> (n_heads d_head) d_model")
        sd[h + "attn.c_proj.bias"] = attn.b_O
        sd[h + "ln_1.weight"], sd[h + "ln_1.bias"] = block.ln1.w, block.ln1.b
        sd[h + "ln_2.weight"], sd[h + "ln_2.bias"] = block.ln2.w, block.ln2.b
        sd[h + "mlp.c_fc.weight"], sd[h + "mlp.c_fc.bias"] = block.mlp.W_in, block.mlp.b_in
        sd[h + "mlp.c_proj.weight"], sd[h + "mlp.c_proj.bias"] = block.mlp.W_out, block.mlp.b_out
    return {k: v.detach().contiguous() for k, v in sd.items()}


def hf_state_dict_shapes(cfg: GPTConfig) -> dict[str, tuple[int, ...]]:
    """The weights a Hugging Face GPT-2 checkpoint of config `cfg` holds (without the
    `transformer.` prefix) and their shapes. `lm_head.weight` is optional (tied embeddings)."""
    D, M = cfg.d_model, cfg.d_mlp
    shapes = {"wte.weight": (cfg.d_vocab, D), "wpe.weight": (cfg.n_ctx, D), "ln_f.weight": (D,), "ln_f.bias": (D,)}
    for l in range(cfg.n_layers):
        h = f"h.{l}."
        shapes.update({
            h + "ln_1.weight": (D,), h + "ln_1.bias": (D,),
            h + "attn.c_attn.weight": (D, 3 * D), h + "attn.c_attn.bias": (3 * D,),
            h + "attn.c_proj.weight": (D, D), h + "attn.c_proj.bias": (D,),
            h + "ln_2.weight": (D,), h + "ln_2.bias": (D,),
            h + "mlp.c_fc.weight": (D, M), h + "mlp.c_fc.bias": (M,),
            h + "mlp.c_proj.weight": (M, D), h + "mlp.c_proj.bias": (D,),
        })  # fmt: skip
    shapes["lm_head.weight"] = (cfg.d_vocab, D)
    return shapes


# ---------------------------------------------------------------------------------------------
# Checking weights against a config
# ---------------------------------------------------------------------------------------------


def check_state_dict(
    found: dict[str, tuple[int, ...]],
    expected: dict[str, tuple[int, ...]],
    cfg: GPTConfig,
    where: str,
    optional: tuple[str, ...] = (),
    ignore_suffixes: tuple[str, ...] = (),
) -> None:
    """Compare weight names and shapes with what the config needs; raise one `CheckpointError`
    listing every missing, unexpected and wrongly shaped weight."""
    missing = [k for k in expected if k not in found and k not in optional]
    unexpected = [k for k in found if k not in expected and not k.endswith(ignore_suffixes)]
    wrong = [f"{k}: checkpoint {tuple(found[k])}, config needs {expected[k]}" for k in expected if k in found and tuple(found[k]) != expected[k]]
    if not (missing or unexpected or wrong):
        return
    summary = ", ".join(f"{k}={getattr(cfg, k)}" for k in ("n_layers", "d_model", "n_heads", "d_mlp", "d_vocab", "n_ctx"))
    lines = [f"the weights in {where} do not match the config ({summary}):"]
    for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if items:
            shown = items[:20] + ([f"... and {len(items) - 20} more"] if len(items) > 20 else [])
            lines.append(f"  {title} ({len(items)}): " + "; ".join(shown))
    raise CheckpointError("\n".join(lines))


# ---------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"no {path.name} in {str(path.parent)!r}: a checkpoint directory needs {CONFIG_FILE}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} should hold a JSON object, got {type(data).__name__}")
    return data


def _load_safetensors(path: Path, device: torch.device) -> dict[str, Tensor]:
    """Memory-map a safetensors file: tensors are read from disk when first touched."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    try:
        return load_file(path, device=str(device))
    except SafetensorError as e:
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt?): {e}") from e


def _load_torch_bin(path: Path, device: torch.device) -> dict[str, Tensor]:
    """A `pytorch_model.bin` state dict, memory-mapped when saved in the zip format."""
    try:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            sd = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except FileNotFoundError:
        raise
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable PyTorch state dict (truncated or corrupt?): {e}") from e
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise CheckpointError(f"{path} should hold a dict of tensors (a state dict), got {type(sd).__name__}")
    return {k: v.to(device) for k, v in sd.items()}


def _inside(directory: Path, name: str, listed_in: str) -> Path:
    """`directory / name`, refusing a name that leaves the directory (`../x`, `/etc/x`, a symlink
    out): files a checkpoint names are its own files, never anything else on the machine."""
    path = directory / name
    if os.path.isabs(name) or not path.resolve().is_relative_to(directory.resolve()):
        raise CheckpointError(f"{directory / listed_in} names the file {name!r}, which is outside the checkpoint directory; refusing to read it")
    return path


def _load_hf_weights(directory: Path, device: torch.device) -> tuple[dict[str, Tensor], str]:
    """The state dict of a Hugging Face directory and a description of where it came from."""
    if (directory / WEIGHTS_FILE).is_file():
        return _load_safetensors(directory / WEIGHTS_FILE, device), str(directory / WEIGHTS_FILE)
    if (directory / HF_INDEX_FILE).is_file():
        weight_map = _read_json(directory / HF_INDEX_FILE).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{directory / HF_INDEX_FILE} has no 'weight_map' object")
        sd: dict[str, Tensor] = {}
        for shard in sorted(set(map(str, weight_map.values()))):
            sd.update(_load_safetensors(_inside(directory, shard, HF_INDEX_FILE), device))
        return sd, f"the shards of {directory / HF_INDEX_FILE}"
    if (directory / HF_BIN_FILE).is_file():
        return _load_torch_bin(directory / HF_BIN_FILE, device), str(directory / HF_BIN_FILE)
    raise FileNotFoundError(
        f"no weights in {str(directory)!r}: looked for {WEIGHTS_FILE}, {HF_INDEX_FILE} and {HF_BIN_FILE}; "
        f"found {sorted(p.name for p in directory.iterdir())}"
    )


def _tokenizer_in(directory: Path, cfg: GPTConfig) -> Optional[Tokenizer]:
    """The directory's own tokenizer when it has tokenizer files, else None (the model then
    falls back to GPT-2's shipped tokenizer)."""
    has_files = (directory / "tokenizer.json").is_file() or (
        (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file()
    )
    if not has_files:
        return None
    try:
        tokenizer = Tokenizer.from_directory(directory)
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"cannot read the tokenizer files in {str(directory)!r}: {e}") from e
    if tokenizer.vocab_size > cfg.d_vocab:
        warnings.warn(
            f"the tokenizer in {directory} has {tokenizer.vocab_size} tokens but the model only d_vocab={cfg.d_vocab}; "
            "some token ids will be out of range",
            stacklevel=3,
        )
    return tokenizer


def _as_dtype(dtype: DtypeLike) -> Optional[torch.dtype]:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).replace("torch.", ""), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"dtype={dtype!r} is not a torch dtype (e.g. 'float32', 'bfloat16', torch.float16)")
    return value


def _as_device(device: DeviceLike) -> torch.device:
    """A torch device that exists on this machine (default CPU), or an error saying why not."""
    try:
        device = torch.device(device if device is not None else "cpu")
    except (RuntimeError, TypeError) as e:
        raise ArgumentError(f"device={device!r} is not a torch device (e.g. 'cpu', 'cuda', 'cuda:1'): {e}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ArgumentError(f"device={str(device)!r}: no CUDA GPU is available here (torch.cuda.is_available() is False); use device='cpu'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ArgumentError(f"device={str(device)!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ArgumentError(f"device={str(device)!r}: Apple's MPS backend is not available here; use device='cpu'")
    return device


# ---------------------------------------------------------------------------------------------
# Loading a checkpoint directory
# ---------------------------------------------------------------------------------------------


def is_hf_config(config: dict[str, Any]) -> bool:
    """Whether a `config.json` is Hugging Face's (it names a `model_type`) rather than hookgpt's."""
    return "model_type" in config or "n_layer" in config


def load_checkpoint(
    directory: PathLike, dtype: DtypeLike = None, device: DeviceLike = None, model_name: Optional[str] = None
) -> HookedGPT:
    """Load a checkpoint directory, in hookgpt's format or Hugging Face's GPT-2 format.

    The model is built on the meta device and adopts the (memory-mapped) tensors, so the weights
    are in memory once. `dtype=None` keeps the checkpoint's dtype.
    """
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory {str(directory)!r} does not exist")
    device = _as_device(device)
    dtype = _as_dtype(dtype)
    config_path = directory / CONFIG_FILE
    raw = _read_json(config_path)

    try:
        if is_hf_config(raw):
            cfg = config_from_hf(raw, model_name=model_name or directory.name)
        else:  # the JSON spells the dtype as a string ("float32")
            cfg = GPTConfig.from_dict({**raw, "dtype": _as_dtype(raw.get("dtype", "float32"))})
    except CheckpointError as e:
        raise CheckpointError(f"{config_path}: {e}") from e
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{config_path} is not a valid {'GPT-2' if is_hf_config(raw) else 'GPTConfig'} config: {e}") from e

    if is_hf_config(raw):
        hf_sd, where = _load_hf_weights(directory, device)
        stripped = {k.removeprefix("transformer."): v for k, v in hf_sd.items()}
        check_state_dict(
            {k: tuple(v.shape) for k, v in stripped.items()},
            hf_state_dict_shapes(cfg),
            cfg,
            where,
            optional=("lm_head.weight",),
            ignore_suffixes=(".attn.bias", ".attn.masked_bias"),  # causal-mask buffers of old checkpoints
        )
        state_dict = convert_hf_state_dict(stripped, cfg)
        del hf_sd, stripped
        cfg = cfg.replace(dtype=dtype or state_dict["embed.W_E"].dtype)
    else:
        state_dict, where = _load_safetensors(config_path.parent / WEIGHTS_FILE, device), str(directory / WEIGHTS_FILE)
        cfg = cfg.replace(dtype=dtype or cfg.dtype)

    tokenizer = _tokenizer_in(directory, cfg)
    with torch.device("meta"):
        model = HookedGPT(cfg, tokenizer=tokenizer, init_weights=False)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_state_dict({k: tuple(v.shape) for k, v in state_dict.items()}, expected, cfg, where)
    model.load_state_dict({k: v.to(device=device, dtype=cfg.dtype) for k, v in state_dict.items()}, strict=True, assign=True)
    return model


# ---------------------------------------------------------------------------------------------
# Finding a checkpoint by name
# ---------------------------------------------------------------------------------------------


def list_shipped_models() -> list[str]:
    """Names of the models shipped with hookgpt (loadable offline by name)."""
    if not SHIPPED_DIR.is_dir():
        return []
    return sorted(p.name for p in SHIPPED_DIR.iterdir() if (p / CONFIG_FILE).is_file())


def _hf_offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:
        return True


def _hf_snapshot(name: str) -> tuple[Optional[Path], str]:
    """The local snapshot directory of Hugging Face model `name` (downloading it when online),
    or None and the reason it could not be found."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None, "huggingface_hub is not installed (pip install hookgpt[hf])"
    offline = _hf_offline()
    base = [CONFIG_FILE, *TOKENIZER_FILES]
    # the first weight format the repository has, without downloading the others
    for weights in ([WEIGHTS_FILE], [HF_INDEX_FILE, "model-*-of-*.safetensors"], [HF_BIN_FILE]):
        try:
            path = Path(snapshot_download(name, allow_patterns=base + weights, local_files_only=offline))
        except Exception as e:  # invalid repo id, not cached, no network, gated repo, ...
            what = "the local Hugging Face cache has no snapshot of it" if offline else "it is not in the local Hugging Face cache and could not be downloaded"
            return None, f"{what} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        if (path / CONFIG_FILE).is_file() and any((path / w).is_file() for w in (WEIGHTS_FILE, HF_INDEX_FILE, HF_BIN_FILE)):
            return path, ""
    return None, f"its Hugging Face snapshot {path} has no config.json with weights"


def _looks_like_path(name: str) -> bool:
    """A name that can only be a filesystem path, never a Hugging Face repo id ("org/name")."""
    return os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1 or "\\" in name


def find_checkpoint(name_or_path: PathLike) -> Path:
    """The directory `from_pretrained(name_or_path)` loads: shipped model, local directory, or
    Hugging Face cache, in that order."""
    name = os.fspath(name_or_path)
    if not name.strip():
        raise ArgumentError("the model name is empty: give a shipped model name, a checkpoint directory or a Hugging Face name")
    shipped = list_shipped_models()
    if name in shipped:
        return SHIPPED_DIR / name
    path = Path(name).expanduser()
    if not path.exists():
        recover_directory(path)  # a save killed between its two renames (systems without renameat2)
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(
                f"{name!r} is a file; from_pretrained expects a directory with {CONFIG_FILE} and the weights"
            )
        return path
    if _looks_like_path(name):
        raise FileNotFoundError(f"checkpoint directory {name!r} does not exist")
    snapshot, reason = _hf_snapshot(name)
    if snapshot is not None:
        return snapshot
    raise ModelNotFoundError(
        f"no model named {name!r}: it is not shipped with hookgpt (shipped models: {shipped or 'none'}), "
        f"not a local directory, and {reason}"
    )


def from_pretrained(
    name_or_path: PathLike,
    fold_ln: bool = False,
    center_writing_weights: bool = False,
    center_unembed: bool = False,
    dtype: DtypeLike = torch.float32,
    device: DeviceLike = None,
) -> HookedGPT:
    """Load a model by name or path (see the module docstring for where it looks).

    Args:
        fold_ln, center_writing_weights, center_unembed: weight processing as in
            TransformerLens (see `process_weights`); all off by default, so the weights are
            exactly the checkpoint's.
        dtype: the dtype to compute in; float32 by default (the shipped model is stored in
            float16, which CPUs compute slowly and imprecisely); None keeps the checkpoint's dtype.
        device: where the weights go (default CPU).

    The tokenizer is the directory's own (`tokenizer.json` or `vocab.json` + `merges.txt`) when
    it has one, else GPT-2's, shipped with hookgpt.
    """
    directory = find_checkpoint(name_or_path)
    name = os.fspath(name_or_path)
    model_name = name if not Path(name).expanduser().exists() else Path(name).expanduser().resolve().name
    model = load_checkpoint(directory, dtype=dtype, device=device, model_name=model_name)
    if fold_ln or center_writing_weights or center_unembed:
        process_weights(model, fold_ln=fold_ln, center_writing_weights=center_writing_weights, center_unembed=center_unembed)
    return model


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------


def is_model_file(name: str) -> bool:
    """Whether a file name in a checkpoint directory belongs to the model (weights, config,
    tokenizer): saving a model replaces all of these and keeps any other file."""
    return name in (CONFIG_FILE, WEIGHTS_FILE, HF_INDEX_FILE, HF_BIN_FILE, *TOKENIZER_FILES) or bool(
        re.fullmatch(r"model-\d+-of-\d+\.safetensors", name)
    )


def write_safetensors(state_dict: dict[str, Tensor], path: PathLike, metadata: Optional[dict[str, str]] = None) -> None:
    """`safetensors.torch.save_file`, raising an I/O failure (a full disk) as the `OSError` it is
    rather than safetensors' own error type."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}, str(path), metadata=metadata or {"format": "pt"})
    except SafetensorError as e:
        code = re.search(r"os error (\d+)", str(e))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from e


def _write_json(data: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _copy_tokenizer_files(model: HookedGPT, directory: Path) -> None:
    """Copies of the tokenizer files the model was loaded with (none for GPT-2's shipped one)."""
    source = getattr(model._tokenizer, "_source", None)
    if source is None:
        return
    for name in TOKENIZER_FILES:
        if (Path(source) / name).is_file():
            shutil.copyfile(Path(source) / name, directory / name)


def _save(model: HookedGPT, directory: PathLike, state_dict: dict[str, Tensor], config: dict[str, Any]) -> None:
    """Write weights, tokenizer files and config into a fresh directory and swap it in whole
    (`hookgpt.atomic.atomic_directory`): at every instant `directory` holds the old model or the
    new one, complete; files of an older model (a stray `vocab.json`) never survive, files that
    are not the model's (`notes.txt`) do."""
    with atomic_directory(directory, replaced=is_model_file) as tmp:
        write_safetensors(state_dict, tmp / WEIGHTS_FILE)
        _copy_tokenizer_files(model, tmp)
        _write_json(config, tmp / CONFIG_FILE)


def save_pretrained(model: HookedGPT, directory: PathLike) -> None:
    """Save in hookgpt's format: `model.safetensors` + `config.json` (the `GPTConfig`), plus the
    tokenizer files if the model was loaded with its own. `from_pretrained` reads it back
    bit-exactly."""
    _save(model, directory, model.state_dict(), model.cfg.to_dict())


def save_hf_pretrained(model: HookedGPT, directory: PathLike) -> None:
    """Save as a Hugging Face GPT-2 checkpoint (`config.json` + `model.safetensors`) that
    `transformers.GPT2LMHeadModel.from_pretrained` loads. Raises for models GPT-2 cannot express
    (attention-only, a non-zero unembedding bias, e.g. after `fold_ln`)."""
    config = config_to_hf(model.cfg)
    config["dtype"] = str(model.cfg.dtype).replace("torch.", "")
    state_dict = to_hf_state_dict(model)
    if model.cfg.tie_embeddings:
        del state_dict["lm_head.weight"]  # the same tensor as wte; transformers ties it back
    _save(model, directory, state_dict, config)


