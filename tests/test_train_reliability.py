"""The trainer under hostile files, faults and misuse (issue 13's trainer items).

- a checkpoint carrying a pickled payload is refused, and the payload never runs;
- a run directory is locked: a second trainer gets an error naming the holder, no lock stays behind;
- resuming refuses changed options that break exact resumption, naming the option;
- a non-finite loss stops the run with the last good checkpoint intact;
- unreadable corpus files and badly typed config values give errors that name them.
"""

import gzip
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hookgpt.train import (
    BUNDLED_CORPUS,
    CHECKPOINT_NAME,
    LOCK_NAME,
    LanguageModelLoss,
    TrainConfig,
    TrainingError,
    build_arg_parser,
    config_from_args,
    export_model,
    load_checkpoint,
    main,
    prepare_data,
    read_log,
    run_lock,
    train,
)

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = dict(n_layers=1, d_model=16, n_heads=2, n_ctx=16)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    with gzip.open(BUNDLED_CORPUS, "rt", encoding="utf-8") as f:
        text = f.read(3000)
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text(text)
    return path


def tiny(out_dir: Path, corpus: Path, **overrides) -> TrainConfig:
    options = dict(out_dir=str(out_dir), data=str(corpus), model=dict(TINY_MODEL), seq_len=8, batch_size=4, max_steps=4, lr=1e-2,
                   min_lr=1e-3, warmup_steps=1, eval_interval=2, eval_batches=1, checkpoint_interval=2, progress=False)
    return TrainConfig(**{**options, **overrides})


# ------------------------------------------------------------------ checkpoints are data, never code


class Payload:
    """Unpickling this would create `marker`: the code a hostile checkpoint would run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_with_a_pickled_payload_is_refused_and_never_runs(tmp_path, corpus):
    cfg = tiny(tmp_path / "run", corpus, max_steps=2)
    train(cfg)
    ckpt = Path(cfg.out_dir) / CHECKPOINT_NAME
    state = torch.load(ckpt, weights_only=True)
    marker = tmp_path / "payload-ran"
    state["train_config"]["note"] = Payload(marker)
    torch.save(state, ckpt)
    attempts = {
        "load": lambda: load_checkpoint(ckpt),
        "resume": lambda: train(TrainConfig(**{**cfg.to_dict(), "max_steps": 3}), resume=True),
        "init_from": lambda: train(tiny(tmp_path / "tuned", corpus, init_from=str(ckpt), model={})),
        "export": lambda: export_model(ckpt, tmp_path / "exported"),
    }
    for name, attempt in attempts.items():
        with pytest.raises(TrainingError, match=r"refusing checkpoint .*weights_only=True"):
            attempt()
        assert not marker.exists(), name


def test_checkpoints_hold_only_tensors_and_plain_data(tmp_path, corpus):
    cfg = tiny(tmp_path / "run", corpus, max_steps=2)
    train(cfg)
    state = torch.load(Path(cfg.out_dir) / CHECKPOINT_NAME, weights_only=True)  # would raise on anything else
    assert state["step"] == 2 and isinstance(state["rng"]["torch"], torch.Tensor)


# ------------------------------------------------------------------ one trainer per run directory


def test_a_second_trainer_on_a_locked_directory_gets_a_clear_error(tmp_path, corpus):
    out = tmp_path / "run"
    with run_lock(out):
        with pytest.raises(TrainingError, match=rf"in use by another trainer \(pid {os.getpid()} on "):
            train(tiny(out, corpus))
        assert (out / LOCK_NAME).exists()
    assert not (out / LOCK_NAME).exists()
    summary = train(tiny(out, corpus))  # free again
    assert summary["steps"] == 4 and not (out / LOCK_NAME).exists()


def test_a_lock_held_by_another_process_names_it_and_dies_with_it(tmp_path, corpus):
    out = tmp_path / "run"
    code = f"import time; from pathlib import Path; from hookgpt.train import run_lock\nwith run_lock(Path({str(out)!r})):\n" \
           "    print('locked', flush=True); time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["--out", str(out), "--data", str(corpus), "--max-steps", "2", "--no-progress"]) == 2
        with pytest.raises(TrainingError, match=f"pid {holder.pid} "):
            train(tiny(out, corpus))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    summary = train(tiny(out, corpus))  # the kernel dropped the dead holder's lock
    assert summary["steps"] == 4 and not (out / LOCK_NAME).exists()


# ------------------------------------------------------------------ resume keeps the run's options


@pytest.mark.parametrize("option, value", [("lr", 0.5), ("batch_size", 8), ("seq_len", 12), ("seed", 7), ("data", "other.txt")])
def test_resume_refuses_options_that_break_exact_resumption(tmp_path, corpus, option, value):
    cfg = tiny(tmp_path / "run", corpus)
    train(TrainConfig(**{**cfg.to_dict(), "max_steps": 2}))
    before = (Path(cfg.out_dir) / CHECKPOINT_NAME).read_bytes()
    with pytest.raises(TrainingError, match=rf"--{option.replace('_', '-')} .* -> "):
        train(TrainConfig(**{**cfg.to_dict(), option: value}), resume=True)
    assert (Path(cfg.out_dir) / CHECKPOINT_NAME).read_bytes() == before


def test_resume_allows_safe_options_and_says_so_in_help(tmp_path, corpus, capsys):
    cfg = tiny(tmp_path / "run", corpus, max_steps=2)
    train(cfg)
    more = TrainConfig(**{**cfg.to_dict(), "max_steps": 4, "eval_interval": 1, "checkpoint_interval": 1,
                          "dataset": "text"})  # the kind the first run implied, now named
    assert train(more, resume=True)["steps"] == 4
    with pytest.raises(TrainingError, match="--max-steps 3 is below the checkpoint's step 4"):
        train(TrainConfig(**{**more.to_dict(), "max_steps": 3}), resume=True)
    assert main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "must stay as they were" in text and "--max-steps" in text and "--eval-interval" in text


# ------------------------------------------------------------------ a non-finite loss stops the run


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, corpus, monkeypatch):
    cfg = tiny(tmp_path / "run", corpus, max_steps=8, checkpoint_interval=2)
    real_forward = LanguageModelLoss.forward
    calls = {"n": 0}

    def forward_going_nan(self, tokens, targets=None, ids=None):
        calls["n"] += 1
        loss = real_forward(self, tokens, targets, ids)
        return loss * float("nan") if calls["n"] == 5 else loss  # step 5

    monkeypatch.setattr(LanguageModelLoss, "forward", forward_going_nan)
    with pytest.raises(TrainingError, match=r"training loss is nan at step 5.*last good checkpoint, step 4"):
        train(cfg)
    state = load_checkpoint(Path(cfg.out_dir) / CHECKPOINT_NAME)
    assert state["step"] == 4 and all(torch.isfinite(v).all() for v in state["model"].values())
    assert [r["step"] for r in read_log(Path(cfg.out_dir) / "log.jsonl")] == [1, 2, 3, 4]
    assert not (Path(cfg.out_dir) / LOCK_NAME).exists()
    monkeypatch.setattr(LanguageModelLoss, "forward", real_forward)
    assert train(cfg, resume=True)["steps"] == 8  # and the run goes on from there


def test_a_negative_layer_norm_eps_fails_on_the_command_line(tmp_path, corpus, capsys):
    config = tmp_path / "nan.json"
    config.write_text(json.dumps({"model": {**TINY_MODEL, "layer_norm_eps": -10.0}, "seq_len": 8, "batch_size": 4, "max_steps": 3}))
    assert main(["--config", str(config), "--out", str(tmp_path / "run"), "--data", str(corpus), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "training loss is nan at step 1" in err and "no checkpoint had been written yet" in err
    assert not (tmp_path / "run" / CHECKPOINT_NAME).exists()


# ------------------------------------------------------------------ bad files and values, named


def test_unreadable_corpus_files_are_named(tmp_path):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("Caf\u00e9 au lait".encode("latin-1"))
    with pytest.raises(TrainingError, match=r"latin1\.txt' is not UTF-8 text"):
        prepare_data(str(latin1), tmp_path / "a")
    broken = tmp_path / "broken.txt.gz"
    whole = gzip.compress(" ".join(str(i * 7919 % 10007) for i in range(3000)).encode())
    broken.write_bytes(whole[: len(whole) // 2])  # cut short
    with pytest.raises(TrainingError, match=r"broken\.txt\.gz' is not a valid \.gz file"):
        prepare_data(str(broken), tmp_path / "b")
    garbage = tmp_path / "garbage.gz"
    garbage.write_bytes(b"this is not gzip at all")
    with pytest.raises(TrainingError, match=r"garbage\.gz' is not a valid \.gz file"):
        prepare_data(str(garbage), tmp_path / "c")


@pytest.mark.parametrize("key, value, expected", [("batch_size", "4", "an integer"), ("lr", "fast", "a number"),
                                                    ("restrict_vocab", 1, "true or false"), ("freeze", "b_*", "a list")])
def test_config_values_of_the_wrong_type_are_named(tmp_path, key, value, expected):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({key: value}))
    with pytest.raises(TrainingError, match=f"training option {key} must be {expected}"):
        config_from_args(build_arg_parser().parse_args(["--config", str(config)]))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("device, message", [("cuda", "no CUDA GPU is available"), ("gpu0", "is not a device")])
def test_a_device_that_is_not_there_is_a_clear_error(tmp_path, corpus, capsys, device, message):
    out = tmp_path / "run"
    assert main(["--out", str(out), "--data", str(corpus), "--device", device, "--no-progress"]) == 2
    assert message in capsys.readouterr().err and not out.exists()
