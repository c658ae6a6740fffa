"""SAEs on disk in SAELens's layout: hookgpt's own round trip, and one through the real `sae_lens`.

`sae_lens` pins numpy/transformers versions that clash with this project's, so it lives in its own
virtual environment and runs in a subprocess. Its interpreter is `$HOOKGPT_SAELENS_PYTHON`, else
`/work/venvs/saelens/bin/python`; without one, the round-trip tests skip. To make one:

    python -m venv /work/venvs/saelens
    /work/venvs/saelens/bin/pip install torch==2.13.0 && /work/venvs/saelens/bin/pip install sae-lens
"""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from analyses.sae import SAE, SAEConfig, load_sae, save_sae
from analyses.sae.saelens import SAEFormatError

SAELENS_PYTHON = os.environ.get("HOOKGPT_SAELENS_PYTHON", "/work/venvs/saelens/bin/python")


def _random_sae(architecture):
    extra = {"topk": dict(k=5), "jumprelu": dict(jumprelu_init_threshold=0.2)}.get(architecture, {})
    sae = SAE(SAEConfig(d_in=16, d_sae=48, architecture=architecture, hook_name="blocks.1.hook_resid_pre",
                        model_name="hookgpt-shakespeare", context_size=128, **extra), seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in (sae.b_enc, sae.b_dec):
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        if architecture == "jumprelu":
            sae.log_threshold.copy_(torch.rand(48, generator=g).mul(0.3).add(0.05).log())
    return sae


@pytest.mark.parametrize("architecture", ["standard", "topk", "jumprelu"])
def test_save_and_load_round_trip(tmp_path, architecture):
    sae = _random_sae(architecture)
    save_sae(sae, tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["architecture"] == architecture and cfg["d_in"] == 16 and cfg["d_sae"] == 48
    assert cfg["metadata"]["hook_name"] == "blocks.1.hook_resid_pre" and cfg["metadata"]["sae_lens_version"].startswith("6.")
    keys = set(load_file(str(tmp_path / "sae_weights.safetensors")))
    assert keys == {"W_enc", "b_enc", "W_dec", "b_dec"} | ({"threshold"} if architecture == "jumprelu" else set())
    loaded = load_sae(tmp_path)
    assert loaded.cfg == sae.cfg
    x = torch.randn(10, 16)
    torch.testing.assert_close(loaded.encode(x), sae.encode(x), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(loaded(x), sae(x), atol=1e-6, rtol=1e-5)


def test_reads_the_flat_pre_6_layout(tmp_path):
    sae = _random_sae("topk")
    save_file({k: getattr(sae, k).detach().contiguous() for k in ("W_enc", "b_enc", "W_dec", "b_dec")}, str(tmp_path / "sae_weights.safetensors"))
    (tmp_path / "cfg.json").write_text(json.dumps({
        "d_in": 16, "d_sae": 48, "hook_name": "blocks.1.hook_resid_pre", "model_name": "gpt2", "dtype": "torch.float32",
        "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 5}, "apply_b_dec_to_input": True, "context_size": 128,
    }))
    loaded = load_sae(tmp_path)
    assert loaded.cfg.architecture == "topk" and loaded.cfg.k == 5 and loaded.cfg.hook_name == "blocks.1.hook_resid_pre"
    x = torch.randn(4, 16)
    torch.testing.assert_close(loaded(x), sae(x))


def test_unsupported_and_broken_directories_are_clear_errors(tmp_path):
    save_sae(_random_sae("standard"), tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, "normalize_activations": "layer_norm"}))
    with pytest.raises(SAEFormatError, match="normalize_activations"):
        load_sae(tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, "architecture": "gated"}))
    with pytest.raises(SAEFormatError, match="gated"):
        load_sae(tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, "d_sae": 49}))
    with pytest.raises(SAEFormatError, match="shape"):
        load_sae(tmp_path)
    with pytest.raises(FileNotFoundError, match="no SAE"):
        load_sae(tmp_path / "nowhere")


# ----------------------------------------------------------------------------- the real sae_lens

needs_saelens = pytest.mark.skipif(
    not Path(SAELENS_PYTHON).exists(),
    reason=f"no sae_lens interpreter at {SAELENS_PYTHON} (set HOOKGPT_SAELENS_PYTHON; see this file's docstring)",
)

ARCHITECTURES = ["standard", "topk", "jumprelu"]

# One sae_lens process does all the work (importing sae_lens takes seconds): for each architecture
# it loads the SAE hookgpt saved in ours/<arch> and encodes x, and makes one of its own, saves it in
# theirs/<arch> and encodes x, writing the results next to each.
SAELENS_SCRIPT = r"""
import sys, torch
from safetensors.torch import load_file, save_file
from sae_lens import SAE, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig, JumpReLUSAE, JumpReLUSAEConfig
root = sys.argv[1]
x = load_file(root + "/x.safetensors")["x"]

def outputs(sae, path):
    acts = sae.encode(x)
    save_file({"acts": acts.contiguous(), "recons": sae.decode(acts).contiguous()}, path)

for architecture in sys.argv[2:]:
    sae = SAE.load_from_disk(f"{root}/ours/{architecture}")
    assert sae.cfg.architecture() == architecture and sae.cfg.metadata.hook_name == "blocks.1.hook_resid_pre", sae.cfg
    outputs(sae, f"{root}/ours_{architecture}_out.safetensors")

    torch.manual_seed(0)
    cls, cfg = {"standard": (StandardSAE, StandardSAEConfig(d_in=16, d_sae=48)),
                "topk": (TopKSAE, TopKSAEConfig(d_in=16, d_sae=48, k=5)),
                "jumprelu": (JumpReLUSAE, JumpReLUSAEConfig(d_in=16, d_sae=48))}[architecture]
    cfg.metadata.hook_name = "blocks.1.hook_resid_pre"
    sae = cls(cfg)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.rand_like(p) * 0.3 + 0.01 if p.ndim == 1 else torch.randn_like(p) * 0.3)
    sae.save_model(f"{root}/theirs/{architecture}")
    outputs(sae, f"{root}/theirs_{architecture}_out.safetensors")
print("ok")
"""


@pytest.fixture(scope="module")
def exchanged(tmp_path_factory):
    """Run sae_lens once on hookgpt's SAEs, and have it write its own; returns (root, x, our SAEs)."""
    root = tmp_path_factory.mktemp("saelens")
    x = torch.randn(20, 16, generator=torch.Generator().manual_seed(2))
    save_file({"x": x}, str(root / "x.safetensors"))
    ours = {a: _random_sae(a) for a in ARCHITECTURES}
    for architecture, sae in ours.items():
        save_sae(sae, root / "ours" / architecture)
    (root / "side.py").write_text(SAELENS_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run([SAELENS_PYTHON, str(root / "side.py"), str(root), *ARCHITECTURES], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return root, x, ours


@needs_saelens
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_saved_by_hookgpt_loads_in_sae_lens(exchanged, architecture):
    root, x, ours = exchanged
    theirs = load_file(str(root / f"ours_{architecture}_out.safetensors"))
    torch.testing.assert_close(theirs["acts"], ours[architecture].encode(x).detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(theirs["recons"], ours[architecture](x).detach(), atol=1e-5, rtol=0)


@needs_saelens
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_saved_by_sae_lens_loads_in_hookgpt(exchanged, architecture):
    root, x, _ = exchanged
    sae = load_sae(root / "theirs" / architecture)
    assert sae.cfg.architecture == architecture and sae.cfg.hook_name == "blocks.1.hook_resid_pre"
    theirs = load_file(str(root / f"theirs_{architecture}_out.safetensors"))
    torch.testing.assert_close(sae.encode(x).detach(), theirs["acts"], atol=1e-5, rtol=0)
    torch.testing.assert_close(sae(x).detach(), theirs["recons"], atol=1e-5, rtol=0)
    # and back: hookgpt saves it again, and it reads the same
    save_sae(sae, root / "again" / architecture)
    torch.testing.assert_close(load_sae(root / "again" / architecture)(x), sae(x), atol=1e-6, rtol=0)
