"""GPT-2's byte-level BPE tokenizer, fully offline.

GPT-2 turns text into token ids in three steps:

1. A regex splits the text into chunks: a word with its leading space (" world"), a run of
   digits, a run of punctuation, a run of whitespace, or an English contraction ("'t").
2. Each chunk becomes its UTF-8 bytes, so every string is representable (no unknown token).
3. Inside each chunk, adjacent pieces are merged greedily, always applying the highest-priority
   merge first, using the 50000 merges GPT-2 learned on WebText.

GPT-2 gave every merged token the id 256 + its merge index, so a token's id *is* its merge
priority: the whole vocabulary is one table "token bytes -> rank". It ships with the package in
tiktoken's own file format (`hookgpt/data/gpt2/gpt2.tiktoken`, one `base64(bytes) rank` line
per token, byte-for-byte the file tiktoken's `r50k_base` uses), so nothing is downloaded; it is
read with tiktoken's public `load_tiktoken_bpe`, and tiktoken's Rust BPE does the actual work.
(`scripts/make_gpt2_tiktoken.py` derives it from OpenAI's original `encoder.json`/`vocab.bpe`,
kept next to it.)

A Hugging Face tokenizer directory (`vocab.json` + `merges.txt`, or `tokenizer.json`) spells
bytes with GPT-2's "byte-to-unicode" alphabet (a space is "Ġ", a newline "Ċ"); for those we map
the entries back to raw bytes and build the same kind of table.

`Tokenizer` is the vocabulary object. The functions after it (`to_tokens`, `to_string`,
`to_str_tokens`, ...) take the tokenizer as their first argument; the model exposes them as
methods, with the TransformerLens names and defaults.
"""

import contextlib
import functools
import gc
import json
import os
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Literal, Optional, Union

import numpy as np
import tiktoken
import tiktoken.load
import torch
from jaxtyping import Int

from hookgpt.errors import ArgumentError, ArgumentTypeError

# The pre-tokenization regex of GPT-2 (tiktoken's `r50k_pat_str`). It is the same pattern as
# OpenAI's encoder.py / Hugging Face's ByteLevel pre-tokenizer, written with possessive
# quantifiers so the regex engine never backtracks into a word.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""

ENDOFTEXT = "<|endoftext|>"

GPT2_DATA_DIR = Path(__file__).parent / "data" / "gpt2"
GPT2_TIKTOKEN = GPT2_DATA_DIR / "gpt2.tiktoken"
# sha256 of gpt2.tiktoken: the hash tiktoken itself pins for r50k_base (GPT-2's vocabulary).
GPT2_TIKTOKEN_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
GPT2_EOT_ID = 50256

# "left" or "right". Annotated as plain `str` so that a wrong value reaches our own check and
# its ValueError (listing the valid values) instead of a type-checker error.
PaddingSide = str
PADDING_SIDES = ("left", "right")

# Token ids as users hand them to us: a Python list, a torch tensor or a numpy array.
TokenIds = Union[Sequence[int], torch.Tensor, np.ndarray]


# ---------------------------------------------------------------------------------------------
# GPT-2's byte <-> unicode alphabet
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from each of the 256 byte values to a printable unicode character.

    Printable Latin-1 bytes map to themselves; the others (control characters, space, ...) map
    to chr(256), chr(257), ... in order. So b" " is "Ġ" and b"\\n" is "Ċ".
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    byte_to_char = {b: chr(b) for b in printable}
    n_shifted = 0
    for b in range(256):
        if b not in byte_to_char:
            byte_to_char[b] = chr(256 + n_shifted)
            n_shifted += 1
    return byte_to_char


@functools.lru_cache(maxsize=None)
def _byte_alphabet_table() -> dict[int, str]:
    """A `str.translate` table taking each alphabet character to chr(its byte), so that
    `.encode("latin-1")` then yields the raw bytes. Characters below chr(324) that are *not* in
    the alphabet map to "\uffff", which (like every other character >= chr(256)) makes the
    latin-1 encoding fail: that is how we detect strings not spelled in the alphabet."""
    table = {ord(char): chr(b) for b, char in bytes_to_unicode().items()}
    for codepoint in range(256 + 68):
        table.setdefault(codepoint, "\uffff")
    return table


def _token_string_to_bytes(token: str) -> Optional[bytes]:
    """Decode a vocabulary entry spelled in the byte alphabet; None if it is not spelled in it."""
    try:
        return token.translate(_byte_alphabet_table()).encode("latin-1")
    except UnicodeEncodeError:
        return None


# ---------------------------------------------------------------------------------------------
# Building a tiktoken Encoding from a vocabulary and a merge list
# ---------------------------------------------------------------------------------------------


def _build_encoding(
    name: str,
    vocab: dict[str, int],
    merges: list[tuple[str, str]],
    added_tokens: dict[str, int],
) -> tuple[tiktoken.Encoding, frozenset[str], frozenset[int]]:
    """Turn a GPT-2 style (vocab, merges) pair into a tiktoken Encoding.

    The mergeable tokens are the 256 single bytes plus the result of every merge. Every other
    vocabulary entry (e.g. "<|endoftext|>") is a special token for tiktoken. tiktoken applies
    merges in order of the merged token's id, so the ids of merge results must increase with the
    merge order, as they do in every GPT-2 style vocabulary.

    Also returns the special tokens that are matched verbatim in text (like Hugging Face's added
    tokens): "<|endoftext|>", `added_tokens`, and entries not spelled in the byte alphabet. A
    stray entry that no merge produces but that is spelled in bytes stays decodable only. And
    the set of every token id (a vocabulary may skip ids).
    """
    mergeable_ranks: dict[bytes, int] = {}
    for char in bytes_to_unicode().values():
        if char not in vocab:
            raise ArgumentError(
                f"{name}: not a byte-level BPE vocabulary: the single-byte token {char!r} is missing"
            )
        mergeable_ranks[_token_string_to_bytes(char)] = vocab[char]

    previous_rank, previous_merge = -1, None
    for first, second in merges:
        merged = first + second
        if merged not in vocab:
            raise ArgumentError(f"{name}: merge {first!r} + {second!r} gives {merged!r}, which is not in the vocabulary")
        token_bytes = _token_string_to_bytes(merged)
        if token_bytes is None:
            raise ArgumentError(f"{name}: merge result {merged!r} is not spelled in GPT-2's byte alphabet")
        if token_bytes in mergeable_ranks:
            continue  # the same string reached by another merge: keep the first (higher priority)
        rank = vocab[merged]
        if rank <= previous_rank:
            raise ArgumentError(
                f"{name}: token ids must increase with merge priority, but merge {first!r} + {second!r} "
                f"-> id {rank} comes after {previous_merge!r} -> id {previous_rank}; "
                "this vocabulary cannot be used with tiktoken"
            )
        mergeable_ranks[token_bytes] = rank
        previous_rank, previous_merge = rank, merged

    mergeable_ids = set(mergeable_ranks.values())
    special_tokens = {token: i for token, i in vocab.items() if i not in mergeable_ids}
    special_tokens.update(added_tokens)
    matched_in_text = frozenset(
        token
        for token in special_tokens
        if token == ENDOFTEXT or token in added_tokens or _token_string_to_bytes(token) is None
    )
    encoding = tiktoken.Encoding(
        name, pat_str=GPT2_PATTERN, mergeable_ranks=mergeable_ranks, special_tokens=special_tokens
    )
    return encoding, matched_in_text, frozenset(mergeable_ids) | frozenset(special_tokens.values())


def _parse_merges_text(text: str) -> list[tuple[str, str]]:
    """`vocab.bpe` / `merges.txt`: an optional `#version` line, then one "first second" per line."""
    lines = text.split("\n")
    if lines and lines[0].startswith("#version"):
        lines = lines[1:]
    merges = [tuple(line.split(" ")) for line in lines if line]
    for merge in merges:
        if len(merge) != 2:
            raise ArgumentError(f"malformed merge line {' '.join(merge)!r}: expected two tokens separated by one space")
    return merges


@contextlib.contextmanager
def _gc_paused():
    """Building 100k small strings and tuples triggers the cyclic GC over and over (half the
    load time); none of them form cycles, so pause it while we build."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@functools.lru_cache(maxsize=None)
def _gpt2_encoding() -> tiktoken.Encoding:
    """The shipped GPT-2 vocabulary, read once per process with tiktoken's public loader (which
    checks the file against its pinned sha256)."""
    with _gc_paused():
        ranks = tiktoken.load.load_tiktoken_bpe(str(GPT2_TIKTOKEN), expected_hash=GPT2_TIKTOKEN_SHA256)
    return tiktoken.Encoding("gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={ENDOFTEXT: GPT2_EOT_ID})


# Hugging Face directory layouts we understand, in the order we try them.
_HF_FILES = ("tokenizer.json", "vocab.json + merges.txt")


def _read_hf_directory(directory: Path) -> tuple[dict[str, int], list[tuple[str, str]], dict[str, int]]:
    """(vocab, merges, added special tokens) from a Hugging Face GPT-2 tokenizer directory."""
    tokenizer_json = directory / "tokenizer.json"
    vocab_json, merges_txt = directory / "vocab.json", directory / "merges.txt"
    if tokenizer_json.is_file():
        data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
        model = data.get("model") or {}
        if model.get("type", "BPE") != "BPE" or "vocab" not in model or "merges" not in model:
            raise ArgumentError(f"{tokenizer_json}: expected a BPE model with 'vocab' and 'merges'")
        pre_tokenizer = data.get("pre_tokenizer") or {}
        if pre_tokenizer.get("type") == "ByteLevel" and pre_tokenizer.get("add_prefix_space"):
            raise ArgumentError(f"{tokenizer_json}: add_prefix_space=True is not supported (GPT-2 uses False)")
        merges = []
        for merge in model["merges"]:
            # Older files store "first second" strings, newer ones [first, second] pairs.
            pair = merge.split(" ") if isinstance(merge, str) else merge
            if len(pair) != 2:
                raise ArgumentError(f"{tokenizer_json}: malformed merge {merge!r}")
            merges.append((pair[0], pair[1]))
        added = {t["content"]: t["id"] for t in data.get("added_tokens", [])}
        return model["vocab"], merges, added
    if vocab_json.is_file() and merges_txt.is_file():
        vocab = json.loads(vocab_json.read_text(encoding="utf-8"))
        merges = _parse_merges_text(merges_txt.read_text(encoding="utf-8"))
        return vocab, merges, {}
    present = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else None
    raise FileNotFoundError(
        f"no GPT-2 tokenizer files in {str(directory)!r}: looked for {' or '.join(_HF_FILES)}; "
        + (f"found {present}" if present is not None else "the directory does not exist")
    )


@functools.lru_cache(maxsize=8)
def _directory_encoding(directory: str, signature: tuple) -> tuple[tiktoken.Encoding, frozenset[str], frozenset[int]]:
    # `signature` (file names, sizes, mtimes) is only part of the cache key, so an edited
    # directory is read again.
    with _gc_paused():
        vocab, merges, added = _read_hf_directory(Path(directory))
        return _build_encoding(os.path.basename(directory) or directory, vocab, merges, added)


def _directory_signature(directory: Path) -> tuple:
    names = ("tokenizer.json", "vocab.json", "merges.txt")
    return tuple(
        (name, (directory / name).stat().st_size, (directory / name).stat().st_mtime_ns)
        for name in names
        if (directory / name).is_file()
    )


# ---------------------------------------------------------------------------------------------
# The tokenizer
# ---------------------------------------------------------------------------------------------


class Tokenizer:
    """GPT-2's byte-level BPE: text <-> token ids.

    Build it with `Tokenizer.gpt2()` (the vocabulary shipped with hookgpt, no network) or
    `Tokenizer.from_directory(path)` (a Hugging Face GPT-2 tokenizer directory). Both are cached,
    so calling them again is free.

    >>> tok = Tokenizer.gpt2()
    >>> tok.encode("Hello world")
    [15496, 995]
    >>> tok.decode_tokens([15496, 995])
    ['Hello', ' world']

    GPT-2 has one special token, "<|endoftext|>" (id 50256), which serves as end of text,
    beginning of text and padding.
    """

    def __init__(
        self,
        encoding: tiktoken.Encoding,
        specials_in_text: Optional[frozenset[str]] = None,
        eos_token: str = ENDOFTEXT,
        source: Optional[str] = None,
        token_ids: Optional[frozenset[int]] = None,
    ):
        """Wrap a tiktoken Encoding. `specials_in_text`: the special tokens that `encode`
        recognises in text by default (all of the encoding's, if None). `token_ids`: every id
        that is a token, when the vocabulary skips some (None: every id below `n_vocab`)."""
        if eos_token not in encoding.special_tokens_set:
            raise ArgumentError(
                f"the vocabulary has no special token {eos_token!r}; special tokens: "
                f"{sorted(encoding.special_tokens_set)}"
            )
        self._encoding = encoding
        all_specials = encoding.special_tokens_set
        in_text = all_specials if specials_in_text is None else (specials_in_text | {eos_token})
        # tiktoken's fast path when every special token is recognised in text.
        self._allowed_by_default: Union[Literal["all"], frozenset[str]] = (
            "all" if in_text == all_specials else frozenset(in_text)
        )
        self._source = source  # None for the shipped GPT-2 vocabulary, else the directory
        self.vocab_size: int = encoding.n_vocab
        self.eos_token: str = eos_token
        self.bos_token: str = eos_token
        self.pad_token: str = eos_token
        self.eos_token_id: int = encoding.encode_single_token(eos_token)
        self.bos_token_id: int = self.eos_token_id
        self.pad_token_id: int = self.eos_token_id
        # Which side batches of different lengths are padded on when no padding_side is passed
        # (as a Hugging Face tokenizer's attribute; the model also reads it for token input).
        self.padding_side: PaddingSide = "right"
        # Whether every id in [0, vocab_size) is a token (true for GPT-2); if not, we check membership.
        self._valid_ids = token_ids if token_ids is not None and len(token_ids) != self.vocab_size else None

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def gpt2(cls) -> "Tokenizer":
        """GPT-2's tokenizer, from the vocabulary shipped in `hookgpt/data/gpt2` (cached)."""
        return _gpt2_tokenizer()

    @classmethod
    def from_directory(cls, path: Union[str, os.PathLike]) -> "Tokenizer":
        """Load a Hugging Face GPT-2 style tokenizer directory (cached per directory).

        Reads `tokenizer.json` (its `model.vocab` / `model.merges` and `added_tokens`) if present,
        else `vocab.json` + `merges.txt`. Raises FileNotFoundError naming the directory and the
        files looked for when neither is there.
        """
        directory = Path(path).expanduser().resolve()
        encoding, specials_in_text, token_ids = _directory_encoding(str(directory), _directory_signature(directory))
        return cls(encoding, specials_in_text, _eos_token_of(directory, encoding), source=str(directory), token_ids=token_ids)

    def __reduce__(self):
        # Pickle by reference: unpickling rebuilds (or reuses the cached) vocabulary.
        if self._source is None:
            return (Tokenizer.gpt2, ())
        return (Tokenizer.from_directory, (self._source,))

    def __repr__(self) -> str:
        source = "gpt2 (shipped)" if self._source is None else repr(self._source)
        return f"Tokenizer({source}, vocab_size={self.vocab_size})"

    def __len__(self) -> int:
        return self.vocab_size

    # -- text -> ids ----------------------------------------------------------------------------

    def encode(self, text: str, allowed_special: Union[Literal["all"], Collection[str]] = "all") -> list[int]:
        """Token ids of `text` (no BOS is added).

        Special tokens written in the text ("<|endoftext|>") become their id when allowed
        (`allowed_special="all"`, the default, like Hugging Face's added tokens); pass `allowed_special=()` to
        tokenize them as ordinary text instead.
        """
        return self._encoding.encode(text, allowed_special=self._allowed(allowed_special), disallowed_special=())

    def encode_batch(
        self, texts: Sequence[str], allowed_special: Union[Literal["all"], Collection[str]] = "all"
    ) -> list[list[int]]:
        """`encode` for each text; long batches are encoded on several threads."""
        if isinstance(texts, str):
            raise ArgumentTypeError("encode_batch expects a list of strings, got a single str (use encode)")
        allowed = self._allowed(allowed_special)
        if len(texts) < 16:  # a thread pool costs more than it saves on a handful of texts
            return [self._encoding.encode(t, allowed_special=allowed, disallowed_special=()) for t in texts]
        return self._encoding.encode_batch(list(texts), allowed_special=allowed, disallowed_special=())

    def _allowed(
        self, allowed_special: Union[str, Collection[str]]
    ) -> Union[Literal["all"], set[str], frozenset[str]]:
        if isinstance(allowed_special, str):
            if allowed_special != "all":
                raise ArgumentError(
                    f"allowed_special must be 'all' or a collection of special tokens, got {allowed_special!r}"
                )
            return self._allowed_by_default
        unknown = set(allowed_special) - self._encoding.special_tokens_set
        if unknown:
            raise ArgumentError(
                f"unknown special tokens {sorted(unknown)}; valid: {sorted(self._encoding.special_tokens_set)}"
            )
        return set(allowed_special)

    # -- ids -> text ----------------------------------------------------------------------------

    def decode(self, ids: Union[TokenIds, int]) -> str:
        """The text of a sequence of token ids (list, 1-D tensor or array).

        Bytes that do not form valid UTF-8 (e.g. half of an emoji) become "\\ufffd".
        """
        return self._encoding.decode(self._as_id_list(ids))

    def decode_tokens(self, ids: Union[TokenIds, int]) -> list[str]:
        """The text of each token separately, e.g. [15496, 995] -> ["Hello", " world"].

        A token that is not valid UTF-8 on its own (part of a multi-byte character) decodes with
        replacement characters, like TransformerLens' `to_str_tokens`.
        """
        id_list = self._as_id_list(ids)
        token_bytes = self._encoding.decode_tokens_bytes(id_list)
        return [b.decode("utf-8", errors="replace") for b in token_bytes]

    def token_to_id(self, token: Union[str, bytes]) -> int:
        """The id of one vocabulary entry, given as its text (" world") or its bytes (b" world").

        Raises KeyError when the string is not a single token.
        """
        try:
            return self._encoding.encode_single_token(token)  # a special token's text, or a token's bytes
        except KeyError:
            token_bytes = token.encode("utf-8") if isinstance(token, str) else token
            raise KeyError(
                f"{token!r} is not a token in the vocabulary; it encodes as "
                f"{self.decode_tokens(self._encoding.encode_ordinary(token_bytes.decode('utf-8', 'replace')))}"
            ) from None

    def id_to_token(self, token_id: int) -> str:
        """The text of one token id (replacement characters where it is not valid UTF-8 alone)."""
        return self.decode_tokens([token_id])[0]

    def _as_id_list(self, ids: Union[TokenIds, int]) -> list[int]:
        """Normalise ids to a list of Python ints and check they are all in the vocabulary."""
        if isinstance(ids, (torch.Tensor, np.ndarray)):
            is_int = (
                not ids.dtype.is_floating_point and not ids.dtype.is_complex and ids.dtype != torch.bool
                if isinstance(ids, torch.Tensor)
                else np.issubdtype(ids.dtype, np.integer)
            )
            if not is_int:
                raise ArgumentTypeError(f"token ids must be integers, got dtype {ids.dtype}")
            if ids.ndim > 1:
                raise ArgumentError(
                    f"expected a 1-D sequence of token ids, got shape {tuple(ids.shape)}; "
                    "use to_string for a batch"
                )
            id_list = ids.reshape(-1).tolist()
        elif isinstance(ids, (int, np.integer)) and not isinstance(ids, bool):
            id_list = [int(ids)]
        else:
            id_list = list(ids)
            for i in id_list:
                if not isinstance(i, (int, np.integer)) or isinstance(i, bool):
                    raise ArgumentTypeError(f"token ids must be integers, got {type(i).__name__} {i!r}")
            id_list = [int(i) for i in id_list]
        self._check_ids(id_list)
        return id_list

    def _check_ids(self, id_list: list[int]) -> None:
        if not id_list:
            return
        if min(id_list) < 0 or max(id_list) >= self.vocab_size:
            bad = next(i for i in id_list if not 0 <= i < self.vocab_size)
            raise ArgumentError(f"token id {bad} is out of range: valid ids are 0 to {self.vocab_size - 1}")
        if self._valid_ids is not None:
            for i in id_list:
                if i not in self._valid_ids:
                    raise ArgumentError(f"token id {i} is not in the vocabulary (ids range over 0 to {self.vocab_size - 1})")


@functools.lru_cache(maxsize=None)
def _gpt2_tokenizer() -> Tokenizer:
    return Tokenizer(_gpt2_encoding(), frozenset({ENDOFTEXT}))


def _eos_token_of(directory: Path, encoding: tiktoken.Encoding) -> str:
    """"<|endoftext|>" when the vocabulary has it, else the eos_token of tokenizer_config.json."""
    if ENDOFTEXT in encoding.special_tokens_set:
        return ENDOFTEXT
    config = directory / "tokenizer_config.json"
    if config.is_file():
        eos = json.loads(config.read_text(encoding="utf-8")).get("eos_token")
        if isinstance(eos, dict):  # serialized AddedToken
            eos = eos.get("content")
        if isinstance(eos, str):
            return eos
    raise ArgumentError(
        f"{directory}: the vocabulary has no {ENDOFTEXT!r} token and tokenizer_config.json names no eos_token"
    )


# ---------------------------------------------------------------------------------------------
# Model-facing helpers (TransformerLens names and defaults). The model exposes each as a method.
# ---------------------------------------------------------------------------------------------


def to_tokens_with_mask(
    tokenizer: Tokenizer,
    input: Union[str, Sequence[str]],
    prepend_bos: bool = True,
    padding_side: Optional[PaddingSide] = None,
    max_length: Optional[int] = None,
) -> tuple[Int[torch.Tensor, "batch pos"], Int[torch.Tensor, "batch pos"]]:
    """Tokenize a string or a list of strings into a padded batch, with its attention mask.

    Returns `(tokens, attention_mask)`, both long tensors of shape [batch, pos]: a str gives a
    batch of one. Shorter sequences are padded with `pad_token_id` on `padding_side`; the mask is
    1 on real tokens (BOS included) and 0 on padding. With `max_length`, each sequence (BOS
    included) is cut to its first `max_length` tokens; shorter batches are not padded up to it.
    `padding_side=None` uses `tokenizer.padding_side` ("right" unless set).
    """
    if padding_side is None:
        padding_side = getattr(tokenizer, "padding_side", "right")
    if padding_side not in PADDING_SIDES:
        raise ArgumentError(f"padding_side must be one of {list(PADDING_SIDES)}, got {padding_side!r}")
    if max_length is not None and max_length < 1:
        raise ArgumentError(f"max_length must be a positive number of tokens, got {max_length}")
    texts = [input] if isinstance(input, str) else list(input)
    if not texts:
        raise ArgumentError("input: cannot tokenize an empty list of strings")
    for text in texts:
        if not isinstance(text, str):
            raise ArgumentTypeError(f"input: expected a string or a list of strings to tokenize, got {type(text).__name__} {text!r}")

    bos = [tokenizer.bos_token_id] if prepend_bos else []
    sequences = [(bos + ids)[:max_length] for ids in tokenizer.encode_batch(texts)]
    n_pos = max(len(ids) for ids in sequences)

    tokens = torch.full((len(sequences), n_pos), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), n_pos), dtype=torch.long)
    for row, ids in enumerate(sequences):
        start = 0 if padding_side == "right" else n_pos - len(ids)
        tokens[row, start : start + len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, start : start + len(ids)] = 1
    return tokens, attention_mask


def to_tokens(
    tokenizer: Tokenizer,
    input: Union[str, Sequence[str]],
    prepend_bos: bool = True,
    padding_side: Optional[PaddingSide] = None,
    max_length: Optional[int] = None,
) -> Int[torch.Tensor, "batch pos"]:
    """Tokenize a string (batch of one) or a list of strings into a padded [batch, pos] tensor.

    See `to_tokens_with_mask` for padding and truncation; use it when the batch has padding
    that attention must ignore.
    """
    tokens, _ = to_tokens_with_mask(tokenizer, input, prepend_bos, padding_side, max_length)
    return tokens


def to_string(
    tokenizer: Tokenizer,
    tokens: Union[TokenIds, Sequence[Sequence[int]]],
) -> Union[str, list[str]]:
    """Decode token ids: a 1-D sequence gives a str, a 2-D batch a list of str (padding is kept)."""
    if isinstance(tokens, (torch.Tensor, np.ndarray)):
        if tokens.ndim == 2:
            return [tokenizer.decode(row) for row in tokens]
        if tokens.ndim > 2:
            raise ArgumentError(f"expected token ids of shape [pos] or [batch, pos], got {tuple(tokens.shape)}")
        return tokenizer.decode(tokens)
    tokens = list(tokens)
    if tokens and not isinstance(tokens[0], (int, np.integer)):
        return [tokenizer.decode(row) for row in tokens]
    return tokenizer.decode(tokens)


def _as_1d_ids(tokens: TokenIds, what: str) -> list[int]:
    """A 1-D id sequence from a list / tensor / array, also accepting a batch of one [1, pos]."""
    if isinstance(tokens, (torch.Tensor, np.ndarray)):
        if tokens.ndim == 2 and tokens.shape[0] == 1:
            tokens = tokens[0]
        if tokens.ndim != 1:
            raise ArgumentError(f"{what} expects token ids of shape [pos] or [1, pos], got {tuple(tokens.shape)}")
        return [int(i) for i in tokens.tolist()]
    return [int(i) for i in tokens]


def to_str_tokens(
    tokenizer: Tokenizer,
    input: Union[str, TokenIds],
    prepend_bos: bool = True,
) -> list[str]:
    """The text of each token: a string is tokenized first (with BOS when `prepend_bos`),
    ids (1-D, or [1, pos]) are split as given.

    >>> to_str_tokens(Tokenizer.gpt2(), "Hello world")
    ['<|endoftext|>', 'Hello', ' world']
    """
    if isinstance(input, str):
        ids = ([tokenizer.bos_token_id] if prepend_bos else []) + tokenizer.encode(input)
    else:
        ids = _as_1d_ids(input, "to_str_tokens")
    return tokenizer.decode_tokens(ids)


def to_single_token(tokenizer: Tokenizer, string: str) -> int:
    """The id of a string that is exactly one token (" world" -> 995); ValueError otherwise."""
    ids = tokenizer.encode(string)
    if len(ids) != 1:
        raise ArgumentError(
            f"{string!r} is {len(ids)} tokens, not a single token: {tokenizer.decode_tokens(ids)} (ids {ids})"
        )
    return ids[0]


def get_token_position(
    tokenizer: Tokenizer,
    single_token: Union[str, int],
    input: Union[str, TokenIds],
    mode: str = "first",
    prepend_bos: bool = True,
) -> int:
    """Position of `single_token` (a one-token string or an id) in `input` (a string, tokenized
    with BOS when `prepend_bos`, or 1-D ids). `mode` picks the first or last occurrence.
    """
    if mode not in ("first", "last"):
        raise ArgumentError(f"mode must be one of ['first', 'last'], got {mode!r}")
    if isinstance(single_token, str):
        token_id = to_single_token(tokenizer, single_token)
    else:
        tokenizer._check_ids([single_token])
        token_id = single_token
    if isinstance(input, str):
        ids = ([tokenizer.bos_token_id] if prepend_bos else []) + tokenizer.encode(input)
    else:
        ids = _as_1d_ids(input, "get_token_position")
    positions = [pos for pos, i in enumerate(ids) if i == token_id]
    if not positions:
        raise ArgumentError(
            f"token {tokenizer.id_to_token(token_id)!r} (id {token_id}) does not occur in the input "
            f"{tokenizer.decode_tokens(ids)}"
        )
    return positions[0] if mode == "first" else positions[-1]
