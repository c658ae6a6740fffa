"""GPT-2's vocabulary is read with tiktoken's public loader from a file in tiktoken's own format,
and gives exactly the ids the original OpenAI files give, on every token."""

import gzip
import hashlib
import json
from pathlib import Path

import tiktoken.load

from hookgpt import tokenizer as tok
from hookgpt.tokenizer import GPT2_DATA_DIR, GPT2_TIKTOKEN, GPT2_TIKTOKEN_SHA256, Tokenizer

SOURCE = Path(tok.__file__).read_text(encoding="utf-8")


def original_encoding():
    """GPT-2 built the way hookgpt built it before: from OpenAI's encoder.json and vocab.bpe."""
    vocab = json.loads(gzip.decompress((GPT2_DATA_DIR / "encoder.json.gz").read_bytes()))
    merges = tok._parse_merges_text(gzip.decompress((GPT2_DATA_DIR / "vocab.bpe.gz").read_bytes()).decode("utf-8"))
    encoding, _, token_ids = tok._build_encoding("gpt2-original", vocab, merges, {})
    return encoding, token_ids


def test_the_shipped_file_is_tiktokens_r50k_base():
    assert hashlib.sha256(GPT2_TIKTOKEN.read_bytes()).hexdigest() == GPT2_TIKTOKEN_SHA256
    ranks = tiktoken.load.load_tiktoken_bpe(str(GPT2_TIKTOKEN), expected_hash=GPT2_TIKTOKEN_SHA256)
    assert len(ranks) == 50256 and sorted(ranks.values()) == list(range(50256))


def test_every_token_has_the_same_id_as_with_the_original_files():
    original, token_ids = original_encoding()
    new = Tokenizer.gpt2()._encoding
    assert token_ids == frozenset(range(50257)) and new.n_vocab == original.n_vocab == 50257
    for i in range(50257):
        token = original.decode_single_token_bytes(i)
        assert new.decode_single_token_bytes(i) == token, i
        assert new.encode_single_token(token if i != 50256 else "<|endoftext|>") == i
    text = "".join(chr(c) for c in range(32, 0x2FFF)) + " Hello world, it's 2024!\n\n\tdon't  stop " * 20
    assert new.encode(text, allowed_special="all") == original.encode(text, allowed_special="all")


def test_no_private_tiktoken_attributes():
    for private in ("_mergeable_ranks", "_special_tokens", "_special_token_values", "_core_bpe"):
        assert private not in SOURCE, private
