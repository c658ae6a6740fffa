"""The trainer (hookgpt/train.py), checked against what issue 4 asks of it.

Every run here is tiny (2 layers, d_model 32, n_ctx 32, 16-token rows, a few KB of text) so the
whole file runs in well under a minute and a half on two busy cores. Torch runs single-threaded
in this file and in the subprocesses it starts, so in-process and subprocess runs compute
bit-identical losses.
"""

import gzip
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from hookgpt.config import GPTConfig
from hookgpt.model import HookedGPT
from hookgpt.tokenizer import Tokenizer
from hookgpt.train import (
    BUNDLED_CORPUS,
    CHECKPOINT_NAME,
    EOT,
    LanguageModelLoss,
    TrainConfig,
    TrainingError,
    build_arg_parser,
    config_from_args,
    list_snapshots,
    load_checkpoint,
    load_tokens,
    lr_at,
    main,
    make_dataset,
    make_optimizer,
    prepare_data,
    read_log,
    sinusoidal_positions,
    train,
)

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = dict(n_layers=2, d_model=32, n_heads=2, n_ctx=32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """About 8 KB of Shakespeare (two documents), cut from the bundled corpus."""
    with gzip.open(BUNDLED_CORPUS, "rt", encoding="utf-8") as f:
        text = f.read(8000)
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text(text[:4000] + "\n<|endoftext|>\n" + text[4000:])
    return path


def tiny_config(out_dir: Path, corpus: Path, **overrides) -> TrainConfig:
    options = dict(out_dir=str(out_dir), data=str(corpus), model=dict(TINY_MODEL), seq_len=16, batch_size=8, max_steps=6,
                   lr=1e-2, min_lr=1e-3, warmup_steps=2, eval_interval=3, eval_batches=2, checkpoint_interval=3, progress=False)
    return TrainConfig(**{**options, **overrides})


def losses(log_path) -> list[float]:
    return [r["loss"] for r in read_log(log_path)]


def subprocess_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


# =============================================================================================
# Data
# =============================================================================================


def test_prepare_data_tokenizes_once_and_again_when_the_source_changes(tmp_path, corpus):
    source = tmp_path / "text.txt"
    source.write_text(corpus.read_text())
    data_dir = prepare_data(str(source), tmp_path / "data", val_fraction=0.1)
    files = [data_dir / name for name in ("train.bin", "val.bin", "meta.json")]
    mtimes = [f.stat().st_mtime_ns for f in files]

    # the token files hold the documents, each ending in EOT, split 90/10 within each document
    tokenizer = Tokenizer.gpt2()
    docs = [d.strip("\n") for d in source.read_text().split("<|endoftext|>")]
    expected = [tokenizer.encode(d, allowed_special=set()) + [EOT] for d in docs]
    train_tokens, val_tokens = load_tokens(data_dir, "train"), load_tokens(data_dir, "val")
    assert isinstance(train_tokens, np.memmap) and train_tokens.dtype == np.uint16
    assert len(train_tokens) + len(val_tokens) == sum(map(len, expected))
    assert list(val_tokens[-5:]) == expected[-1][-5:]
    assert list(train_tokens[:5]) == expected[0][:5]
    assert (np.asarray(train_tokens) == EOT).sum() + (np.asarray(val_tokens) == EOT).sum() == len(docs)

    time.sleep(0.01)
    prepare_data(str(source), data_dir, val_fraction=0.1)
    assert [f.stat().st_mtime_ns for f in files] == mtimes, "an unchanged source must not be tokenized again"

    source.write_text(source.read_text() + "\nA new line of verse.")
    prepare_data(str(source), data_dir, val_fraction=0.1)
    assert all(f.stat().st_mtime_ns != m for f, m in zip(files, mtimes)), "a changed source must be tokenized again"
    assert json.loads((data_dir / "meta.json").read_text())["train_tokens"] > len(train_tokens)


def test_prepare_data_from_a_directory(tmp_path, corpus):
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text(corpus.read_text()[:2000])
    (folder / "sub" / "b.md").write_text(corpus.read_text()[2000:4000])
    (folder / "ignored.json").write_text("{}")
    meta_path = prepare_data(str(folder), tmp_path / "data") / "meta.json"
    first = json.loads(meta_path.read_text())
    assert first["train_tokens"] > 500

    (folder / "c.txt").write_text(corpus.read_text()[4000:6000])  # a new file is a new source
    second = json.loads((prepare_data(str(folder), tmp_path / "data") / "meta.json").read_text())
    assert second["fingerprint"] != first["fingerprint"] and second["train_tokens"] > first["train_tokens"]


def test_bundled_corpus_is_the_default(tmp_path):
    data_dir = prepare_data(None, tmp_path)
    train_tokens = load_tokens(data_dir, "train")
    assert len(train_tokens) > 1_000_000
    assert len(load_tokens(data_dir, "val")) > 10_000
    assert int(np.asarray(train_tokens[:100_000]).max()) <= EOT


def test_bad_data_gives_clear_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n <|endoftext|> \n")
    with pytest.raises(TrainingError, match="empty"):
        prepare_data(str(empty), tmp_path / "data")
    assert not (tmp_path / "data" / "train.bin").exists()

    (tmp_path / "no_text").mkdir()
    with pytest.raises(TrainingError, match="no .txt"):
        prepare_data(str(tmp_path / "no_text"), tmp_path / "data")

    missing = tmp_path / "missing.txt"
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        prepare_data(str(missing), tmp_path / "data")


def _fake_datasets_module(rows: list[dict]) -> types.ModuleType:
    class FakeDataset:
        column_names = sorted(rows[0])
        _fingerprint = "fake-" + str(len(rows))

        def __len__(self):
            return len(rows)

        def __getitem__(self, column):
            return [row[column] for row in rows]

    module = types.ModuleType("datasets")
    module.calls = []

    def load_dataset(name, config=None, split=None):
        module.calls.append((name, config, split))
        return FakeDataset()

    module.load_dataset = load_dataset
    return module


def test_hugging_face_dataset_source(tmp_path, corpus, monkeypatch):
    text = corpus.read_text().replace("<|endoftext|>", "")
    fake = _fake_datasets_module([{"text": text[:3000], "id": 0}, {"text": text[3000:6000], "id": 1}])
    monkeypatch.setitem(sys.modules, "datasets", fake)
    data_dir = prepare_data("hf:someone/stories:small", tmp_path / "data")
    assert fake.calls == [("someone/stories", "small", "train")]
    meta = json.loads((data_dir / "meta.json").read_text())
    assert meta["source"] == "hf:someone/stories:small" and meta["train_tokens"] > 1000
    assert (np.asarray(load_tokens(data_dir, "train")) == EOT).sum() + (np.asarray(load_tokens(data_dir, "val")) == EOT).sum() == 2

    no_text = _fake_datasets_module([{"content": "hello"}])
    monkeypatch.setitem(sys.modules, "datasets", no_text)
    with pytest.raises(TrainingError, match="no 'text' column"):
        prepare_data("hf:other", tmp_path / "data2")


def test_hugging_face_source_without_datasets_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(TrainingError, match="pip install datasets"):
        prepare_data("hf:tiny_shakespeare", tmp_path / "data")


def test_real_hugging_face_datasets_on_a_local_folder(tmp_path, corpus):
    pytest.importorskip("datasets", reason="the Hugging Face `datasets` package is not installed")
    folder = tmp_path / "hf_text"
    folder.mkdir()
    (folder / "train.txt").write_text(corpus.read_text())  # load_dataset(folder) reads it with the 'text' builder
    data_dir = prepare_data(f"hf:{folder}", tmp_path / "data")
    assert json.loads((data_dir / "meta.json").read_text())["train_tokens"] > 1000


def test_batches_are_a_function_of_the_step_and_shard_the_global_batch(tmp_path, corpus):
    cfg = tiny_config(tmp_path, corpus, repeat_fraction=0.5)
    dataset = make_dataset(cfg, tmp_path / "data")
    assert dataset.kind == "repeated"
    whole = dataset.global_batch(7)
    assert whole.tokens.shape == (8, 16) and whole.tokens.dtype == np.int64
    np.testing.assert_array_equal(whole.targets[:, :-1], whole.tokens[:, 1:])  # next-token targets
    assert (whole.targets[:, -1] == -100).all()  # the last position predicts nothing
    again = make_dataset(cfg, tmp_path / "data").global_batch(7)  # a new dataset object: the same batch
    assert np.array_equal(whole.tokens, again.tokens)
    assert not np.array_equal(whole.tokens, dataset.global_batch(8).tokens)
    # 2 ranks x 2 micro-steps: micro-step m of rank r holds rows of block m * 2 + r
    blocks = [whole.shard(4, micro * 2 + rank) for micro in range(2) for rank in range(2)]
    assert np.array_equal(np.concatenate([b.tokens for b in blocks]), whole.tokens)
    assert np.array_equal(np.concatenate([b.targets for b in blocks]), whole.targets)


def test_training_objective_is_the_models_loss():
    torch.manual_seed(0)
    model = HookedGPT(GPTConfig(**TINY_MODEL, tie_embeddings=True))
    tokens = torch.randint(0, EOT + 1, (3, 20))
    expected = model(tokens, return_type="loss")
    assert torch.allclose(LanguageModelLoss(model)(tokens), expected, atol=1e-6)
    everything = LanguageModelLoss(model, torch.arange(model.cfg.d_vocab))  # "restricted" to the whole vocabulary
    assert torch.allclose(everything(tokens), expected, atol=1e-5)
    subset = LanguageModelLoss(model, torch.arange(100))  # a smaller softmax: a lower loss, batch ids still included
    assert subset.softmax_ids(tokens[:, 1:]).tolist() == sorted(set(range(100)) | set(tokens[:, 1:].flatten().tolist()))
    assert subset(tokens) < expected


# =============================================================================================
# Optimizer and schedule
# =============================================================================================


def test_weight_decay_groups():
    model = HookedGPT(GPTConfig(**TINY_MODEL, tie_embeddings=False))
    optimizer = make_optimizer(model, TrainConfig(weight_decay=0.1))
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    leaves = lambda group: {names[id(p)].rsplit(".", 1)[-1] for p in group["params"]}
    # nanoGPT's ndim >= 2 rule: the 2-D per-head biases b_Q/b_K/b_V [n_heads, d_head] are decayed too
    # (kept so that checkpoints of runs already under way can be resumed; see make_optimizer)
    assert leaves(decay) == {"W_Q", "W_K", "W_V", "W_O", "W_in", "W_out", "W_U", "b_Q", "b_K", "b_V"}
    assert leaves(no_decay) == {"W_E", "W_pos", "b_O", "b_in", "b_out", "b_U", "w", "b"}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert isinstance(optimizer, torch.optim.AdamW)

    tied = HookedGPT(GPTConfig(**TINY_MODEL, tie_embeddings=True))
    tied_groups = make_optimizer(tied, TrainConfig()).param_groups
    assert sum(len(g["params"]) for g in tied_groups) == len(list(tied.parameters()))  # W_U is W_E: no duplicate


def test_lr_warmup_then_cosine_decay():
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=110)
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(4, cfg) == pytest.approx(5e-4)
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(10, cfg) == pytest.approx(1e-3)
    assert lr_at(60, cfg) == pytest.approx(5.5e-4)  # halfway through the cosine
    assert lr_at(110, cfg) == pytest.approx(1e-4)
    assert lr_at(500, cfg) == pytest.approx(1e-4)
    decay = [lr_at(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    assert lr_at(0, TrainConfig(lr=1e-3, warmup_steps=0, max_steps=100)) == pytest.approx(1e-3)


# =============================================================================================
# The loop
# =============================================================================================


def test_a_run_logs_checkpoints_and_plots(tmp_path, corpus, monkeypatch):
    clip_calls = []
    real_clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda params, max_norm, **kw: clip_calls.append(max_norm) or real_clip(params, max_norm, **kw))
    cfg = tiny_config(tmp_path / "run", corpus, max_steps=6, grad_clip=0.5)
    summary = train(cfg)
    out = Path(cfg.out_dir)

    records = read_log(out / "log.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in records if "val_loss" in r] == [3, 6]
    assert all(np.isfinite(r["loss"]) for r in records) and records[0]["loss"] > 8  # ~ln(50257) at the start
    assert [r["lr"] for r in records] == pytest.approx([lr_at(s, cfg) for s in range(6)])
    assert [r["tokens"] for r in records] == [8 * 16 * s for s in range(1, 7)]
    assert summary["final_train_loss"] == records[-1]["loss"] and summary["final_val_loss"] == records[-1]["val_loss"]
    assert clip_calls == [0.5] * 6

    state = load_checkpoint(out / CHECKPOINT_NAME)
    assert state["step"] == 6 and state["tokens_seen"] == 6 * 8 * 16
    assert {"model", "optimizer", "scheduler", "rng", "train_config", "model_config"} <= set(state)
    assert state["scheduler"]["last_epoch"] == 6 and state["optimizer"]["state"]

    html = (out / "loss.html").read_text()
    assert "train loss" in html and "val loss" in html and "Plotly.newPlot" in html
    assert not [tag for tag in html.split("<script")[1:] if tag.split(">")[0].strip().startswith("src")], "plotly.js must be inlined"
    assert not list(out.rglob("*.tmp"))


def test_grad_clip_zero_skips_clipping(tmp_path, corpus, monkeypatch):
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: pytest.fail("clip_grad_norm_ called with grad_clip=0"))
    train(tiny_config(tmp_path, corpus, max_steps=2, grad_clip=0.0))


def test_seeded_runs_are_identical(tmp_path, corpus):
    a = train(tiny_config(tmp_path / "a", corpus, max_steps=4))
    b = train(tiny_config(tmp_path / "b", corpus, max_steps=4))
    c = train(tiny_config(tmp_path / "c", corpus, max_steps=4, seed=1))
    assert losses(Path(a["log"])) == losses(Path(b["log"]))
    assert losses(Path(a["log"])) != losses(Path(c["log"]))


@pytest.mark.parametrize("restrict", [False, True], ids=["full-softmax", "restrict_vocab+repeats"])
def test_gradient_accumulation_matches_one_big_batch(tmp_path, corpus, restrict):
    extra = dict(restrict_vocab=True, repeat_fraction=0.5) if restrict else {}
    one = train(tiny_config(tmp_path / "one", corpus, grad_accum=1, **extra))
    two = train(tiny_config(tmp_path / "two", corpus, grad_accum=2, **extra))
    np.testing.assert_allclose(losses(Path(two["log"])), losses(Path(one["log"])), rtol=0, atol=1e-5)
    assert two["final_val_loss"] == pytest.approx(one["final_val_loss"], abs=1e-5)


@pytest.mark.parametrize("restrict", [False, True])
def test_bf16_autocast_smoke(tmp_path, corpus, restrict):
    summary = train(tiny_config(tmp_path, corpus, max_steps=3, autocast_dtype="bfloat16", restrict_vocab=restrict))
    assert all(np.isfinite(r["loss"]) for r in summary["history"])
    assert summary["history"][-1]["loss"] < summary["history"][0]["loss"] + 1.0


@pytest.mark.slow  # torch.compile takes minutes on a CPU; run with -m slow
def test_compile_matches_eager(tmp_path, corpus):
    eager = train(tiny_config(tmp_path / "eager", corpus, max_steps=3))
    compiled = train(tiny_config(tmp_path / "compiled", corpus, max_steps=3, compile=True))
    np.testing.assert_allclose(losses(Path(compiled["log"])), losses(Path(eager["log"])), atol=1e-4)


# =============================================================================================
# Interrupting and resuming
# =============================================================================================


def test_ctrl_c_saves_a_checkpoint_and_resume_gives_the_same_losses(tmp_path, corpus, monkeypatch):
    cfg = dict(max_steps=8, checkpoint_interval=3, restrict_vocab=True, repeat_fraction=0.3)
    reference = train(tiny_config(tmp_path / "reference", corpus, **cfg))

    from hookgpt.datasets import RepeatedSequences

    real_global_batch = RepeatedSequences.global_batch

    def global_batch_pressing_ctrl_c(self, step):
        if step == 4:
            signal.raise_signal(signal.SIGINT)  # arrives mid-step, like a real Ctrl-C
        return real_global_batch(self, step)

    monkeypatch.setattr(RepeatedSequences, "global_batch", global_batch_pressing_ctrl_c)
    run = tiny_config(tmp_path / "run", corpus, **cfg)
    stopped = train(run)
    assert stopped["interrupted"] and stopped["steps"] == 5
    assert load_checkpoint(Path(run.out_dir) / CHECKPOINT_NAME)["step"] == 5
    assert not (Path(run.out_dir) / "loss.html").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored

    monkeypatch.setattr(RepeatedSequences, "global_batch", real_global_batch)
    resumed = train(run, resume=True)
    assert not resumed["interrupted"] and resumed["steps"] == 8
    assert [r["step"] for r in resumed["history"]] == [6, 7, 8]
    assert losses(Path(run.out_dir) / "log.jsonl") == losses(Path(reference["log"]))
    assert resumed["final_val_loss"] == reference["final_val_loss"]
    ref_state = load_checkpoint(Path(reference["checkpoint"]))["model"]
    new_state = load_checkpoint(Path(resumed["checkpoint"]))["model"]
    assert all(torch.equal(ref_state[k], new_state[k]) for k in ref_state)


CLI_RUN = ["--n-layers", "2", "--d-model", "32", "--n-heads", "2", "--n-ctx", "32", "--seq-len", "16", "--batch-size", "8",
           "--lr", "0.01", "--warmup-steps", "5", "--eval-interval", "1000", "--eval-batches", "2", "--checkpoint-interval", "5",
           "--no-progress"]


@pytest.fixture(scope="module")
def cli_reference(tmp_path_factory, corpus) -> list[float]:
    """The losses of an uninterrupted 60-step CLI run (in-process)."""
    out = tmp_path_factory.mktemp("reference")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["--data", str(corpus), "--out", str(out), "--max-steps", "60", *CLI_RUN]) == 0
    finally:
        torch.set_num_threads(threads)
    return losses(out / "log.jsonl")


def _start_training(corpus: Path, out: Path, max_steps: int = 60) -> subprocess.Popen:
    argv = [sys.executable, "-m", "hookgpt.train", "--data", str(corpus), "--out", str(out), "--max-steps", str(max_steps), *CLI_RUN]
    return subprocess.Popen(argv, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_until(condition, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"training exited (rc={process.returncode}) before the test could stop it:\n{out}\n{err}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("training made no progress")
        time.sleep(0.005)


def _logged_steps(out: Path) -> int:
    return len(read_log(out / "log.jsonl")) if (out / "log.jsonl").exists() else 0


def test_sigint_to_a_training_process(tmp_path, corpus, cli_reference):
    out = tmp_path / "run"
    process = _start_training(corpus, out)
    _wait_until(lambda: (out / CHECKPOINT_NAME).exists(), process)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    step = load_checkpoint(out / CHECKPOINT_NAME)["step"]
    assert 5 <= step < 60
    assert json.loads(stdout.strip().splitlines()[-1])["interrupted"] is True
    assert "interrupted: checkpoint saved at step" in stdout + stderr
    assert read_log(out / "log.jsonl")[-1]["step"] == step

    assert main(["--data", str(corpus), "--out", str(out), "--max-steps", "60", *CLI_RUN, "--resume"]) == 0
    assert losses(out / "log.jsonl") == cli_reference
    assert not list(out.rglob("*.tmp"))


def test_resume_after_sigkill(tmp_path, corpus, cli_reference):
    out = tmp_path / "run"
    process = _start_training(corpus, out)
    _wait_until(lambda: _logged_steps(out) >= 12, process)  # two checkpoints written, more steps logged
    process.kill()  # SIGKILL: no handler runs, whatever was being written stays half-written
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL

    state = load_checkpoint(out / CHECKPOINT_NAME)  # the last complete checkpoint loads
    assert state["step"] % 5 == 0 and 10 <= state["step"] < 60
    logged = _logged_steps(out)
    assert logged >= state["step"]

    assert main(["--data", str(corpus), "--out", str(out), "--max-steps", "60", *CLI_RUN, "--resume"]) == 0
    assert losses(out / "log.jsonl") == cli_reference
    assert [r["step"] for r in read_log(out / "log.jsonl")] == list(range(1, 61))
    assert not list(out.rglob("*.tmp"))


# =============================================================================================
# Bad input: clear errors, nothing overwritten
# =============================================================================================


@pytest.fixture
def finished_run(tmp_path, corpus) -> TrainConfig:
    cfg = tiny_config(tmp_path / "run", corpus, max_steps=3)
    train(cfg)
    return cfg


def _snapshot(out: Path) -> dict:
    return {p.name: p.read_bytes() for p in (out / CHECKPOINT_NAME, out / "log.jsonl") if p.exists()}


@pytest.mark.parametrize("damage", ["garbage", "truncated", "not-a-checkpoint"])
def test_corrupt_checkpoint_on_resume(finished_run, damage):
    out = Path(finished_run.out_dir)
    ckpt = out / CHECKPOINT_NAME
    if damage == "garbage":
        ckpt.write_bytes(b"this is not a checkpoint" * 10)
    elif damage == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    else:
        torch.save({"weights": torch.zeros(3)}, ckpt)
    before = _snapshot(out)
    longer = TrainConfig(**{**finished_run.to_dict(), "max_steps": 6})
    with pytest.raises(TrainingError, match=str(ckpt)):
        train(longer, resume=True)
    assert _snapshot(out) == before


def test_mismatched_checkpoint_on_resume(finished_run):
    out = Path(finished_run.out_dir)
    before = _snapshot(out)
    other_shape = TrainConfig(**{**finished_run.to_dict(), "max_steps": 6, "model": {**TINY_MODEL, "d_model": 16}})
    with pytest.raises(TrainingError, match="model config"):
        train(other_shape, resume=True)
    assert _snapshot(out) == before


def test_fresh_run_does_not_overwrite_a_checkpoint(finished_run):
    out = Path(finished_run.out_dir)
    before = _snapshot(out)
    with pytest.raises(TrainingError, match="--resume"):
        train(finished_run)
    assert _snapshot(out) == before


def test_resume_without_a_checkpoint(tmp_path, corpus):
    with pytest.raises(FileNotFoundError, match=CHECKPOINT_NAME):
        train(tiny_config(tmp_path / "nothing", corpus), resume=True)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(seq_len=64), "n_ctx=32"),
        (dict(batch_size=6, grad_accum=4), "divisible"),
        (dict(grad_accum=0), "grad_accum"),
        (dict(autocast_dtype="fp16"), "autocast_dtype"),
        (dict(model={**TINY_MODEL, "n_heads": 3}), "bad model config"),
    ],
)
def test_bad_config(tmp_path, corpus, overrides, message):
    with pytest.raises(TrainingError, match=message):
        train(tiny_config(tmp_path / "run", corpus, **overrides))
    assert not (tmp_path / "run" / CHECKPOINT_NAME).exists()


@pytest.mark.parametrize("overrides", [dict(repeat_fraction=1.5), dict(repeat_corpus_fraction=-0.1), dict(repeat_vocab_size=1)])
def test_bad_repeat_options(tmp_path, corpus, overrides):
    with pytest.raises(TrainingError, match="must be in"):
        train(tiny_config(tmp_path / "run", corpus, **overrides))


def test_repeat_corpus_fraction_picks_what_is_repeated(tmp_path, corpus):
    tokens = load_tokens(prepare_data(str(corpus), tmp_path / "data"), "train")
    seen = {}
    for fraction in (0.0, 1.0):
        cfg = tiny_config(tmp_path, corpus, repeat_fraction=1.0, repeat_corpus_fraction=fraction, batch_size=32,
                          repeat_min_period=4, repeat_max_period=8)
        rows = make_dataset(cfg, tmp_path / "data").global_batch(3).tokens
        text = tokens.tobytes()
        # a repeated corpus span is a piece of the corpus; 4 random ids out of 50,257 are not
        seen[fraction] = [rows[i, :4].astype(np.uint16).tobytes() in text for i in range(len(rows))]
        for row in rows:  # every row repeats its first `period` tokens
            period = next(p for p in range(4, 9) if (row[p:] == row[:-p]).all())
            assert period <= 8
    assert not any(seen[0.0]) and all(seen[1.0])
    small = tiny_config(tmp_path, corpus, repeat_fraction=1.0, repeat_corpus_fraction=0.0, repeat_vocab_size=50, batch_size=32)
    assert make_dataset(small, tmp_path / "data").global_batch(3).tokens.max() < 50
    from_data = tiny_config(tmp_path, corpus, repeat_fraction=1.0, repeat_corpus_fraction=0.0, repeat_from_data=True, batch_size=32)
    drawn = make_dataset(from_data, tmp_path / "data").global_batch(3).tokens
    assert set(drawn.flatten().tolist()) <= set(tokens.tolist()) - {EOT}  # random units of the data's own ids
    assert len(set(drawn.flatten().tolist())) > 50
    with pytest.raises(TrainingError, match="repeat_from_data"):
        train(tiny_config(tmp_path / "both", corpus, repeat_fraction=1.0, repeat_from_data=True, repeat_vocab_size=50))


def test_repeat_layout_two_copies_puts_two_copies_anywhere_in_the_text(tmp_path, corpus):
    """repeat_layout="two_copies": the row is its text window except for two copies of a random
    unit at a random offset, so first copies start beyond max_period too (with "fill" never)."""
    options = dict(repeat_fraction=1.0, repeat_corpus_fraction=0.0, batch_size=64, seq_len=32, repeat_min_period=3,
                   repeat_max_period=6, dataset="repeated")
    rows = make_dataset(tiny_config(tmp_path, corpus, **options, repeat_layout="two_copies"), tmp_path / "data").global_batch(5).tokens
    windows = make_dataset(tiny_config(tmp_path, corpus, **{**options, "repeat_fraction": 0.0}), tmp_path / "data").global_batch(5).tokens
    starts = []
    for row, window in zip(rows, windows):
        changed = np.nonzero(row != window)[0]
        start, period = int(changed.min()), (int(changed.max()) - int(changed.min()) + 1) // 2
        assert 3 <= period <= 6 and start + 2 * period <= 32
        assert (row[start:start + period] == row[start + period:start + 2 * period]).all()
        assert (row[:start] == window[:start]).all() and (row[start + 2 * period:] == window[start + 2 * period:]).all()
        starts.append(start)
    assert min(starts) <= 3 and max(starts) >= 20  # anywhere in the row
    with pytest.raises(TrainingError, match="repeat_layout must be one of"):
        train(tiny_config(tmp_path / "bad", corpus, repeat_fraction=1.0, repeat_layout="three_copies"))


def test_softmax_restricted_to_the_batch(tmp_path, corpus):
    """restrict_vocab_to_batch: the softmax runs over the step's targets alone, and it trains."""
    model = HookedGPT(GPTConfig(**TINY_MODEL, tie_embeddings=True))
    tokens = torch.randint(0, 300, (3, 20))
    batch_only = LanguageModelLoss(model, torch.empty(0, dtype=torch.long))
    ids = batch_only.softmax_ids(tokens[:, 1:])
    assert ids.tolist() == sorted(set(tokens[:, 1:].flatten().tolist()))
    logits = model(tokens)[:, :-1][..., ids]
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), torch.searchsorted(ids, tokens[:, 1:].flatten()))
    assert torch.allclose(batch_only(tokens), expected, atol=1e-5)
    summary = train(tiny_config(tmp_path / "run", corpus, repeat_fraction=1.0, restrict_vocab_to_batch=True, max_steps=4))
    assert summary["steps"] == 4 and math.isfinite(summary["final_train_loss"])
    with pytest.raises(TrainingError, match="exclude each other"):
        train(tiny_config(tmp_path / "both", corpus, restrict_vocab=True, restrict_vocab_to_batch=True))


def test_sinusoidal_positions_are_the_same_rotation_at_every_position():
    """Vaswani et al.'s table at init_range's size: the Gram matrix depends only on the offset
    (so a head that attends one position back does so everywhere), and the values are known."""
    table = sinusoidal_positions(128, 64, init_range=0.02)
    assert table.shape == (128, 64)
    assert float(table.pow(2).mean().sqrt()) == pytest.approx(0.02, rel=1e-6)
    scale = 0.02 * math.sqrt(2)
    assert torch.allclose(table[0, 0::2], torch.zeros(32)) and torch.allclose(table[0, 1::2], torch.full((32,), scale))
    assert table[3, 2] == pytest.approx(scale * math.sin(3 / 10000 ** (2 / 64)), rel=1e-5)
    gram = table.double() @ table.double().T
    assert torch.allclose(gram[1:, 1:], gram[:-1, :-1], atol=1e-9)  # Toeplitz: <P[i], P[j]> is a function of i - j
    assert not torch.allclose(gram[0, 1], gram[0, 2])
    assert sinusoidal_positions(10, 7).shape == (10, 7)  # odd widths: the last coordinate is a sine
    # uniform spacing (pos_init="fourier"): positions closer than 2 * n_pairs = 64 apart are orthogonal
    fourier = sinusoidal_positions(128, 64, init_range=0.02, spacing="uniform").double()
    gram = fourier @ fourier.T
    offset = torch.arange(128)[:, None] - torch.arange(128)[None, :]
    near = offset.abs() < 64
    torch.testing.assert_close(gram[near], torch.where(offset[near] == 0, 64 * 0.02**2, 0.0).double(), atol=1e-8, rtol=0)
    with pytest.raises(ValueError, match="spacing"):
        sinusoidal_positions(8, 8, spacing="linear")


def initial_positions(run_dir) -> torch.Tensor:
    step, path = list_snapshots(run_dir)[0]
    assert step == 0
    return safetensors.torch.load_file(str(path))["pos_embed.W_pos"]


def test_pos_init_sets_the_initial_positions(tmp_path, corpus):
    train(tiny_config(tmp_path / "run", corpus, pos_init="sinusoidal", max_steps=1, snapshot_interval=1))
    expected = sinusoidal_positions(TINY_MODEL["n_ctx"], TINY_MODEL["d_model"], GPTConfig(**TINY_MODEL).init_range)
    torch.testing.assert_close(initial_positions(tmp_path / "run"), expected)
    train(tiny_config(tmp_path / "wide", corpus, pos_init="sinusoidal", pos_init_std=0.1, max_steps=1, snapshot_interval=1))
    torch.testing.assert_close(initial_positions(tmp_path / "wide"), expected * 5)
    train(tiny_config(tmp_path / "normal", corpus, pos_init_std=0.5, max_steps=1, snapshot_interval=1))
    assert float(initial_positions(tmp_path / "normal").std()) == pytest.approx(0.5, rel=0.1)
    train(tiny_config(tmp_path / "fourier", corpus, pos_init="fourier", max_steps=1, snapshot_interval=1))
    torch.testing.assert_close(initial_positions(tmp_path / "fourier"),
                               sinusoidal_positions(TINY_MODEL["n_ctx"], TINY_MODEL["d_model"], 0.02, "uniform"))
    with pytest.raises(TrainingError, match="pos_init_std must be positive"):
        train(tiny_config(tmp_path / "negative", corpus, pos_init_std=-1.0))
    with pytest.raises(TrainingError, match="pos_init must be one of"):
        train(tiny_config(tmp_path / "bad", corpus, pos_init="rotary"))
    with pytest.raises(TrainingError, match="initialise W_pos of a fresh model; init_from"):
        train(tiny_config(tmp_path / "both", corpus, pos_init="sinusoidal", init_from=str(tmp_path / "run")))


# =============================================================================================
# init_from: start from trained weights (fine-tuning, curricula)
# =============================================================================================


def final_weights(out_dir) -> dict:
    return load_checkpoint(Path(out_dir) / CHECKPOINT_NAME)["model"]


@pytest.mark.parametrize("source", ["checkpoint", "run_dir", "model_dir"])
def test_init_from_starts_at_the_source_weights(tmp_path, corpus, finished_run, source):
    first = Path(finished_run.out_dir)
    if source == "model_dir":
        from hookgpt.train import export_model

        export_model(first / CHECKPOINT_NAME, tmp_path / "exported", dtype="float32")
        init_from = str(tmp_path / "exported")
    else:
        init_from = str(first / CHECKPOINT_NAME) if source == "checkpoint" else str(first)
    # a learning rate of ~0 leaves the weights where they start: at the source's
    cfg = tiny_config(tmp_path / "second", corpus, init_from=init_from, model={}, lr=1e-30, min_lr=1e-30,
                      weight_decay=0.0, max_steps=2)
    train(cfg)
    start, end = final_weights(first), final_weights(cfg.out_dir)
    assert start.keys() == end.keys()
    for name in start:
        torch.testing.assert_close(end[name], start[name], atol=1e-6, rtol=0)
    # the run's checkpoint records the full model config it trained, so it resumes on its own
    ckpt = load_checkpoint(Path(cfg.out_dir) / CHECKPOINT_NAME)
    assert ckpt["model_config"]["d_model"] == TINY_MODEL["d_model"]


def test_init_from_then_resume_needs_no_source(tmp_path, corpus, finished_run):
    import shutil

    source = tmp_path / "source"
    shutil.copytree(finished_run.out_dir, source)
    cfg = tiny_config(tmp_path / "second", corpus, init_from=str(source), model={}, max_steps=3)
    train(cfg)
    shutil.rmtree(source)
    summary = train(TrainConfig(**{**cfg.to_dict(), "max_steps": 5}), resume=True)
    assert summary["steps"] == 5


def test_init_from_on_the_command_line(tmp_path, corpus, finished_run, capsys):
    out = tmp_path / "tuned"
    assert main(["--init-from", finished_run.out_dir, "--data", str(corpus), "--out", str(out), "--max-steps", "2", *CLI_RUN]) == 0
    assert load_checkpoint(out / CHECKPOINT_NAME)["train_config"]["init_from"] == finished_run.out_dir
    assert main(["--init-from", str(tmp_path / "missing"), "--data", str(corpus), "--out", str(tmp_path / "x"), *CLI_RUN]) == 2
    assert "init_from" in capsys.readouterr().err


def test_init_from_errors(tmp_path, corpus, finished_run):
    out = tmp_path / "second"
    with pytest.raises(TrainingError, match=r"d_model=32.*d_model=48"):
        train(tiny_config(out, corpus, init_from=finished_run.out_dir, model={"d_model": 48}))
    with pytest.raises(TrainingError, match="no-such-model"):
        train(tiny_config(out, corpus, init_from="no-such-model", model={}))
    assert not out.exists()  # nothing written


# =============================================================================================
# Command line
# =============================================================================================


def test_cli_success_and_errors(tmp_path, corpus, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    base = ["--max-steps", "2", *CLI_RUN]
    assert main(["--data", str(empty), "--out", str(tmp_path / "a"), *base]) == 2
    assert "hookgpt train: error:" in capsys.readouterr().err

    assert main(["--data", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "b"), *base]) == 2
    assert "nope.txt" in capsys.readouterr().err

    assert main(["--data", str(corpus), "--out", str(tmp_path / "c"), *base, "--seq-len", "64"]) == 2
    assert "n_ctx=32" in capsys.readouterr().err

    assert main(["--config", str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err

    assert main(["--max-steps", "lots"]) == 2  # argparse rejects it and says why
    assert "--max-steps" in capsys.readouterr().err

    assert main(["--data", str(corpus), "--out", str(tmp_path / "ok"), *base]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["interrupted"] is False
    assert (tmp_path / "ok" / "loss.html").exists()


def test_cli_help(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "hookgpt train" in text and "--resume" in text and "hf:NAME" in text


def test_config_file_and_overrides(tmp_path):
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"max_steps": 7, "lr": 0.5, "model": {"n_layers": 1, "d_model": 32, "n_heads": 2}}))
    cfg = config_from_args(build_arg_parser().parse_args(["--config", str(config), "--lr", "0.1", "--n-ctx", "64"]))
    assert cfg.max_steps == 7 and cfg.lr == 0.1
    assert cfg.model == {"n_layers": 1, "d_model": 32, "n_heads": 2, "n_ctx": 64}


# =============================================================================================
# DistributedDataParallel
# =============================================================================================


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.ddp
@pytest.mark.parametrize(
    "extra, ddp_only",
    [([], []), (["--restrict-vocab", "--repeat-fraction", "0.5"], ["--grad-accum", "2"])],
    ids=["plain", "accum+restrict_vocab+repeats"],
)
def test_ddp_two_processes_match_one(tmp_path, corpus, extra, ddp_only):
    """2 ranks (x 2 micro-steps in the second case) compute the losses of one process on the same global batch."""
    argv = ["--data", str(corpus), "--max-steps", "5", "--eval-interval", "5", *CLI_RUN, *extra]
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "hookgpt.train", "--out", str(out), *argv, *ddp_only]
    result = subprocess.run(command, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    summaries = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1, "only rank 0 reports"

    single = tmp_path / "single"
    assert main(["--out", str(single), *argv]) == 0

    raw = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in raw] == [1, 2, 3, 4, 5], "only rank 0 logs, once per step"
    np.testing.assert_allclose(losses(out / "log.jsonl"), losses(single / "log.jsonl"), rtol=0, atol=1e-5)
    assert raw[-1]["val_loss"] == pytest.approx(read_log(single / "log.jsonl")[-1]["val_loss"], abs=1e-5)
    assert load_checkpoint(out / CHECKPOINT_NAME)["step"] == 5
    assert not list(out.rglob("*.tmp"))
