"""SAE training under torchrun (2 CPU processes = 1 process on the same global batch) and after SIGKILL."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import perturbed_model

from analyses.collect import collect_activations
from analyses.sae import SAE, read_log
from analyses.sae.cli import main
from analyses.sae.training import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
HOOK = "blocks.1.hook_resid_pre"


def subprocess_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    tokens = torch.randint(0, 1000, (32, 16), generator=torch.Generator().manual_seed(0))
    collect_activations(perturbed_model(), tokens, [HOOK], out, rows_per_shard=8, disable=True)
    return out


def _args(shards, out, *extra):
    return ["train", "--shards", str(shards), "--hook", HOOK, "--out", str(out), "--quiet", *extra]


@pytest.mark.ddp
@pytest.mark.slow  # ~20 s, mostly starting torchrun's processes
@pytest.mark.parametrize("architecture", ["standard", "topk"])
def test_two_processes_train_the_same_sae_as_one(tmp_path, shards, architecture):
    extra = ["--architecture", architecture, "--d-sae", "96", "--k", "6", "--steps", "12", "--batch-size", "128",
             "--lr", "3e-2", "--checkpoint-interval", "4", "--resample-interval", "5", "--dead-steps", "2", "--l1-coefficient", "200"]
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), "-m", "analyses.sae.cli", *_args(shards, out, *extra)]
    done = subprocess.run(command, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert main(_args(shards, tmp_path / "single", *extra)) == 0

    two, one = SAE.from_pretrained(out / "sae"), SAE.from_pretrained(tmp_path / "single" / "sae")
    for name, param in one.state_dict().items():
        assert (two.state_dict()[name] - param).abs().max() <= 1e-5, name
    assert [r["step"] for r in read_log(out)] == list(range(1, 13))  # rank 0 logs, once per step
    assert [r["mse"] for r in read_log(out)] == pytest.approx([r["mse"] for r in read_log(tmp_path / "single")], abs=1e-5)
    if architecture == "standard":
        assert any("resampled" in r for r in read_log(out)), "the run should have exercised resampling"


@pytest.mark.slow
def test_resume_after_sigkill_equals_the_uninterrupted_run(tmp_path, shards):
    extra = ["--architecture", "standard", "--d-sae", "256", "--steps", "300", "--batch-size", "512", "--lr", "3e-3",
             "--checkpoint-interval", "20", "--resample-interval", "50", "--dead-steps", "20", "--lr-decay-steps", "60"]
    assert main(_args(shards, tmp_path / "reference", *extra)) == 0
    out = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "analyses.sae.cli", *_args(shards, out, *extra)], cwd=REPO, env=subprocess_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(read_log(out)) < 45:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "training made no progress"
        time.sleep(0.002)
    process.kill()  # SIGKILL: no handler runs
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    state = load_checkpoint(out / "sae_ckpt.pt")
    assert state["step"] % 20 == 0 and 40 <= state["step"] < 300
    assert main(_args(shards, out, *extra, "--resume")) == 0
    resumed, reference = SAE.from_pretrained(out / "sae"), SAE.from_pretrained(tmp_path / "reference" / "sae")
    for name, param in reference.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], param, atol=0, rtol=0, msg=name)
    assert [r["step"] for r in read_log(out)] == list(range(1, 301))
    assert [r["mse"] for r in read_log(out)] == [r["mse"] for r in read_log(tmp_path / "reference")]
    assert not list(out.rglob("*.tmp"))
    assert json.loads((out / "sae" / "cfg.json").read_text())["d_sae"] == 256


DASHBOARD_SCRIPT = r"""
import json, sys, torch
import torch.distributed as dist
sys.path.insert(0, "tests")
from helpers import perturbed_model
from analyses.sae import SAE, SAEConfig
from analyses.sae.dashboard import feature_dashboards
if "RANK" in __import__("os").environ:
    dist.init_process_group("gloo")
model = perturbed_model()
sae = SAE(SAEConfig(d_in=64, d_sae=64, architecture="topk", k=8, hook_name="blocks.1.hook_resid_pre"), seed=0)
tokens = torch.randint(0, 1000, (12, 16), generator=torch.Generator().manual_seed(0))
d = feature_dashboards(model, sae, tokens, features=[1, 4, 6], n_contexts=5, batch_size=2, disable=True)
if not dist.is_initialized() or dist.get_rank() == 0:
    open(sys.argv[1], "w").write(json.dumps(d.features))
"""


@pytest.mark.ddp
@pytest.mark.slow
def test_dashboards_sharded_over_two_processes_equal_one(tmp_path):
    script = tmp_path / "dash.py"
    script.write_text(DASHBOARD_SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), str(script), str(tmp_path / "two.json")]
    done = subprocess.run(command, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "one.json")], cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    two, one = json.loads((tmp_path / "two.json").read_text()), json.loads((tmp_path / "one.json").read_text())
    for a, b in zip(two, one):
        assert a["feature"] == b["feature"] and a["density"] == pytest.approx(b["density"])
        assert a["histogram"]["counts"] == b["histogram"]["counts"]
        assert a["histogram"]["edges"] == pytest.approx(b["histogram"]["edges"], abs=1e-5)
        assert [c["max"] for c in a["contexts"]] == pytest.approx([c["max"] for c in b["contexts"]], abs=1e-6)
        assert [(c["row"], c["pos"]) for c in a["contexts"]] == [(c["row"], c["pos"]) for c in b["contexts"]]
