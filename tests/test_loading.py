"""Loading and saving checkpoints, HF <-> hookgpt conversion, weight processing, bad input.

Ground truth is Hugging Face's `GPT2LMHeadModel` on the same small random weights.
"""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from hf_utils import GPT2_VOCAB, random_hf_gpt2, real_gpt2_cached, save_random_hf_gpt2
from safetensors.torch import load_file, save_file

from hookgpt import GPTConfig, HookedGPT
from hookgpt import loading
from hookgpt.loading import (
    CheckpointError,
    ModelNotFoundError,
    from_pretrained,
    list_shipped_models,
    process_weights,
    save_hf_pretrained,
    save_pretrained,
)

VOCAB = 1000


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A random tied GPT-2 in HF format, and the HF model."""
    directory = tmp_path_factory.mktemp("hf_tied")
    model = save_random_hf_gpt2(directory, vocab_size=VOCAB)
    return directory, model


@pytest.fixture(scope="module")
def hf_untied_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hf_untied")
    model = save_random_hf_gpt2(directory, vocab_size=VOCAB, tie_word_embeddings=False, n_inner=96, seed=1)
    return directory, model


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, VOCAB, (3, 17), generator=torch.Generator().manual_seed(0))


def hf_logits(hf_model, tokens):
    with torch.no_grad():
        return hf_model(tokens).logits


def log_probs(model, tokens):
    with torch.no_grad():
        return model(tokens).log_softmax(dim=-1)


def copy_checkpoint(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


# ---------------------------------------------------------------------------------------------
# Hugging Face checkpoints in
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["hf_dir", "hf_untied_dir"])
def test_hf_directory_matches_transformers(request, which, tokens):
    directory, hf_model = request.getfixturevalue(which)
    model = from_pretrained(directory)
    assert model.cfg.tie_embeddings == hf_model.config.tie_word_embeddings
    assert model.cfg.d_mlp == (hf_model.config.n_inner or 4 * hf_model.config.n_embd)
    assert model.cfg.model_name == directory.name
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), hf_logits(hf_model, tokens), atol=1e-4, rtol=1e-4)
        hf_loss = hf_model(tokens, labels=tokens).loss
        assert abs(float(model(tokens, return_type="loss")) - float(hf_loss)) < 1e-4


def test_tied_checkpoint_has_no_separate_unembedding(hf_dir):
    model = from_pretrained(hf_dir[0])
    assert "unembed.W_U" not in model.state_dict()
    assert model.unembed.tied and model.W_U.data_ptr() == model.W_E.data_ptr()


def test_loading_builds_on_meta_and_adopts_the_tensors(hf_dir, monkeypatch):
    # no random init (the weights would be written twice), nothing left on the meta device
    monkeypatch.setattr(HookedGPT, "init_weights", lambda self: pytest.fail("init_weights ran while loading"))
    model = from_pretrained(hf_dir[0])
    assert all(not t.is_meta for t in model.state_dict().values())
    assert all(p.requires_grad for p in model.parameters())
    assert model.device == torch.device("cpu")


def test_pytorch_model_bin(hf_dir, tmp_path, tokens):
    src, hf_model = hf_dir
    (tmp_path / "config.json").write_text((src / "config.json").read_text())
    state = dict(hf_model.state_dict())
    state["transformer.h.0.attn.bias"] = torch.ones(1, 1, 64, 64).tril()  # buffer of old checkpoints: ignored
    torch.save(state, tmp_path / "pytorch_model.bin")
    model = from_pretrained(tmp_path)
    torch.testing.assert_close(model(tokens).detach(), hf_logits(hf_model, tokens), atol=1e-4, rtol=1e-4)


def test_sharded_safetensors(tmp_path, tokens):
    hf_model = random_hf_gpt2(vocab_size=VOCAB, seed=3)
    hf_model.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    model = from_pretrained(tmp_path)
    torch.testing.assert_close(model(tokens).detach(), hf_logits(hf_model, tokens), atol=1e-4, rtol=1e-4)


def test_dtype_and_device_arguments(hf_dir, tokens):
    model = from_pretrained(hf_dir[0], dtype=torch.float64, device="cpu")
    assert model.cfg.dtype == torch.float64
    assert all(p.dtype == torch.float64 for p in model.parameters())
    torch.testing.assert_close(model(tokens).float(), hf_logits(hf_dir[1], tokens), atol=1e-4, rtol=1e-4)
    assert from_pretrained(hf_dir[0], dtype="bfloat16").W_E.dtype == torch.bfloat16


def test_tokenizer_from_directory_else_shipped(tmp_path):
    with_files = tmp_path / "with"
    save_random_hf_gpt2(with_files, vocab_size=GPT2_VOCAB, n_embd=16, n_head=2, n_layer=1, tokenizer_files=True)
    model = from_pretrained(with_files)
    assert model.tokenizer._source == str(with_files.resolve())
    assert model.to_str_tokens("Hello world", prepend_bos=False) == ["Hello", " world"]

    without = copy_checkpoint(with_files, tmp_path / "without")
    (without / "vocab.json").unlink()
    (without / "merges.txt").unlink()
    model = from_pretrained(without)
    assert model._tokenizer is None  # falls back to the shipped GPT-2 tokenizer on use
    assert model.tokenizer.encode("Hello world") == [15496, 995]


def test_model_name_from_hf_cache(hf_dir, tmp_path, monkeypatch, tokens):
    """A name that is neither shipped nor a directory resolves through the HF cache (offline)."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someorg--tiny-gpt2"
    copy_checkpoint(hf_dir[0], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = from_pretrained("someorg/tiny-gpt2")
    assert model.cfg.model_name == "someorg/tiny-gpt2"
    torch.testing.assert_close(model(tokens).detach(), hf_logits(hf_dir[1], tokens), atol=1e-4, rtol=1e-4)


def test_shipped_models_come_first(hf_dir, tmp_path, monkeypatch, tokens):
    shipped = tmp_path / "models"
    save_pretrained(from_pretrained(hf_dir[0]), shipped / "tiny-shipped")
    (shipped / "not-a-model").mkdir()
    monkeypatch.setattr(loading, "SHIPPED_DIR", shipped)
    assert list_shipped_models() == ["tiny-shipped"]
    monkeypatch.chdir(tmp_path)
    model = HookedGPT.from_pretrained("tiny-shipped")
    torch.testing.assert_close(model(tokens).detach(), hf_logits(hf_dir[1], tokens), atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not real_gpt2_cached(), reason="no pretrained 'gpt2' in the local Hugging Face cache")
def test_real_gpt2_matches_transformers(monkeypatch):
    from transformers import GPT2LMHeadModel

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = from_pretrained("gpt2")
    hf_model = GPT2LMHeadModel.from_pretrained("gpt2", local_files_only=True).eval()
    tokens = model.to_tokens("The Eiffel Tower is located in the city of")
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), hf_model(tokens).logits, atol=1e-3, rtol=1e-3)
    assert model.generate("The Eiffel Tower is in", max_new_tokens=5, return_type="tokens").shape[1] > 0


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_save_pretrained_round_trip_is_bit_exact(hf_untied_dir, tmp_path, dtype):
    model = from_pretrained(hf_untied_dir[0], dtype=dtype)
    model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary left behind
    loaded = from_pretrained(tmp_path / "ckpt", dtype=None)  # None: keep the saved dtype
    assert loaded.cfg == model.cfg
    sd, loaded_sd = model.state_dict(), loaded.state_dict()
    assert sd.keys() == loaded_sd.keys()
    for k in sd:
        assert sd[k].dtype == loaded_sd[k].dtype and torch.equal(sd[k], loaded_sd[k]), k


def test_save_pretrained_keeps_tokenizer_files(tmp_path):
    src = tmp_path / "src"
    save_random_hf_gpt2(src, vocab_size=GPT2_VOCAB, n_embd=16, n_head=2, n_layer=1, tokenizer_files=True)
    from_pretrained(src).save_pretrained(tmp_path / "out")
    assert {"vocab.json", "merges.txt"} <= {p.name for p in (tmp_path / "out").iterdir()}
    assert from_pretrained(tmp_path / "out").tokenizer._source == str((tmp_path / "out").resolve())


def test_save_over_existing_directory_and_failures_are_atomic(hf_dir, tmp_path, monkeypatch):
    model = from_pretrained(hf_dir[0])
    target = tmp_path / "ckpt"
    model.save_pretrained(target)
    (target / "notes.txt").write_text("mine")
    with torch.no_grad():
        model.embed.W_E.add_(1.0)
    model.save_pretrained(target)  # overwrite in place, leaving other files alone
    assert (target / "notes.txt").read_text() == "mine"
    assert torch.equal(load_file(target / "model.safetensors")["embed.W_E"], model.W_E.detach())
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors", "notes.txt"]

    before = (target / "model.safetensors").read_bytes()

    def broken_save(*args, **kwargs):
        Path(args[1]).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(target)
    assert (target / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors", "notes.txt"]
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(tmp_path / "fresh")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_save_over_the_checkpoint_the_model_was_loaded_from(hf_dir, tmp_path, tokens):
    """The loaded weights are memory-mapped from the file being replaced: os.replace keeps them valid."""
    from_pretrained(hf_dir[0]).save_pretrained(tmp_path / "ckpt")
    model = from_pretrained(tmp_path / "ckpt")
    process_weights(model)
    expected = model(tokens)
    model.save_pretrained(tmp_path / "ckpt")
    assert torch.equal(model(tokens), expected)
    assert torch.equal(from_pretrained(tmp_path / "ckpt")(tokens), expected)


@pytest.mark.parametrize("which", ["hf_dir", "hf_untied_dir"])
def test_save_hf_pretrained_loads_in_transformers(request, which, tmp_path, tokens):
    from transformers import GPT2LMHeadModel

    directory, hf_model = request.getfixturevalue(which)
    model = from_pretrained(directory)
    save_hf_pretrained(model, tmp_path / "hf")
    reloaded = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    assert reloaded.config.tie_word_embeddings == model.cfg.tie_embeddings
    torch.testing.assert_close(hf_logits(reloaded, tokens), hf_logits(hf_model, tokens), atol=1e-5, rtol=1e-5)
    # and back into hookgpt
    torch.testing.assert_close(from_pretrained(tmp_path / "hf")(tokens), model(tokens), atol=1e-5, rtol=1e-5)


def test_save_hf_pretrained_of_processed_model(hf_dir, tmp_path, tokens):
    from transformers import GPT2LMHeadModel

    model = from_pretrained(hf_dir[0], center_writing_weights=True, center_unembed=True)  # b_U stays 0
    save_hf_pretrained(model, tmp_path / "hf")
    reloaded = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    torch.testing.assert_close(hf_logits(reloaded, tokens).log_softmax(-1), log_probs(model, tokens), atol=1e-4, rtol=1e-4)
    folded = from_pretrained(hf_dir[0], fold_ln=True)  # ln_final's bias moved into b_U
    with pytest.raises(ValueError, match="b_U"):
        save_hf_pretrained(folded, tmp_path / "folded")
    assert not (tmp_path / "folded").exists()


# ---------------------------------------------------------------------------------------------
# Weight processing
# ---------------------------------------------------------------------------------------------

PROCESSING = {
    "fold_ln": dict(fold_ln=True, center_writing_weights=False, center_unembed=False),
    "center_writing_weights": dict(fold_ln=False, center_writing_weights=True, center_unembed=False),
    "center_unembed": dict(fold_ln=False, center_writing_weights=False, center_unembed=True),
    "all": dict(fold_ln=True, center_writing_weights=True, center_unembed=True),
}


@pytest.mark.parametrize("which", ["hf_dir", "hf_untied_dir"])
@pytest.mark.parametrize("options", list(PROCESSING))
def test_processing_keeps_log_probs(request, which, options, tokens):
    directory, hf_model = request.getfixturevalue(which)
    model = from_pretrained(directory, **PROCESSING[options])
    expected = hf_logits(hf_model, tokens).log_softmax(dim=-1)
    assert (log_probs(model, tokens) - expected).abs().max() <= 1e-4
    assert not model.cfg.tie_embeddings and not model.unembed.tied  # processing unties
    assert model.cfg.folded_ln == PROCESSING[options]["fold_ln"]
    assert model.cfg.centered_writing_weights == PROCESSING[options]["center_writing_weights"]
    assert model.cfg.centered_unembed == PROCESSING[options]["center_unembed"]


def test_processed_weights_have_the_promised_form(hf_dir, tokens):
    model = from_pretrained(hf_dir[0], fold_ln=True, center_writing_weights=True, center_unembed=True)
    ones = torch.ones(model.cfg.d_model)
    for ln in [b.ln1 for b in model.blocks] + [b.ln2 for b in model.blocks] + [model.ln_final]:
        assert torch.equal(ln.w.detach(), ones) and torch.equal(ln.b.detach(), torch.zeros_like(ones))
    atol = 1e-6
    for W in (model.W_E, model.W_pos, model.W_O, model.b_O, model.W_out, model.b_out):
        assert W.mean(dim=-1).abs().max() < atol  # writing weights: mean zero over d_model
    for W in (model.W_Q, model.W_K, model.W_V):
        assert W.mean(dim=-2).abs().max() < atol  # reading weights centred by folding
    assert model.W_U.mean(dim=-1).abs().max() < atol and model.b_U.mean().abs() < atol
    assert model.W_U.data_ptr() != model.W_E.data_ptr()


def test_processing_then_save_and_reload(hf_dir, tmp_path, tokens):
    model = from_pretrained(hf_dir[0], fold_ln=True, center_writing_weights=True, center_unembed=True)
    model.save_pretrained(tmp_path / "processed")
    config = json.loads((tmp_path / "processed" / "config.json").read_text())
    assert config["folded_ln"] and config["centered_unembed"] and not config["tie_embeddings"]
    reloaded = from_pretrained(tmp_path / "processed")
    assert torch.equal(reloaded(tokens), model(tokens))


def test_process_weights_twice_is_harmless(hf_dir, tokens):
    model = from_pretrained(hf_dir[0])
    expected = log_probs(model, tokens)
    process_weights(model)
    process_weights(model)
    assert (log_probs(model, tokens) - expected).abs().max() <= 1e-4


def test_processing_an_attention_only_model():
    torch.manual_seed(0)
    model = HookedGPT(GPTConfig(n_layers=2, d_model=32, n_heads=4, d_vocab=50, n_ctx=16, attn_only=True, tie_embeddings=True))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith((".b", "b_Q", "b_K", "b_V", "b_O")) or name.endswith(".w"):
                p.add_(0.2 * torch.randn_like(p))
    toks = torch.randint(0, 50, (2, 9))
    expected = log_probs(model, toks)
    process_weights(model)
    assert (log_probs(model, toks) - expected).abs().max() <= 1e-4


# ---------------------------------------------------------------------------------------------
# Bad input: each a clear error naming the file or the keys
# ---------------------------------------------------------------------------------------------


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        from_pretrained(tmp_path / "does-not-exist")
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        from_pretrained("./does-not-exist")


def test_path_to_a_file(hf_dir):
    with pytest.raises(CheckpointError, match="is a file"):
        from_pretrained(hf_dir[0] / "config.json")


def test_missing_config_and_missing_weights(hf_dir, tmp_path):
    (tmp_path / "model.safetensors").write_bytes((hf_dir[0] / "model.safetensors").read_bytes())
    with pytest.raises(FileNotFoundError, match="config.json"):
        from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "config.json").write_text((hf_dir[0] / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no weights.*model.safetensors.*pytorch_model.bin"):
        from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):  # hookgpt format
        (tmp_path / "config.json").write_text(json.dumps(GPTConfig(n_layers=1, d_model=16, n_heads=2).to_dict()))
        from_pretrained(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_safetensors(hf_dir, tmp_path, damage):
    directory = copy_checkpoint(hf_dir[0], tmp_path / "ckpt")
    weights = directory / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00\x01not safetensors" * 20, "empty": b""}[damage])
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*(truncated or corrupt)"):
        from_pretrained(directory)


def test_corrupt_pytorch_bin(hf_dir, tmp_path):
    (tmp_path / "config.json").write_text((hf_dir[0] / "config.json").read_text())
    (tmp_path / "pytorch_model.bin").write_bytes(b"definitely not a zip file" * 10)
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        from_pretrained(tmp_path)


def test_invalid_config_json(hf_dir, tmp_path):
    directory = copy_checkpoint(hf_dir[0], tmp_path / "ckpt")
    (directory / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json is not valid JSON"):
        from_pretrained(directory)
    (directory / "config.json").write_text(json.dumps({"n_layers": 2, "d_model": 64, "colour": "blue"}))
    with pytest.raises(CheckpointError, match="config.json.*colour"):
        from_pretrained(directory)
    (directory / "config.json").write_text(json.dumps({"model_type": "llama", "n_layer": 2}))
    with pytest.raises(CheckpointError, match="config.json.*llama"):
        from_pretrained(directory)
    config = json.loads((hf_dir[0] / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "scale_attn_by_inverse_layer_idx": True}))
    with pytest.raises(CheckpointError, match="config.json.*scale_attn_by_inverse_layer_idx"):
        from_pretrained(directory)
    (directory / "config.json").write_text(json.dumps({**config, "activation_function": "silu"}))
    with pytest.raises(CheckpointError, match="config.json.*silu"):
        from_pretrained(directory)
    del config["n_embd"]
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="config.json.*n_embd"):
        from_pretrained(directory)


def test_hf_config_that_does_not_match_the_weights(hf_dir, tmp_path):
    directory = copy_checkpoint(hf_dir[0], tmp_path / "ckpt")
    config = json.loads((hf_dir[0] / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "n_layer": 3}))
    with pytest.raises(CheckpointError) as info:
        from_pretrained(directory)
    message = str(info.value)
    assert "missing (12)" in message and "h.2.attn.c_attn.weight" in message and "n_layers=3" in message

    (directory / "config.json").write_text(json.dumps({**config, "n_layer": 1, "n_positions": 32}))
    with pytest.raises(CheckpointError) as info:
        from_pretrained(directory)
    message = str(info.value)
    assert "unexpected (12)" in message and "h.1.mlp.c_fc.weight" in message
    assert "wrong shape (1): wpe.weight: checkpoint (64, 64), config needs (32, 64)" in message


def test_hookgpt_config_that_does_not_match_the_weights(hf_dir, tmp_path):
    model = from_pretrained(hf_dir[0])
    model.save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({**config, "d_mlp": 128, "tie_embeddings": False}))
    with pytest.raises(CheckpointError) as info:
        from_pretrained(tmp_path / "ckpt")
    message = str(info.value)
    assert "missing (1): unembed.W_U" in message
    assert "blocks.0.mlp.W_in: checkpoint (64, 256), config needs (64, 128)" in message

    sd = load_file(tmp_path / "ckpt" / "model.safetensors")
    sd["blocks.9.attn.W_Q"] = torch.zeros(1)
    save_file(sd, tmp_path / "ckpt" / "model.safetensors")
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"unexpected \(1\): blocks\.9\.attn\.W_Q"):
        from_pretrained(tmp_path / "ckpt")


def test_unknown_model_name(monkeypatch, tmp_path):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError) as info:
        from_pretrained("no-such-model-xyz")
    message = str(info.value)
    assert "no-such-model-xyz" in message and "shipped models" in message and "Hugging Face cache" in message
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(ModelNotFoundError, match="shipped models"):
        from_pretrained("not a valid repo id!")


def test_process_weights_leaves_other_models_of_the_same_config_alone(tmp_path):
    # Two models built from one config: processing one must not change what the other is.
    cfg = GPTConfig(n_layers=1, d_model=16, n_heads=2, d_vocab=50, n_ctx=8, tie_embeddings=True)
    a, b = HookedGPT(cfg), HookedGPT(cfg)
    loading.process_weights(a)
    assert a.cfg.folded_ln and a.cfg.centered_unembed and not a.cfg.tie_embeddings
    assert b.cfg == cfg and not b.cfg.folded_ln and b.cfg.tie_embeddings
    b.save_pretrained(tmp_path / "b")  # b's checkpoint still loads as the tied model it is
    assert HookedGPT.from_pretrained(tmp_path / "b").cfg.tie_embeddings
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.n_layers = 3
    assert cfg.replace(n_layers=3).n_layers == 3 and cfg.n_layers == 1
