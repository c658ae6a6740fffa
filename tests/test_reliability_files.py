"""Files under faults and hostile input: checkpoints that point outside their directory,
saves killed at every step or out of disk space, unwritable targets, truncated shards.

The kill tests fork the test process and SIGKILL the child at the n-th call into C the save
makes (counted with `sys.setprofile` over the swap in `hookgpt.atomic`, `shutil`, and the
functions writing each file), for every n until the save completes: a real kill, with no
`finally` or `except` running, at every step.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from hf_utils import GPT2_VOCAB, save_random_hf_gpt2
from safetensors.torch import load_file

from hookgpt import GPTConfig, HookedGPT, atomic, loading
from hookgpt.errors import ArgumentError, CheckpointError
from hookgpt.loading import from_pretrained, save_hf_pretrained, save_pretrained

SMALL = dict(n_layers=1, d_model=16, n_heads=2, d_mlp=32, d_vocab=100, n_ctx=16)


def small_model(seed: int, **overrides) -> HookedGPT:
    torch.manual_seed(seed)
    return HookedGPT(GPTConfig(**{**SMALL, **overrides})).eval()


def weights_of(directory: Path) -> torch.Tensor:
    return from_pretrained(directory).embed.W_E.detach()


# ---------------------------------------------------------------------------------------------
# Paths inside a checkpoint never leave it
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shard_name", ["../outside.safetensors", "{abs}", "link.safetensors"])
def test_sharded_index_naming_a_file_outside_the_checkpoint_is_refused(tmp_path, shard_name):
    ckpt = tmp_path / "ckpt"
    save_hf_pretrained(small_model(0, tie_embeddings=True), ckpt)
    outside = tmp_path / "outside.safetensors"
    (ckpt / "model.safetensors").rename(outside)
    if shard_name == "{abs}":
        shard_name = str(outside)
    if shard_name == "link.safetensors":
        (ckpt / shard_name).symlink_to(outside)
    weight_map = {k: shard_name for k in load_file(outside)}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    with pytest.raises(CheckpointError, match="outside the checkpoint directory") as info:
        from_pretrained(ckpt)
    assert shard_name in str(info.value)


def test_truncated_shard_is_named(tmp_path):
    ckpt = tmp_path / "ckpt"
    save_hf_pretrained(small_model(0, tie_embeddings=True), ckpt)
    (ckpt / "model.safetensors").rename(ckpt / "model-00001-of-00001.safetensors")
    weight_map = {k: "model-00001-of-00001.safetensors" for k in load_file(ckpt / "model-00001-of-00001.safetensors")}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    shard = ckpt / "model-00001-of-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="model-00001-of-00001.safetensors.*truncated or corrupt"):
        from_pretrained(ckpt)


def test_config_values_of_the_wrong_type_are_named(tmp_path):
    ckpt = tmp_path / "ckpt"
    save_pretrained(small_model(0), ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    for field, value, expected in [("n_layers", "1", "an integer"), ("layer_norm_eps", "1e-5", "a number"), ("attn_only", "no", "True or False")]:
        (ckpt / "config.json").write_text(json.dumps({**config, field: value}))
        with pytest.raises(CheckpointError, match=f"config.json.*GPTConfig.{field} must be {expected}, got str"):
            from_pretrained(ckpt)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_device_without_a_gpu(tmp_path):
    save_pretrained(small_model(0), tmp_path / "ckpt")
    with pytest.raises(ArgumentError, match="device='cuda'.*no CUDA GPU"):
        from_pretrained(tmp_path / "ckpt", device="cuda")
    with pytest.raises(ArgumentError, match="device='gpu' is not a torch device"):
        from_pretrained(tmp_path / "ckpt", device="gpu")


# ---------------------------------------------------------------------------------------------
# Saving: the whole model swapped in, old tokenizer files gone, other files kept
# ---------------------------------------------------------------------------------------------


def test_saving_over_a_model_with_its_own_tokenizer_leaves_no_stray_tokenizer_file(tmp_path):
    src = tmp_path / "src"
    save_random_hf_gpt2(src, vocab_size=GPT2_VOCAB, n_embd=16, n_head=2, n_layer=1, tokenizer_files=True)
    target = tmp_path / "ckpt"
    from_pretrained(src).save_pretrained(target)
    assert {"vocab.json", "merges.txt"} <= {p.name for p in target.iterdir()}
    (target / "notes.txt").write_text("mine")
    gpt2_tokenizer_model = small_model(1, d_vocab=GPT2_VOCAB)  # GPT-2's shipped tokenizer: no files
    gpt2_tokenizer_model.save_pretrained(target)
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors", "notes.txt"]
    assert from_pretrained(target).tokenizer._source is None  # the shipped GPT-2 tokenizer, not src's
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "src"]


def _sibling_names(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.iterdir())


SAVE_STEPS = ("_save", "_write_safetensors", "_write_json", "_copy_tokenizer_files")


def watched(code) -> bool:
    """The calls a kill may land on: every system call of the swap (hookgpt.atomic, shutil) and
    of the writing of each file (loading's save functions)."""
    return code.co_filename in (atomic.__file__, shutil.__file__) or (
        code.co_filename == loading.__file__ and code.co_name in SAVE_STEPS
    )


def _save_in_child(model: HookedGPT, target: Path, kill_at: int, two_renames: bool) -> bool:
    """Save in a forked child that SIGKILLs itself at its `kill_at`-th call; True if it died."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            if two_renames:
                atomic._exchange = lambda a, b: False
            calls = 0

            def profile(frame, event, arg):
                nonlocal calls
                if event == "c_call" and watched(frame.f_code):
                    calls += 1
                    if calls == kill_at:
                        os.kill(os.getpid(), signal.SIGKILL)

            sys.setprofile(profile)
            save_pretrained(model, target)
            sys.setprofile(None)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return True
    assert os.WEXITSTATUS(status) == 0
    return False


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("two_renames", [False, True], ids=["renameat2-exchange", "two-renames"])
def test_a_save_killed_at_every_step_leaves_the_old_or_the_new_model(tmp_path, two_renames):
    old, new = small_model(0), small_model(1)
    pristine = tmp_path / "pristine"
    save_pretrained(old, pristine)
    (pristine / "notes.txt").write_text("mine")
    old_weights, new_weights = old.embed.W_E.detach(), new.embed.W_E.detach()
    work = tmp_path / "work"
    work.mkdir()
    target = work / "ckpt"
    outcomes = {"old": 0, "new": 0}
    kill_at = 0
    while True:
        kill_at += 1
        shutil.copytree(pristine, target)
        died = _save_in_child(new, target, kill_at, two_renames)
        if not died:
            break
        if not two_renames:  # the exchange: the directory is never missing, not even for an instant
            assert target.is_dir(), f"killed at step {kill_at}: {_sibling_names(target)}"
        loaded = weights_of(target)  # loading recovers a save killed between two renames
        which = "old" if torch.equal(loaded, old_weights) else "new"
        assert torch.equal(loaded, old_weights if which == "old" else new_weights)
        assert (target / "notes.txt").read_text() == "mine"
        outcomes[which] += 1
        atomic.recover_directory(target)  # what the next save does first
        assert _sibling_names(target) == ["ckpt"], f"killed at step {kill_at}: temporaries left"
        shutil.rmtree(target)
        assert kill_at < 500, "the save never completed"
    assert torch.equal(weights_of(target), new_weights)
    assert _sibling_names(target) == ["ckpt"]
    assert outcomes["old"] > 5 and outcomes["new"] >= 1, outcomes  # kills landed before and after the swap
    print(f"kills survived ({'two renames' if two_renames else 'exchange'}): {kill_at - 1} {outcomes}")


def test_a_save_into_a_directory_another_live_save_is_using_leaves_its_temporaries_alone(tmp_path):
    target = tmp_path / "ckpt"
    save_pretrained(small_model(0), target)
    live = tmp_path / f".ckpt.tmp-{os.getppid()}-abc"  # a live process (our parent)
    live.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".ckpt.tmp-{int(dead.stdout)}-xyz"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"x" * 1000)
    save_pretrained(small_model(1), target)
    assert _sibling_names(target) == sorted([live.name, "ckpt"])


# ---------------------------------------------------------------------------------------------
# A full disk and an unwritable target (a small tmpfs; needs root and mount)
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path):
    def mount(options: str) -> Path:
        point = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
        point.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or 'mount failed'}); needs root")
        mounted.append(point)
        return point

    mounted: list[Path] = []
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def test_enospc_leaves_the_old_model_and_no_temporaries(small_tmpfs):
    disk = small_tmpfs("size=256k")
    target = disk / "ckpt"
    old = small_model(0)
    save_pretrained(old, target)
    big = small_model(1, d_vocab=4000, d_model=32)  # ~0.6 MB of weights: does not fit
    with pytest.raises(OSError) as info:
        save_pretrained(big, target)
    assert info.value.errno == 28 and str(target) in str(info.value) and ".tmp-" not in str(info.value)
    assert torch.equal(weights_of(target), old.embed.W_E.detach())
    assert sorted(p.name for p in disk.iterdir()) == ["ckpt"]
    save_pretrained(small_model(2), target)  # the disk is usable again: nothing was left behind
    assert torch.equal(weights_of(target), small_model(2).embed.W_E.detach())


def test_enospc_while_collecting_names_the_shard_and_leaves_no_temporary(small_tmpfs):
    from analyses.collect import collect_activations

    disk = small_tmpfs("size=64k")
    data = torch.randint(0, 100, (64, 16), generator=torch.Generator().manual_seed(0))
    with pytest.raises(OSError) as info:
        collect_activations(small_model(0), data, "blocks.0.hook_resid_post", disk / "acts", rows_per_shard=64, disable=True)
    assert info.value.errno == 28 and "activations-00000.safetensors" in str(info.value) and ".tmp" not in str(info.value)
    assert list((disk / "acts").iterdir()) == []


def test_truncated_activation_shard_is_named(tmp_path):
    from analyses.collect import collect_activations, load_activations

    data = torch.randint(0, 100, (8, 8), generator=torch.Generator().manual_seed(0))
    paths = collect_activations(small_model(0), data, "hook_embed", tmp_path, rows_per_shard=4, disable=True)
    paths[1].write_bytes(paths[1].read_bytes()[:-50])
    with pytest.raises(ArgumentError, match="activations-00001.safetensors is not a readable safetensors shard"):
        load_activations(tmp_path)


def test_enospc_on_a_single_file_names_the_file(small_tmpfs):
    disk = small_tmpfs("size=64k")
    with pytest.raises(OSError) as info:
        atomic.write_bytes_atomic(disk / "report.html", b"x" * 200_000)
    assert info.value.errno == 28 and "report.html" in str(info.value) and ".tmp" not in str(info.value)
    assert list(disk.iterdir()) == []


def test_unwritable_target_is_named(small_tmpfs, tmp_path):
    read_only = small_tmpfs("ro,size=64k")
    with pytest.raises(OSError) as info:
        save_pretrained(small_model(0), read_only / "ckpt")
    assert str(read_only / "ckpt") in str(info.value) and "Read-only" in str(info.value)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(OSError, match="a-file/ckpt"):
        save_pretrained(small_model(0), tmp_path / "a-file" / "ckpt")
    with pytest.raises(NotADirectoryError, match="it is a file"):
        save_pretrained(small_model(0), tmp_path / "a-file")


# ---------------------------------------------------------------------------------------------
# analyses.collect: shards of another collection are replaced, never mixed in
# ---------------------------------------------------------------------------------------------


def _collected(model, data, out, **kwargs):
    from analyses.collect import collect_activations, load_activations

    collect_activations(model, data, "blocks.0.hook_resid_post", out, rows_per_shard=4, disable=True, **kwargs)
    return load_activations(out)


def _expected(model, data):
    with torch.no_grad():
        _, cache = model.run_with_cache(data, names_filter="blocks.0.hook_resid_post")
    return cache["blocks.0.hook_resid_post"]


@pytest.mark.parametrize("change", ["model with the same name", "dataset", "dtype", "row count"])
def test_collect_never_reuses_shards_of_another_collection(tmp_path, change):
    data = torch.randint(0, 100, (10, 8), generator=torch.Generator().manual_seed(0))
    model = small_model(0)
    out = tmp_path / "acts"
    _collected(model, data, out)
    kwargs = {}
    if change == "model with the same name":
        model = small_model(1)  # same config, model_name "custom": the old metadata could not tell
    elif change == "dataset":
        data = torch.randint(0, 100, (10, 8), generator=torch.Generator().manual_seed(1))
    elif change == "dtype":
        kwargs["dtype"] = torch.float16
    else:
        data = data[:6]  # fewer rows: the old run's last shard must not survive
    acts = _collected(model, data, out, **kwargs)
    assert torch.equal(acts["tokens"], data) and torch.equal(acts["row_index"], torch.arange(data.shape[0]))
    expected = _expected(model, data).to(kwargs.get("dtype", torch.float32))
    assert acts["blocks.0.hook_resid_post"].dtype == expected.dtype
    torch.testing.assert_close(acts["blocks.0.hook_resid_post"], expected, atol=1e-3, rtol=1e-3)


def test_load_activations_refuses_shards_of_two_collections(tmp_path):
    from analyses.collect import collect_activations, load_activations

    data = torch.randint(0, 100, (8, 8), generator=torch.Generator().manual_seed(0))
    a = collect_activations(small_model(0), data, "hook_embed", tmp_path / "a", rows_per_shard=4, disable=True)
    b = collect_activations(small_model(1), data, "hook_embed", tmp_path / "b", rows_per_shard=4, disable=True)
    with pytest.raises(ArgumentError, match="different collections"):
        load_activations([a[0], b[1]])


def test_collect_skips_only_shards_holding_the_same_rows_and_removes_dead_temporaries(tmp_path):
    from analyses.collect import collect_activations

    data = torch.randint(0, 100, (8, 8), generator=torch.Generator().manual_seed(0))
    model = small_model(0)
    paths = collect_activations(model, data, "hook_embed", tmp_path, rows_per_shard=4, disable=True)
    stamps = [p.stat().st_mtime_ns for p in paths]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = tmp_path / f".activations-00001.safetensors.pid{int(dead.stdout)}-abc.tmp"
    leftover.write_bytes(b"x" * 1000)  # a shard write killed half-way
    live = tmp_path / f".activations-00001.safetensors.pid{os.getppid()}-abc.tmp"
    live.write_bytes(b"x")
    again = collect_activations(model, data, "hook_embed", tmp_path, rows_per_shard=4, disable=True)
    assert [p.stat().st_mtime_ns for p in again] == stamps  # same collection, same rows: skipped
    assert not leftover.exists() and live.exists()
