"""The offline GPT-2 tokenizer, checked against Hugging Face's tokenizer built from the same files."""

import gzip
import json
import pickle
import random
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hookgpt.tokenizer import (
    GPT2_DATA_DIR,
    Tokenizer,
    get_token_position,
    to_single_token,
    to_str_tokens,
    to_string,
    to_tokens,
    to_tokens_with_mask,
)

transformers = pytest.importorskip("transformers")

EOT = 50256

TEXTS = [
    "Hello world",
    " Hello world",
    "",
    " ",
    "a",
    "The quick brown fox jumps over the lazy dog.",
    "don't won't I'm you're we've they'll she'd it's DON'T Don'T",
    "l'amour, rock'n'roll, 'quoted', ''double'' ",
    "naïve café résumé Ångström façade Müller straße",
    "日本語のテキストと中文文本 한국어 텍스트",
    "emoji: 🤗🚀👩‍👩‍👧‍👦 🇫🇷 ❤️ ✨",
    "Ελληνικά, русский текст, עברית, العربية, हिन्दी",
    "numbers 0 1 12 123 1234 12345 3.14159 1e-10 -42 1,000,000 0x1F",
    "   leading and trailing spaces   ",
    "multiple    spaces\tand\ttabs\t\t\nand\n\n\nnewlines\r\n windows\r\n",
    "trailing newline\n",
    "\n\n\n",
    "\t \t \n \u00a0 \u2003 \u3000 ideographic space",
    "def f(x):\n    return x ** 2  # square\n\nclass A:\n\tpass\n",
    'if (a != b && c >= d) { printf("%d\\n", a[i]); } // C',
    "<html><body class=\"x\">&amp; &lt;tag&gt;</body></html>",
    "hello<|endoftext|>world",
    "<|endoftext|><|endoftext|>",
    "zero\u200bwidth\u200djoiner \ufeffBOM combining e\u0301 a\u0308",
    "control \x00\x01\x1b[31m red \x7f chars",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math 𝛼𝛽 ancient 𐌰𐌱 astral",
    "!!!??? ... --- *** ___ ~~~ ``` ''' \"\"\"",
]


def _write_hf_files(directory: Path) -> Path:
    """vocab.json + merges.txt, the Hugging Face names for the shipped encoder.json / vocab.bpe."""
    directory.mkdir(parents=True, exist_ok=True)
    for packed, name in [("encoder.json.gz", "vocab.json"), ("vocab.bpe.gz", "merges.txt")]:
        with gzip.open(GPT2_DATA_DIR / packed, "rb") as src, open(directory / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return directory


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.gpt2()


@pytest.fixture(scope="module")
def hf_files_dir(tmp_path_factory) -> Path:
    return _write_hf_files(tmp_path_factory.mktemp("hf_gpt2_files"))


@pytest.fixture(scope="module")
def hf(hf_files_dir):
    # `from_pretrained(dir)` reads vocab.json + merges.txt in both transformers 4.x and 5.x
    # (5.x ignores the `vocab_file=`/`merges_file=` constructor arguments).
    return transformers.GPT2TokenizerFast.from_pretrained(str(hf_files_dir), local_files_only=True)


def hf_encode(hf, text: str) -> list[int]:
    return hf(text, add_special_tokens=False)["input_ids"]


# ---- the vocabulary ------------------------------------------------------------------------


def test_known_ids(tok):
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode(" Hello world") == [18435, 995]
    assert tok.encode("<|endoftext|>") == [EOT]
    assert tok.encode("<|endoftext|>", allowed_special=()) == [27, 91, 437, 1659, 5239, 91, 29]
    assert tok.vocab_size == len(tok) == 50257
    assert tok.eos_token_id == tok.bos_token_id == tok.pad_token_id == EOT
    assert tok.eos_token == "<|endoftext|>"


def test_shipped_files_are_openai_gpt2():
    import hashlib

    digests = {}
    for name in ("encoder.json.gz", "vocab.bpe.gz"):
        with gzip.open(GPT2_DATA_DIR / name, "rb") as f:
            digests[name] = hashlib.sha256(f.read()).hexdigest()
    assert digests == {
        "encoder.json.gz": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
        "vocab.bpe.gz": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    }
    assert (GPT2_DATA_DIR / "LICENSE").is_file() and (GPT2_DATA_DIR / "README.md").is_file()


def test_gpt2_is_cached_and_fast():
    assert Tokenizer.gpt2() is Tokenizer.gpt2()
    start = time.perf_counter()
    for _ in range(1000):
        Tokenizer.gpt2()
    assert time.perf_counter() - start < 0.5


def test_pickle_roundtrip(tok):
    clone = pickle.loads(pickle.dumps(tok))
    assert clone is tok  # by reference to the cached shipped vocabulary


@pytest.mark.parametrize("text", TEXTS)
def test_matches_huggingface(tok, hf, text):
    ids = tok.encode(text)
    assert ids == hf_encode(hf, text)
    assert tok.decode(ids) == text
    assert tok.encode_batch([text]) == [ids]


def test_encode_batch_matches_encode(tok, hf):
    texts = TEXTS * 3  # long enough to take the threaded path
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts] == [hf_encode(hf, t) for t in texts]
    with pytest.raises(TypeError, match="single str"):
        tok.encode_batch("not a list")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=60))
def test_property_random_unicode_matches_huggingface(tok, hf, text):
    ids = tok.encode(text)
    assert ids == hf_encode(hf, text)
    assert tok.decode(ids) == text


_WHITESPACE_HEAVY = st.text(alphabet=st.sampled_from(list(" \t\n\r\u00a0\u3000aZ1é'.日🤗")), max_size=40)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_WHITESPACE_HEAVY)
def test_property_whitespace_and_contractions_match_huggingface(tok, hf, text):
    assert tok.encode(text) == hf_encode(hf, text)


# ---- decoding ------------------------------------------------------------------------------


def test_decode_accepts_lists_tensors_arrays(tok):
    ids = tok.encode("Hello world")
    for form in (ids, torch.tensor(ids), torch.tensor(ids, dtype=torch.int32), np.array(ids)):
        assert tok.decode(form) == "Hello world"
    assert tok.decode([]) == ""
    assert tok.decode(15496) == "Hello"


def test_decode_rejects_out_of_range_and_bad_dtypes(tok):
    with pytest.raises(ValueError, match=r"50257.*0 to 50256"):
        tok.decode([15496, 50257])
    with pytest.raises(ValueError, match=r"-1.*0 to 50256"):
        tok.decode(torch.tensor([-1, 5]))
    with pytest.raises(ValueError, match="out of range"):
        tok.decode_tokens([10**9])
    with pytest.raises(TypeError, match="integers"):
        tok.decode(torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="to_string"):
        tok.decode(torch.tensor([[1, 2]]))


def test_decode_tokens_partial_utf8(tok):
    text = "é🤗"
    ids = tok.encode(text)
    pieces = tok.decode_tokens(ids)
    assert len(pieces) == len(ids) > 2
    assert any("\ufffd" in p for p in pieces)  # the emoji's bytes are split across tokens
    assert tok.decode(ids) == text


def test_token_to_id_and_back(tok):
    assert tok.token_to_id(" world") == 995
    assert tok.token_to_id(b" world") == 995
    assert tok.token_to_id("<|endoftext|>") == EOT
    assert tok.id_to_token(995) == " world"
    assert tok.id_to_token(EOT) == "<|endoftext|>"
    with pytest.raises(KeyError, match="not a token"):
        tok.token_to_id("Hello world")
    for token_id in random.Random(0).sample(range(tok.vocab_size), 2000):
        token = tok.id_to_token(token_id)
        if "\ufffd" not in token:
            assert tok.token_to_id(token) == token_id


# ---- model-facing helpers ------------------------------------------------------------------


def test_to_tokens_single_string(tok):
    tokens = to_tokens(tok, "Hello world")
    assert tokens.dtype == torch.long
    assert tokens.tolist() == [[EOT, 15496, 995]]
    assert to_tokens(tok, "Hello world", prepend_bos=False).tolist() == [[15496, 995]]
    assert to_tokens(tok, "Hello world", max_length=2).tolist() == [[EOT, 15496]]


def test_to_tokens_padding_and_masks(tok):
    texts = ["Hello world", "Hi"]
    right, right_mask = to_tokens_with_mask(tok, texts)
    assert right.tolist() == [[EOT, 15496, 995], [EOT, 17250, EOT]]
    assert right_mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    left, left_mask = to_tokens_with_mask(tok, texts, padding_side="left")
    assert left.tolist() == [[EOT, 15496, 995], [EOT, EOT, 17250]]
    assert left_mask.tolist() == [[1, 1, 1], [0, 1, 1]]
    assert left_mask.dtype == torch.long
    assert torch.equal(to_tokens(tok, texts, padding_side="left"), left)
    no_bos, no_bos_mask = to_tokens_with_mask(tok, texts, prepend_bos=False)
    assert no_bos.tolist() == [[15496, 995], [17250, EOT]]
    assert no_bos_mask.tolist() == [[1, 1], [1, 0]]


def test_to_tokens_validation(tok):
    with pytest.raises(ValueError, match=r"\['left', 'right'\]"):
        to_tokens(tok, "x", padding_side="middle")
    with pytest.raises(ValueError, match="empty list"):
        to_tokens(tok, [])
    with pytest.raises(ValueError, match="max_length"):
        to_tokens(tok, "x", max_length=0)


def test_to_string(tok):
    assert to_string(tok, torch.tensor([15496, 995])) == "Hello world"
    assert to_string(tok, [15496, 995]) == "Hello world"
    batch = to_tokens(tok, ["Hello world", "Hi"], prepend_bos=False)
    assert to_string(tok, batch) == ["Hello world", "Hi<|endoftext|>"]
    assert to_string(tok, [[15496], [995]]) == ["Hello", " world"]


def test_to_str_tokens(tok):
    assert to_str_tokens(tok, "Hello world") == ["<|endoftext|>", "Hello", " world"]
    assert to_str_tokens(tok, "Hello world", prepend_bos=False) == ["Hello", " world"]
    assert to_str_tokens(tok, torch.tensor([15496, 995])) == ["Hello", " world"]
    assert to_str_tokens(tok, torch.tensor([[15496, 995]])) == ["Hello", " world"]
    assert to_str_tokens(tok, [15496, 995]) == ["Hello", " world"]
    with pytest.raises(ValueError, match="shape"):
        to_str_tokens(tok, torch.zeros(2, 2, dtype=torch.long))


def test_to_single_token(tok):
    assert to_single_token(tok, " world") == 995
    assert to_single_token(tok, "<|endoftext|>") == EOT
    with pytest.raises(ValueError, match=r"2 tokens.*'Hello', ' world'"):
        to_single_token(tok, "Hello world")
    with pytest.raises(ValueError, match="0 tokens"):
        to_single_token(tok, "")


def test_get_token_position(tok):
    text = "The cat sat on the cat mat"
    assert get_token_position(tok, " cat", text) == 2
    assert get_token_position(tok, " cat", text, mode="last") == 6
    assert get_token_position(tok, " cat", text, prepend_bos=False) == 1
    ids = to_tokens(tok, text)[0]
    assert get_token_position(tok, 3797, ids) == 2  # " cat" as an id
    assert get_token_position(tok, " cat", ids, mode="last") == 6
    with pytest.raises(ValueError, match="does not occur"):
        get_token_position(tok, " dog", text)
    with pytest.raises(ValueError, match="mode"):
        get_token_position(tok, " cat", text, mode="middle")
    with pytest.raises(ValueError, match="2 tokens"):
        get_token_position(tok, " cat sat", text)


# ---- Hugging Face directories --------------------------------------------------------------


def test_from_directory_vocab_and_merges(tok, hf_files_dir):
    loaded = Tokenizer.from_directory(hf_files_dir)
    assert loaded.vocab_size == 50257 and loaded.eos_token_id == EOT
    for text in TEXTS:
        assert loaded.encode(text) == tok.encode(text)
    assert Tokenizer.from_directory(str(hf_files_dir))._encoding is loaded._encoding  # cached
    clone = pickle.loads(pickle.dumps(loaded))
    assert clone.encode("Hello world") == [15496, 995]


def test_from_directory_tokenizer_json(tok, hf, tmp_path):
    saved = tmp_path / "saved"
    hf.save_pretrained(str(saved))
    (saved / "vocab.json").unlink(missing_ok=True)
    (saved / "merges.txt").unlink(missing_ok=True)
    assert (saved / "tokenizer.json").is_file()
    loaded = Tokenizer.from_directory(saved)
    assert loaded.vocab_size == 50257 and loaded.eos_token_id == EOT
    for text in TEXTS:
        assert loaded.encode(text) == tok.encode(text)


def _write_tiny_vocab(directory: Path, merges: list[tuple[str, str]], extra: list[str]) -> None:
    from hookgpt.tokenizer import bytes_to_unicode

    directory.mkdir(parents=True, exist_ok=True)
    tokens = list(bytes_to_unicode().values()) + [a + b for a, b in merges] + extra
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (directory / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


TINY_MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("Ġa", "n"), ("Ġan", "d")]


def test_from_directory_small_custom_vocab_matches_huggingface(tmp_path):
    # A stray byte-level entry ("zz", produced by no merge) must decode but never be matched in text.
    _write_tiny_vocab(tmp_path, TINY_MERGES, ["zz", "<|endoftext|>"])
    ours = Tokenizer.from_directory(tmp_path)
    theirs = transformers.GPT2TokenizerFast.from_pretrained(str(tmp_path), local_files_only=True)
    assert ours.vocab_size == len(theirs) == 256 + len(TINY_MERGES) + 2
    assert ours.eos_token_id == theirs.eos_token_id == ours.vocab_size - 1
    for text in ["the cat and the hat", "in the inn<|endoftext|>zz and", " the", "zzz the\n\nand"] + TEXTS:
        assert ours.encode(text) == hf_encode(theirs, text), text
        assert ours.decode(ours.encode(text)) == text
    assert ours.decode([ours.vocab_size - 2]) == "zz"


def test_from_directory_rejects_ids_out_of_merge_order(tmp_path):
    from hookgpt.tokenizer import bytes_to_unicode

    _write_tiny_vocab(tmp_path, TINY_MERGES, ["<|endoftext|>"])
    vocab = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    n_bytes = len(bytes_to_unicode())
    vocab["Ġt"], vocab["he"] = n_bytes + 1, n_bytes  # swap the ids of the first two merges
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    with pytest.raises(ValueError, match="merge priority"):
        Tokenizer.from_directory(tmp_path)


def test_from_directory_missing_files(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json.*vocab\.json.*merges\.txt") as info:
        Tokenizer.from_directory(tmp_path)
    assert str(tmp_path.resolve()) in str(info.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Tokenizer.from_directory(tmp_path / "nope")


# ---- speed (reported, not asserted) --------------------------------------------------------


def _one_megabyte_of_text() -> str:
    """Real-world text available offline: the Python standard library's source, code and prose."""
    import sysconfig

    pieces, size = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        piece = path.read_text(encoding="utf-8", errors="replace")
        pieces.append(piece)
        size += len(piece.encode("utf-8"))
        if size >= 1_000_000:
            break
    return "".join(pieces)


def test_report_encode_speed(tok, capsys):
    text = _one_megabyte_of_text()
    n_bytes = len(text.encode("utf-8"))
    start = time.perf_counter()
    ids = tok.encode(text)
    seconds = time.perf_counter() - start
    assert tok.decode(ids) == text
    with capsys.disabled():
        print(
            f"\n[tokenizer] encoded {n_bytes / 1e6:.2f} MB (Python stdlib source) into {len(ids)} tokens "
            f"in {seconds * 1000:.0f} ms ({n_bytes / 1e6 / seconds:.1f} MB/s)"
        )
