"""`hookgpt sae train|eval|dashboard` end to end on the shipped model (tiny settings)."""

import json

from analyses.cli import main
from analyses.sae import SAE


def test_train_resume_eval_dashboard(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["sae", "train", "--hook", "blocks.0.hook_mlp_out", "--out", str(run), "--d-sae", "128", "--k", "4",
            "--steps", "6", "--batch-size", "256", "--checkpoint-interval", "3", "--quiet", "--seq-len", "32"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 6 and summary["l0"] <= 4
    sae = SAE.from_pretrained(summary["sae_dir"])
    assert sae.cfg.hook_name == "blocks.0.hook_mlp_out" and sae.cfg.d_sae == 128
    assert main(args) == 2 and "already exists" in capsys.readouterr().err
    assert main(args + ["--resume"]) == 0  # nothing left to do: the run had finished
    capsys.readouterr()
    common = ["--rows", "2", "--work-dir", str(tmp_path / "data"), "--seq-len", "32"]
    assert main(["sae", "eval", summary["sae_dir"], *common]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert abs(ev["ce_loss_with_sae_and_error"] - ev["ce_loss_clean"]) < 1e-5
    out = tmp_path / "features.html"
    assert main(["sae", "dashboard", summary["sae_dir"], "--features", "1", "2", "--out", str(out), *common]) == 0
    assert out.stat().st_size > 50_000 and "FeatureBrowser" in out.read_text()
