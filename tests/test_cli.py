"""The `hookgpt` command line: every subcommand, on the shipped model and on a tiny random one."""

import json
import math
from html.parser import HTMLParser
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from analyses.cli import main
from hookgpt import GPTConfig, HookedGPT

SHIPPED = "hookgpt-shakespeare"


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = HookedGPT(GPTConfig(n_layers=2, d_model=32, n_heads=2, d_mlp=64, n_ctx=64, tie_embeddings=True))
    path = tmp_path_factory.mktemp("tiny") / "tiny-model"
    model.save_pretrained(str(path))
    return str(path)


@pytest.fixture(params=["shipped", "tiny"])
def model_arg(request, tiny_model_dir):
    return SHIPPED if request.param == "shipped" else tiny_model_dir


def external_resources(page: str) -> list[str]:
    """URLs the page's own tags would fetch (script/link/img/iframe sources); the contents of
    inline scripts are not tags, so library code mentioning URLs does not count."""
    found = []

    class Finder(HTMLParser):
        def handle_starttag(self, tag, attrs):
            for name, value in attrs:
                if name in ("src", "href") and value and value.startswith(("http:", "https:", "//")) and tag != "a":
                    found.append(value)

    Finder().feed(page)
    return found


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_info(capsys, model_arg):
    code, out, _ = run(capsys, "info", "--model", model_arg)
    assert code == 0
    assert "parameters:" in out and "blocks.0.attn.hook_pattern" in out and "n_layers: 2" in out
    code, out, _ = run(capsys, "info", "--model", model_arg, "--all-hooks")
    assert "blocks.1.mlp.hook_post" in out


def test_generate_is_greedy_and_deterministic(capsys, model_arg):
    code, out, _ = run(capsys, "generate", "ROMEO:", "-n", "5", "--model", model_arg)
    assert code == 0 and out.startswith("ROMEO:")
    model = HookedGPT.from_pretrained(model_arg)
    assert out == model.generate("ROMEO:", max_new_tokens=5) + "\n"
    code, sampled, _ = run(capsys, "generate", "ROMEO:", "-n", "5", "--sample", "--seed", "3", "--top-k", "20", "--model", model_arg)
    code, again, _ = run(capsys, "generate", "ROMEO:", "-n", "5", "--sample", "--seed", "3", "--top-k", "20", "--model", model_arg)
    assert code == 0 and sampled == again


def test_generate_stream(capsys, model_arg):
    code, out, _ = run(capsys, "generate", "To be", "-n", "4", "--stream", "--model", model_arg)
    assert code == 0
    model = HookedGPT.from_pretrained(model_arg)
    assert out == model.generate("To be", max_new_tokens=4) + "\n"


def test_lens_and_heads_write_html(capsys, model_arg, tmp_path):
    code, out, _ = run(capsys, "lens", "To be, or not to be", "--model", model_arg, "--out", str(tmp_path / "lens.html"))
    assert code == 0 and "final_post" in out
    html = (tmp_path / "lens.html").read_text()
    assert "hookgptViews.mount" in html
    assert not external_resources(html), "the page must not load anything from the network"
    code, out, _ = run(capsys, "heads", "--model", model_arg, "--out", str(tmp_path / "heads.html"), "--top", "2")
    assert code == 0 and "induction" in out and "previous_token" in out
    assert (tmp_path / "heads.html").stat().st_size > 10_000


def test_patch(capsys, model_arg, tmp_path):
    code, out, _ = run(capsys, "patch", "--model", model_arg, "--clean", "O Romeo, Romeo! wherefore art thou", "--corrupted",
                       "O Henry, Henry! wherefore art thou", "--answer", " Romeo", "--wrong", " Henry", "--out", str(tmp_path / "patch.html"))
    assert code == 0, out
    assert "patching resid_pre" in out and (tmp_path / "patch.html").exists()


def test_render(capsys, model_arg, tmp_path):
    out_file = tmp_path / "attn.html"
    code, out, _ = run(capsys, "render", "the cat sat. the cat sat.", "--layer", "1", "--model", model_arg, "--out", str(out_file))
    assert code == 0 and out_file.exists()
    assert "AttentionHeads" in out_file.read_text()


def test_demo_writes_report(capsys, tmp_path):
    code, out, _ = run(capsys, "demo", "--out", str(tmp_path / "demo"), "--max-new-tokens", "8")
    assert code == 0
    assert "top induction heads" in out and "greedy continuation" in out
    assert "sampled continuation" in out and "copied " in out
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["model"] == SHIPPED and summary["loss_on_prompt"] > 0
    assert isinstance(summary["continuation"], str) and isinstance(summary["sampled_continuation"], str)
    assert summary["sampling"]["seed"] == 0
    # copying a repeated passage: consistency, and that the second copy is predicted from the first
    copy = summary["copy"]
    assert isinstance(copy["passage"], str) and isinstance(copy["continuation"], str) and copy["passage"]
    assert isinstance(copy["tokens_copied"], int) and isinstance(copy["tokens_total"], int)
    assert 0 <= copy["tokens_copied"] <= copy["tokens_total"] and copy["tokens_total"] > 0
    assert f"copied {copy['tokens_copied']}/{copy['tokens_total']} tokens" in out
    assert all(math.isfinite(copy[k]) and copy[k] > 0 for k in ("first_copy_loss", "second_copy_loss"))
    assert copy["second_copy_loss"] < copy["first_copy_loss"]  # the second copy is predictable from the first
    assert 0 <= copy["top1_first_copy"] < copy["top1_second_copy"] <= copy["passage_tokens"]  # measured 4 -> 21 of 41
    assert f"{copy['top1_second_copy']}/{copy['passage_tokens']} tokens of the second copy" in out
    report = (tmp_path / "demo" / "report.html").read_text()
    assert "sampled continuation" in report and "Copying a repeated passage" in report
    assert report.count("hookgptViews.mount") >= 3 and "plotly" in report.lower()
    assert not external_resources(report)
    # the shipped SAE's features most active on the prompt, as a feature browser
    assert "shipped SAE hookgpt-shakespeare-resid-pre-1" in out and 'mount("FeatureBrowser"' in report

    # the same seed samples the same text in another run
    code, _, _ = run(capsys, "demo", "--out", str(tmp_path / "again"), "--max-new-tokens", "8", "--seed", "0")
    assert code == 0
    again = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert again["sampled_continuation"] == summary["sampled_continuation"] and again["copy"] == copy


def test_export_then_load(capsys, tmp_path):
    from hookgpt.train import TrainConfig, train

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("to be or not to be, that is the question. " * 200)
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), data=str(corpus), max_steps=3, seq_len=16, batch_size=4, eval_interval=10,
                      eval_batches=1, progress=False, model=dict(n_layers=1, d_model=16, n_heads=2, n_ctx=32))
    train(cfg)
    code, out, _ = run(capsys, "export", str(tmp_path / "run" / "ckpt.pt"), str(tmp_path / "exported"), "--dtype", "float32")
    assert code == 0
    loaded = HookedGPT.from_pretrained(str(tmp_path / "exported"))
    assert loaded.cfg.n_layers == 1 and loaded.cfg.d_model == 16


@pytest.mark.parametrize(
    "argv, message",
    [
        (["info", "--model", "no-such-model"], "no-such-model"),
        (["generate", "hi", "--model", "hookgpt-shakespear"], "hookgpt-shakespear"),
        (["patch", "--clean", "O Romeo", "--corrupted", "O Henry, Henry", "--answer", " Romeo", "--wrong", " Henry"], "same number of tokens"),
        (["patch", "--clean", "O Romeo", "--corrupted", "O Henry", "--answer", " Romeo and", "--wrong", " Henry"], "not a single token"),
        (["render", "hi", "--layer", "7"], "layer"),
        (["heads", "--kinds", "nonsense"], "unknown scan"),
        (["export", "/nonexistent/ckpt.pt", "/tmp/x"], "/nonexistent/ckpt.pt"),
    ],
)
def test_bad_input_is_one_line_not_a_traceback(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert err.startswith(f"hookgpt {argv[0]}: error:")


def test_bad_arguments_exit_nonzero(capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(["generate", "--max-new-tokens", "many"])
    assert excinfo.value.code == 2
    assert "invalid int value" in capsys.readouterr().err
    assert main([]) == 2


@pytest.mark.parametrize("command", ["demo", "generate", "lens", "heads", "patch", "render", "info", "export", "train"])
def test_help_everywhere(capsys, command):
    try:
        code = main([command, "--help"])
    except SystemExit as exit:  # argparse exits after printing help; `train` returns its code instead
        code = exit.code
    assert code == 0
    assert "usage:" in capsys.readouterr().out


def test_python_dash_m_and_console_script():
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-m", "hookgpt", "--help"], capture_output=True, text=True, cwd=root, timeout=120)
    assert result.returncode == 0 and "demo" in result.stdout
    result = subprocess.run([sys.executable, "-m", "hookgpt", "info", "--model", "nope"], capture_output=True, text=True, cwd=root, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
