"""The trainer on an algorithmic task: a fixed table of examples, loss on the answer positions only.

The table here is modular addition mod 7 (49 examples), small enough that every test runs in
a second or two; the shipped `hookgpt-modadd-113` is the same recipe at p = 113.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hookgpt.config import GPTConfig
from hookgpt.datasets import IGNORE, AlgorithmicTask, load_task_table, save_task_table
from hookgpt.model import HookedGPT
from hookgpt.train import CHECKPOINT_NAME, LanguageModelLoss, TrainConfig, TrainingError, load_checkpoint, main, read_log, train

REPO = Path(__file__).resolve().parents[1]
P = 7
MODEL = dict(n_layers=1, d_model=32, n_heads=2, d_mlp=64, d_vocab=P + 1, d_vocab_out=P, n_ctx=3, act_fn="relu",
             normalization_type=None, tie_embeddings=False)


def modadd_table(p: int = P, n_train: int = 24, seed: int = 0):
    a, b = (x.flatten() for x in np.meshgrid(np.arange(p), np.arange(p), indexing="ij"))
    tokens = np.stack([a, b, np.full_like(a, p)], axis=1)
    targets = np.full_like(tokens, IGNORE)
    targets[:, 2] = (a + b) % p
    is_train = np.zeros(p * p, dtype=bool)
    is_train[np.random.default_rng(seed).permutation(p * p)[:n_train]] = True
    return tokens, targets, is_train


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    return save_task_table(tmp_path_factory.mktemp("task") / "modadd7.npz", *modadd_table(), task="modular addition", p=P)


def task_config(out_dir: Path, table: Path, **overrides) -> TrainConfig:
    options = dict(out_dir=str(out_dir), dataset="algorithmic", data=str(table), model=dict(MODEL), batch_size=0, max_steps=6,
                   lr=1e-2, min_lr=1e-2, warmup_steps=2, weight_decay=1.0, decay_embeddings=True, betas=(0.9, 0.98),
                   grad_clip=0.0, freeze=["*.b_*"], eval_interval=3, checkpoint_interval=3, progress=False)
    return TrainConfig(**{**options, **overrides})


def losses(out_dir) -> list[float]:
    return [r["loss"] for r in read_log(Path(out_dir) / "log.jsonl")]


def test_task_table_round_trip_and_batches(table):
    tokens, targets, is_train, meta = load_task_table(table)
    assert meta == {"task": "modular addition", "p": P}
    assert tokens.shape == (49, 3) and int(is_train.sum()) == 24
    full = AlgorithmicTask(tokens, targets, is_train, batch_size=0)
    assert full.rows_per_step == 24 and full.tokens_per_step == 72
    a, b = full.global_batch(0), full.global_batch(5)
    assert np.array_equal(a.tokens, b.tokens)  # full batch: every step the whole training table
    assert ((a.targets != IGNORE) == np.array([False, False, True])).all()  # the answer position only
    assert (a.targets[:, 2] == (a.tokens[:, 0] + a.tokens[:, 1]) % P).all()
    mini = AlgorithmicTask(tokens, targets, is_train, batch_size=8, seed=3)
    one, again, other = mini.global_batch(4), mini.global_batch(4), mini.global_batch(5)
    assert np.array_equal(one.tokens, again.tokens) and not np.array_equal(one.tokens, other.tokens)
    assert len({tuple(r) for r in one.tokens}) == 8  # distinct rows
    train_rows = {tuple(r) for r in tokens[is_train]}
    assert all(tuple(r) in train_rows for r in one.tokens)
    (test,) = mini.eval_batches()
    assert len(test) == 25 and not any(tuple(r) in train_rows for r in test.tokens)


def test_bad_tables_are_refused(tmp_path):
    tokens, targets, is_train = modadd_table()
    with pytest.raises(TrainingError, match="at least one target"):
        save_task_table(tmp_path / "t.npz", tokens, np.full_like(targets, IGNORE), is_train)
        load_task_table(tmp_path / "t.npz")
    with pytest.raises(TrainingError, match="some for testing"):
        load_task_table(save_task_table(tmp_path / "u.npz", tokens, targets, np.ones_like(is_train)))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(TrainingError, match="junk.npz"):
        load_task_table(tmp_path / "junk.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_task_table(tmp_path / "missing.npz")
    with pytest.raises(TrainingError, match="batch_size"):
        AlgorithmicTask(tokens, targets, is_train, batch_size=25)


def test_objective_is_the_cross_entropy_at_the_answer_positions(table):
    tokens, targets, is_train, _ = load_task_table(table)
    torch.manual_seed(0)
    model = HookedGPT(GPTConfig(**MODEL))
    tokens, targets = torch.from_numpy(tokens), torch.from_numpy(targets)
    expected = F.cross_entropy(model(tokens)[:, 2], targets[:, 2])
    assert torch.allclose(LanguageModelLoss(model)(tokens, targets), expected, atol=1e-6)


def test_training_on_a_task_learns_it_and_logs_accuracy(tmp_path, table):
    summary = train(task_config(tmp_path / "run", table, max_steps=150, eval_interval=50, freeze=[]))
    last = read_log(tmp_path / "run" / "log.jsonl")[-1]
    assert last["train_accuracy"] == 1.0  # memorised the 24 training pairs
    assert 0 <= last["val_accuracy"] <= 1 and summary["final_val_accuracy"] == last["val_accuracy"]
    assert last["tokens"] == 150 * 24 * 3


def test_frozen_biases_stay_at_zero_and_decay_reaches_the_embeddings(tmp_path, table):
    summary = train(task_config(tmp_path / "run", table, max_steps=3))
    model = summary["model"]
    biases = {n: p for n, p in model.named_parameters() if n.rsplit(".", 1)[-1].startswith("b_")}
    assert biases and all(not p.requires_grad and (p == 0).all() for p in biases.values())
    with pytest.raises(TrainingError, match="matches no parameter"):
        train(task_config(tmp_path / "bad", table, freeze=["*.nothing"]))


def test_resume_and_accumulation_are_exact_on_a_task(tmp_path, table):
    for batch_size in (0, 8):  # full batch and minibatches
        ref = task_config(tmp_path / f"ref{batch_size}", table, batch_size=batch_size)
        train(ref)
        first = task_config(tmp_path / f"run{batch_size}", table, batch_size=batch_size, max_steps=3)
        train(first)
        resumed = TrainConfig(**{**first.to_dict(), "max_steps": 6})  # a larger max_steps is allowed
        train(resumed, resume=True)
        assert losses(resumed.out_dir) == losses(ref.out_dir)
        a = load_checkpoint(Path(ref.out_dir) / CHECKPOINT_NAME)["model"]
        b = load_checkpoint(Path(resumed.out_dir) / CHECKPOINT_NAME)["model"]
        assert all(torch.equal(a[k], b[k]) for k in a)
        accum = task_config(tmp_path / f"accum{batch_size}", table, batch_size=batch_size, grad_accum=2)
        train(accum)
        np.testing.assert_allclose(losses(accum.out_dir), losses(ref.out_dir), rtol=0, atol=1e-5)


def test_snapshots_along_training(tmp_path, table):
    from safetensors.torch import load_file

    from hookgpt.train import list_snapshots

    summary = train(task_config(tmp_path / "run", table, max_steps=6, snapshot_interval=2))
    steps = [step for step, _ in list_snapshots(tmp_path / "run")]
    assert steps == [0, 2, 4, 6]
    final = load_file(str(list_snapshots(tmp_path / "run")[-1][1]))
    assert all(torch.equal(final[k], v) for k, v in summary["model"].state_dict().items())


@pytest.mark.ddp
def test_ddp_two_processes_match_one_on_a_task(tmp_path, table):
    """2 ranks x 2 micro-steps on minibatches of the table compute the losses of one process."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "config.json"
    cfg = task_config(tmp_path / "unused", table, batch_size=8).to_dict()
    config.write_text(json.dumps({k: v for k, v in cfg.items() if k != "out_dir"}))
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(port), "-m", "hookgpt.train", "--config", str(config), "--out", str(tmp_path / "ddp"),
               "--grad-accum", "2"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert main(["--config", str(config), "--out", str(tmp_path / "single")]) == 0
    np.testing.assert_allclose(losses(tmp_path / "ddp"), losses(tmp_path / "single"), rtol=0, atol=1e-5)
    ddp_log, single_log = read_log(tmp_path / "ddp" / "log.jsonl"), read_log(tmp_path / "single" / "log.jsonl")
    assert ddp_log[-1]["val_accuracy"] == single_log[-1]["val_accuracy"]


@pytest.mark.parametrize("overrides, message", [
    (dict(dataset="algorithmic", data=None), "needs data: the path of a task table"),
    (dict(dataset="tabular"), "dataset must be one of"),
    (dict(dataset="algorithmic", repeat_fraction=0.5), "repeat_fraction applies to text datasets"),
    (dict(dataset="algorithmic", batch_size=-1), "batch_size must be at least 0"),
    (dict(dataset="algorithmic", batch_size=5, grad_accum=2), "divisible"),
])
def test_bad_task_options(tmp_path, table, overrides, message):
    with pytest.raises(TrainingError, match=message):
        train(task_config(tmp_path / "run", table, **overrides))
    assert not (tmp_path / "run").exists()


def test_text_with_repeat_options_needs_the_repeated_kind(tmp_path):
    from hookgpt.train import make_dataset

    with pytest.raises(TrainingError, match="needs dataset='repeated'"):
        make_dataset(TrainConfig(dataset="text", repeat_fraction=0.5), tmp_path)
