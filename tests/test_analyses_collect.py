"""Collecting activations to safetensors shards and reading them back."""

import os

import numpy as np
import pytest
import torch

from analyses.collect import _stop_layer, collect_activations, iter_activation_shards, load_activations
from hookgpt import GPTConfig, HookedGPT
from helpers import no_hooks

NAMES = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_pattern"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return HookedGPT(GPTConfig(n_layers=3, d_model=64, n_heads=4, d_vocab=1000, n_ctx=64)).eval()


@pytest.fixture(scope="module")
def data():
    return torch.randint(0, 1000, (23, 10), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def expected(model, data):
    with torch.no_grad():
        _, cache = model.run_with_cache(data)
    return cache


def test_shards_hold_the_activations(model, data, expected, tmp_path):
    paths = collect_activations(model, data, NAMES, tmp_path, batch_size=4, rows_per_shard=10)
    assert [p.name for p in paths] == [f"activations-0000{i}.safetensors" for i in range(3)]
    assert sorted(os.listdir(tmp_path)) == [p.name for p in paths]  # no temporary files left
    acts = load_activations(tmp_path)
    assert set(acts) == set(NAMES) | {"tokens", "row_index"}
    assert torch.equal(acts["tokens"], data) and torch.equal(acts["row_index"], torch.arange(23))
    for name in NAMES:
        assert torch.allclose(acts[name], expected[name], atol=1e-5)
    shards = list(iter_activation_shards(paths, names=["blocks.0.hook_resid_post"]))
    assert [s["tokens"].shape[0] for s in shards] == [10, 10, 3]
    assert set(shards[0]) == {"blocks.0.hook_resid_post", "tokens", "row_index"}
    assert no_hooks(model)


def test_token_file_memmap_and_ranks(model, data, expected, tmp_path, monkeypatch):
    token_file = tmp_path / "tokens.bin"
    data.numpy().astype(np.uint16).tofile(token_file)
    out = tmp_path / "acts"
    all_paths = []
    for rank in range(3):  # as torchrun would start them
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "3")
        all_paths += collect_activations(model, token_file, "ln_final.hook_normalized", out, seq_len=10, batch_size=3, rows_per_shard=4)
    assert len(all_paths) == 6 and all("-rank00" in p.name for p in all_paths)
    acts = load_activations(out)
    assert torch.equal(acts["row_index"], torch.arange(23))
    assert torch.allclose(acts["ln_final.hook_normalized"], expected["ln_final.hook_normalized"], atol=1e-5)
    # a memmap of rows works the same, here read as float16
    rows = np.memmap(token_file, dtype=np.uint16, mode="r").reshape(23, 10)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    paths = collect_activations(model, rows, "hook_embed", tmp_path / "half", dtype=torch.float16)
    half = load_activations(paths)["hook_embed"]
    assert half.dtype == torch.float16 and torch.allclose(half.float(), expected["hook_embed"], atol=1e-3)


def test_resume_skips_finished_shards(model, data, tmp_path):
    paths = collect_activations(model, data, NAMES, tmp_path, rows_per_shard=10)
    stamp = [p.stat().st_mtime_ns for p in paths]
    paths[1].unlink()  # as if interrupted while writing shard 1
    again = collect_activations(model, data, NAMES, tmp_path, rows_per_shard=10)
    assert again == paths and [paths[0].stat().st_mtime_ns, paths[2].stat().st_mtime_ns] == [stamp[0], stamp[2]]
    # different names: the old shards are not taken for the new ones
    collect_activations(model, data, "hook_embed", tmp_path, rows_per_shard=10)
    assert set(load_activations(tmp_path)) == {"hook_embed", "tokens", "row_index"}


def test_stops_after_the_last_needed_layer(model):
    assert _stop_layer(model, ["hook_embed", "blocks.1.attn.hook_z"]) == 2
    assert _stop_layer(model, ["hook_pos_embed"]) == 0
    assert _stop_layer(model, ["blocks.0.hook_resid_pre", "ln_final.hook_scale"]) is None


def test_errors(model, data, tmp_path):
    with pytest.raises(ValueError, match="selects no hook"):
        collect_activations(model, data, lambda name: False, tmp_path)
    with pytest.raises(ValueError, match="seq_len"):
        collect_activations(model, tmp_path / "tokens.bin", NAMES, tmp_path)
    with pytest.raises(FileNotFoundError):
        load_activations(tmp_path / "empty")
    assert no_hooks(model)
