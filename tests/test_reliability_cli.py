"""The command line under bad arguments: one line on stderr and exit code 2 for every user error,
a quiet exit on a closed pipe, a traceback only for a bug (or with --debug)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from analyses import cli
from analyses.cli import main
from hookgpt import GPTConfig, HookedGPT

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    """A tiny model, a file, a directory and a directory with a broken config."""
    root = tmp_path_factory.mktemp("cli-bad")
    torch.manual_seed(0)
    HookedGPT(GPTConfig(n_layers=2, d_model=32, n_heads=2, d_mlp=64, n_ctx=64, tie_embeddings=True)).save_pretrained(root / "tiny")
    (root / "afile").write_text("x")
    (root / "adir").mkdir()
    (root / "garbage").mkdir()
    (root / "garbage" / "config.json").write_text("{not json")
    return root


BAD = [
    # (argv, a fragment the one-line message must hold); {r} is the fixture's folder, {m} the tiny model
    (["generate", "hi", "-n", "-5"], "max_new_tokens"),
    (["generate", "hi", "--sample", "--temperature", "nan"], "temperature"),
    (["generate", "hi", "--sample", "--top-k", "0"], "top_k"),
    (["generate", "hi", "--sample", "--top-p", "2"], "top_p"),
    (["generate", "hi", "-n", "100000"], "n_ctx"),
    (["generate", "hi", "--device", "gpu"], "device='gpu'"),
    (["generate", "hi", "--model", "{r}/afile"], "is a file"),
    (["generate", "hi", "--model", "{r}/garbage"], "not valid JSON"),
    (["generate", "hi", "--model", "{r}/adir"], "no config.json"),
    (["generate", "hi", "--model", "{r}/missing/model"], "does not exist"),
    (["info", "--model", ""], "model name is empty"),
    (["lens", "hi", "-k", "0"], "k must be"),
    (["lens", "hi", "-k", "100000000"], "k must be"),
    (["lens", "hi", "--out", "{r}/adir"], "{r}/adir"),
    (["lens", "hi", "--out", "{r}/afile/x.html"], "is a file, not a directory"),
    (["heads", "--seq-len", "0"], "seq_len must be >= 1"),
    (["heads", "--seq-len", "-3"], "seq_len"),
    (["heads", "--seq-len", "100000"], "seq_len"),
    (["heads", "--top", "0"], "k must be >= 1"),
    (["heads", "--kinds", "inductoin"], "did you mean"),
    (["heads", "--out", "{r}/adir"], "Is a directory"),
    (["render", "hi", "--layer", "-9"], "layer"),
    (["render", "hi", "--layer", "2"], "layer"),
    (["render", "hi", "--out", "{r}/adir"], "Is a directory"),
    (["demo", "--out", "{r}/afile"], "is a file, not a directory"),
    (["demo", "--max-new-tokens", "-1", "--out", "{r}/demo"], "max_new_tokens"),
    (["patch", "--clean", "a b", "--corrupted", "a", "--answer", " b", "--wrong", " c"], "same number of tokens"),
    (["export", "{r}/afile", "{r}/exported"], "afile"),
    (["export", "{r}/adir", "{r}/exported"], "adir"),
]
if torch.cuda.is_available():
    BAD = [case for case in BAD if "--device" not in case[0]]
else:
    BAD.append((["generate", "hi", "--device", "cuda"], "no CUDA GPU"))


@pytest.mark.parametrize("argv, fragment", BAD, ids=[" ".join(a)[:60] for a, _ in BAD])
def test_every_user_error_is_one_line_and_exit_code_2(capsys, places, argv, fragment):
    argv = [a.replace("{r}", str(places)) for a in argv]
    if argv[0] not in ("export",) and "--model" not in argv:
        argv += ["--model", str(places / "tiny")]
    code = main(argv)
    _, err = capsys.readouterr()
    assert code == 2, err
    assert err.startswith(f"hookgpt {argv[0]}: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert fragment.replace("{r}", str(places)) in err


def test_a_bug_prints_a_traceback_and_exit_code_1(capsys, places, monkeypatch):
    def broken(args):
        return [][1]  # a real bug: IndexError

    monkeypatch.setattr(cli, "cmd_info", broken)
    code = main(["info", "--model", str(places / "tiny")])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" in err and "IndexError" in err and "bug in hookgpt" in err


def test_debug_shows_the_traceback_of_a_user_error(places):
    with pytest.raises(ValueError, match="max_new_tokens"):
        main(["generate", "hi", "-n", "-5", "--model", str(places / "tiny"), "--debug"])


def test_a_closed_pipe_ends_quietly(places):
    """`hookgpt generate --stream | head -c 5`: the reader closes the pipe after 5 bytes, the
    next write fails with EPIPE, and the command ends without a BrokenPipeError traceback."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    command = [sys.executable, "-m", "hookgpt", "generate", "hi", "--stream", "-n", "60", "--model", str(places / "tiny")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=env)
    first = process.stdout.read(5)
    process.stdout.close()  # like `head`: stop reading while generation goes on
    err = process.stderr.read().decode()
    code = process.wait(timeout=300)
    assert first.startswith(b"hi")
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert code == 141  # 128 + SIGPIPE, as a shell reports for `yes | head`
