"""What the trainer trains on: one batch interface, three kinds of data.

A dataset hands the trainer `Batch`es. Its one promise: **the batch of a step is a pure function
of (seed, step)**. Nothing depends on what came before, so a resumed run sees exactly the
batches an uninterrupted one would, gradient accumulation and DistributedDataParallel just cut
the same global batch into blocks (`Batch.shard`), and the step number is the whole data position.

A batch is two integer arrays of the same shape `[rows, pos]`: the input `tokens`, and the
`targets` to predict at each position, `IGNORE` (-100, PyTorch's ignore index) where there is
no loss. Language modelling predicts the next token everywhere but at the last position; an
algorithmic task predicts only the answer positions.

The three kinds (`make_dataset` picks one from a `TrainConfig`):

1. `TextTokens`: random windows of a token file (`prepare_data` tokenizes text files, the
   bundled Shakespeare or a Hugging Face dataset once into memory-mapped uint16 files).
2. `RepeatedSequences`: text windows of which a fraction are replaced by a unit repeated to fill
   the row (random ids, or a corpus span), with a random period: a curriculum that makes
   induction heads form sooner.
3. `AlgorithmicTask`: a fixed table of examples (a `.npz` file of `tokens`, `targets` and a
   boolean `is_train`), trained full-batch or in seeded minibatches, evaluated on the held-out
   rows (loss and accuracy). The trainer knows nothing of the task: the table says it all.
"""

import gzip
import hashlib
import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor

from hookgpt.atomic import write_bytes_atomic
from hookgpt.tokenizer import Tokenizer

BUNDLED_CORPUS = Path(__file__).parent / "data" / "corpus" / "shakespeare.txt.gz"
EOT = 50256
IGNORE = -100  # a target that carries no loss (F.cross_entropy's ignore_index)
KINDS = ("text", "repeated", "algorithmic")
REPEAT_LAYOUTS = ("fill", "two_copies")


class TrainingError(ValueError):
    """Bad training input: data that is missing, empty, unreadable or the wrong shape; a bad
    config; a checkpoint that does not fit (the trainer raises it too)."""


# =============================================================================================
# The batch
# =============================================================================================


@dataclass
class Batch:
    """`tokens` and `targets`, both `[rows, pos]` int64; `targets` is IGNORE where there is no loss."""

    tokens: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.tokens)

    def shard(self, n_blocks: int, block: int) -> "Batch":
        """Block `block` of `n_blocks` equal blocks of rows (micro-step m of rank r of a world of
        size w takes block `m * w + r` of `grad_accum * w`)."""
        per_block = len(self) // n_blocks
        rows = slice(block * per_block, (block + 1) * per_block)
        return Batch(self.tokens[rows], self.targets[rows])

    def to(self, device: Union[str, torch.device]) -> tuple[Tensor, Tensor]:
        return torch.from_numpy(self.tokens).to(device), torch.from_numpy(self.targets).to(device)


def next_token_targets(tokens: np.ndarray) -> np.ndarray:
    """Language-modelling targets: position i predicts token i + 1; the last position nothing."""
    targets = np.full_like(tokens, IGNORE)
    targets[:, :-1] = tokens[:, 1:]
    return targets


# =============================================================================================
# 1. Text: files -> uint16 token files -> random windows
# =============================================================================================


def _text_files(source: Optional[Union[str, Path]]) -> list[Path]:
    """The files of `source`: None means the bundled corpus; a .txt/.md/.gz file; a directory of them."""
    path = Path(BUNDLED_CORPUS if source is None else source)
    if not path.exists():
        raise FileNotFoundError(f"training data {str(path)!r} does not exist (expected a text file or a directory of .txt files)")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".txt", ".gz", ".md")) if path.is_dir() else [path]
    if not files:
        raise TrainingError(f"no .txt/.md/.gz files in {str(path)!r}")
    return files


def _fingerprint(files: list[Path]) -> str:
    """Changes when a file is added, removed or modified (size or modification time)."""
    fingerprint = hashlib.sha256()
    for file in files:
        stat = file.stat()
        fingerprint.update(f"{file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return fingerprint.hexdigest()


def _read_files(files: list[Path]) -> list[str]:
    """The text of every file (UTF-8; `.gz` decompressed), with errors that name the file."""
    texts = []
    for file in files:
        opener = gzip.open if file.suffix == ".gz" else open
        try:
            with opener(file, "rt", encoding="utf-8") as f:
                texts.append(f.read())
        except UnicodeDecodeError as e:
            raise TrainingError(f"training data file {str(file)!r} is not UTF-8 text (byte {e.start}: {e.reason})") from None
        except (gzip.BadGzipFile, EOFError, zlib.error) as e:
            raise TrainingError(f"training data file {str(file)!r} is not a valid .gz file ({type(e).__name__}: {e})") from None
    return texts


def _read_hf_dataset(spec: str) -> tuple[list[str], str]:
    """The `text` column of the Hugging Face dataset `spec` = `NAME` or `NAME:CONFIG` (its train
    split, through `datasets.load_dataset`), and the dataset's own fingerprint."""
    try:
        import datasets
    except ImportError:
        raise TrainingError(f"--data hf:{spec} needs the Hugging Face `datasets` package: pip install datasets") from None
    name, _, config = spec.partition(":")
    try:
        dataset = datasets.load_dataset(name, config or None, split="train")
    except Exception as e:  # not found, no network, bad config, ...
        raise TrainingError(f"could not load the Hugging Face dataset {spec!r}: {type(e).__name__}: {e}") from e
    if "text" not in dataset.column_names:
        raise TrainingError(f"the Hugging Face dataset {spec!r} has no 'text' column (its columns: {dataset.column_names})")
    fingerprint = f"hf:{spec}:train:{getattr(dataset, '_fingerprint', None) or len(dataset)}"
    return list(dataset["text"]), fingerprint


def prepare_data(
    source: Optional[Union[str, Path]], data_dir: Union[str, Path], val_fraction: float = 0.05, tokenizer: Optional[Tokenizer] = None
) -> Path:
    """Tokenize `source` into `data_dir/{train,val}.bin` (uint16) once; reuse them afterwards.

    `source` is None (the bundled Shakespeare), a text file, a directory of text files, or
    `"hf:NAME"` / `"hf:NAME:CONFIG"` for the `text` column of a Hugging Face dataset (needs the
    `datasets` package). The files are re-tokenized only when the source changes (its
    fingerprint, kept in `meta.json`, differs).

    Each document (a file or dataset row, or a part between `<|endoftext|>` markers) ends in the
    EOT token; the last `val_fraction` of every document's tokens goes to validation, so both
    splits cover every document. Returns `data_dir`.
    """
    data_dir = Path(data_dir)
    if isinstance(source, str) and source.startswith("hf:"):
        texts, fingerprint = _read_hf_dataset(source[3:])
    else:
        files = _text_files(source)
        texts, fingerprint = None, _fingerprint(files)
    meta_path = data_dir / "meta.json"
    if meta_path.exists() and (data_dir / "train.bin").exists() and (data_dir / "val.bin").exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("fingerprint") == fingerprint and meta.get("val_fraction") == val_fraction:
            return data_dir  # prepared before from the same source: reuse
    if texts is None:
        texts = _read_files(files)
    tokenizer = tokenizer or Tokenizer.gpt2()
    train, val = [], []
    for doc in (doc for text in texts for doc in text.split("<|endoftext|>")):
        if not doc.strip():
            continue
        ids = tokenizer.encode(doc.strip("\n"), allowed_special=set()) + [EOT]
        split = len(ids) - max(1, int(len(ids) * val_fraction)) if val_fraction > 0 else len(ids)
        train += ids[:split]
        val += ids[split:]
    if len(train) < 2:
        raise TrainingError(f"the corpus {str(source or BUNDLED_CORPUS)!r} is empty: it has no text to train on")
    data_dir.mkdir(parents=True, exist_ok=True)
    for name, ids in (("train.bin", train), ("val.bin", val)):
        write_bytes_atomic(data_dir / name, np.asarray(ids, dtype=np.uint16).tobytes())
    meta = {"fingerprint": fingerprint, "val_fraction": val_fraction, "train_tokens": len(train), "val_tokens": len(val),
            "source": str(source or BUNDLED_CORPUS)}
    write_bytes_atomic(meta_path, json.dumps(meta, indent=2).encode())
    return data_dir


def load_tokens(data_dir: Union[str, Path], split: str) -> np.memmap:
    path = Path(data_dir) / f"{split}.bin"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; run prepare_data first")
    return np.memmap(path, dtype=np.uint16, mode="r")


def random_windows(tokens: np.ndarray, seq_len: int, rows: int, rng: np.random.Generator) -> np.ndarray:
    """`rows` windows of `seq_len` tokens at random starts, `[rows, seq_len]` int64."""
    starts = rng.integers(0, len(tokens) - seq_len, size=rows)
    return np.stack([np.asarray(tokens[s : s + seq_len], dtype=np.int64) for s in starts])


class TextTokens:
    """Language modelling on random windows of a token file: `batch_size` rows of `seq_len` tokens.

    The windows of step s come from a generator seeded with (seed, 0, s); the validation
    batches from (seed, 1, i) on the validation split, the same in every run.
    """

    kind = "text"

    def __init__(self, train_tokens: np.ndarray, val_tokens: np.ndarray, seq_len: int, batch_size: int, seed: int = 0):
        if len(train_tokens) <= seq_len:
            raise TrainingError(f"the training split has {len(train_tokens)} tokens, fewer than seq_len={seq_len} + 1")
        self.train_tokens, self.val_tokens = train_tokens, val_tokens
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed

    @property
    def rows_per_step(self) -> int:
        return self.batch_size

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def global_batch(self, step: int) -> Batch:
        rng = np.random.default_rng([self.seed, 0, step])
        tokens = random_windows(self.train_tokens, self.seq_len, self.batch_size, rng)
        return Batch(tokens, next_token_targets(tokens))

    def eval_batches(self, n: int) -> list[Batch]:
        """`n` fixed validation batches (the training split if the validation one is too short)."""
        tokens = self.val_tokens if len(self.val_tokens) > self.seq_len else self.train_tokens
        batches = []
        for i in range(n):
            rows = random_windows(tokens, self.seq_len, self.batch_size, np.random.default_rng([self.seed, 1, i]))
            batches.append(Batch(rows, next_token_targets(rows)))
        return batches

    def vocab_ids(self) -> np.ndarray:
        """The sorted ids that occur in the training split (for a restricted softmax)."""
        return np.unique(np.asarray(self.train_tokens)).astype(np.int64)


class RepeatedSequences(TextTokens):
    """Text windows, of which a `repeat_fraction` of rows are a unit repeated to fill the row.

    The unit is `period` tokens (uniform in [min_period, max_period], at most half the row): for
    `corpus_fraction` of the repeated rows the row's own first tokens (a corpus span), otherwise
    random ids below `vocab_size` (default: every id but EOT), or with `from_data` random ids among
    those that occur in the training split (so a restricted softmax stays over the data's ids and
    no embedding outside them is trained). Random periods leave no positional
    shortcut, so the only way to predict the second copy is to look back one period: induction.
    Validation batches are plain text.

    `layout` places the unit: "fill" repeats it from the row's start to its end; "two_copies" puts
    exactly two copies at a random offset inside the row (uniform over the offsets that fit), the
    rest of the row being its text window. With "fill" the first copy always lies in the first
    `max_period` positions, so an induction head never needs a key (a previous-token head) beyond
    them; with "two_copies" every position is sometimes the first copy, as in
    `analyses.heads.repeated_random_tokens`.
    """

    kind = "repeated"

    def __init__(self, train_tokens: np.ndarray, val_tokens: np.ndarray, seq_len: int, batch_size: int, seed: int = 0, *,
                 repeat_fraction: float, corpus_fraction: float = 0.5, min_period: int = 8, max_period: int = 96,
                 vocab_size: Optional[int] = None, from_data: bool = False, layout: str = "fill"):
        super().__init__(train_tokens, val_tokens, seq_len, batch_size, seed)
        if layout not in REPEAT_LAYOUTS:
            raise TrainingError(f"repeat_layout must be one of {REPEAT_LAYOUTS}, got {layout!r}")
        if from_data and vocab_size is not None:
            raise TrainingError("repeat_from_data draws from the training split's ids; it cannot be combined with repeat_vocab_size")
        for name, value in (("repeat_fraction", repeat_fraction), ("repeat_corpus_fraction", corpus_fraction)):
            if not 0 <= value <= 1:
                raise TrainingError(f"{name} must be in [0, 1], got {value}")
        if vocab_size is not None and not 2 <= vocab_size <= EOT:
            raise TrainingError(f"repeat_vocab_size must be in [2, {EOT}], got {vocab_size}")
        if not 1 <= min_period <= max_period:
            raise TrainingError(f"repeat periods must satisfy 1 <= repeat_min_period <= repeat_max_period, got {min_period}, {max_period}")
        self.repeat_fraction, self.corpus_fraction = repeat_fraction, corpus_fraction
        self.min_period, self.max_period, self.vocab_size = min_period, max_period, vocab_size
        self.layout = layout
        self.unit_ids = None  # with from_data: the ids random units draw from
        if from_data:
            ids = self.vocab_ids()
            self.unit_ids = ids[ids != EOT]

    def global_batch(self, step: int) -> Batch:
        rng = np.random.default_rng([self.seed, 0, step])
        n, seq_len = self.batch_size, self.seq_len
        rows = random_windows(self.train_tokens, seq_len, n, rng)
        repeat = rng.random(n) < self.repeat_fraction
        if self.unit_ids is None:
            vocab = rng.integers(0, self.vocab_size or EOT, size=(n, seq_len))  # random ids (EOT excluded)
        else:
            vocab = self.unit_ids[rng.integers(0, len(self.unit_ids), size=(n, seq_len))]
        periods = rng.integers(self.min_period, self.max_period + 1, size=n)
        use_corpus_span = rng.random(n) < self.corpus_fraction
        where = rng.random(n) if self.layout == "two_copies" else None  # drawn only then: "fill" batches stay as they were
        for i in np.nonzero(repeat)[0]:
            period = min(int(periods[i]), seq_len // 2)
            if self.layout == "fill":
                unit = rows[i, :period] if use_corpus_span[i] else vocab[i, :period]
                rows[i] = np.resize(unit, seq_len)  # unit, unit, unit, ... cut to seq_len
            else:
                start = int(where[i] * (seq_len - 2 * period + 1))  # the first copy: [start, start + period)
                if not use_corpus_span[i]:  # (a corpus span is the window's own tokens there)
                    rows[i, start:start + period] = vocab[i, :period]
                rows[i, start + period:start + 2 * period] = rows[i, start:start + period]
        return Batch(rows, next_token_targets(rows))


# =============================================================================================
# 3. Algorithmic tasks: a fixed table of examples
# =============================================================================================


def save_task_table(path: Union[str, Path], tokens: np.ndarray, targets: np.ndarray, is_train: np.ndarray, **meta) -> Path:
    """Write a task table for `AlgorithmicTask`: `tokens` and `targets` `[examples, pos]` (targets
    IGNORE where there is no loss), `is_train` `[examples]` bool; `meta` (JSON-able) describes it."""
    import io

    buffer = io.BytesIO()
    np.savez_compressed(buffer, tokens=np.asarray(tokens, dtype=np.int64), targets=np.asarray(targets, dtype=np.int64),
                        is_train=np.asarray(is_train, dtype=bool), meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    write_bytes_atomic(Path(path), buffer.getvalue())
    return Path(path)


def load_task_table(path: Union[str, Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """`(tokens, targets, is_train, meta)` of a table `save_task_table` wrote (no pickles are read)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task table {str(path)!r} does not exist (expected a .npz file written by save_task_table)")
    try:
        with np.load(path, allow_pickle=False) as f:
            tokens, targets, is_train = f["tokens"], f["targets"], f["is_train"]
            meta = json.loads(f["meta"].tobytes().decode()) if "meta" in f else {}
    except (OSError, ValueError, KeyError, zlib.error) as e:
        raise TrainingError(f"task table {str(path)!r} is not a table of tokens, targets and is_train ({type(e).__name__}: {e})") from None
    if tokens.ndim != 2 or targets.shape != tokens.shape or is_train.shape != tokens.shape[:1] or is_train.dtype != bool:
        raise TrainingError(f"task table {str(path)!r}: expected tokens and targets [examples, pos] and is_train [examples] bool, got "
                        f"{tokens.shape}, {targets.shape}, {is_train.shape} {is_train.dtype}")
    if not (targets != IGNORE).any(axis=1).all():
        raise TrainingError(f"task table {str(path)!r}: every example needs at least one target (a value other than {IGNORE})")
    if not is_train.any() or is_train.all():
        raise TrainingError(f"task table {str(path)!r}: is_train must mark some examples for training and some for testing")
    return tokens.astype(np.int64), targets.astype(np.int64), is_train, meta


class AlgorithmicTask:
    """A fixed table of examples: train on the rows marked `is_train`, evaluate on the others.

    `batch_size=0` trains full-batch (every training row, in table order, every step); otherwise
    each step draws `batch_size` distinct training rows with a generator seeded by (seed, 0, step).
    The loss is on the table's target positions only.
    """

    kind = "algorithmic"

    def __init__(self, tokens: np.ndarray, targets: np.ndarray, is_train: np.ndarray, batch_size: int = 0, seed: int = 0):
        self.train_tokens, self.train_targets = tokens[is_train], targets[is_train]
        self.test_tokens, self.test_targets = tokens[~is_train], targets[~is_train]
        n_train = len(self.train_tokens)
        if not 0 <= batch_size <= n_train:
            raise TrainingError(f"batch_size must be 0 (full batch) or at most the {n_train} training examples, got {batch_size}")
        self.batch_size, self.seed = batch_size, seed
        self.seq_len = tokens.shape[1]

    @classmethod
    def from_file(cls, path: Union[str, Path], batch_size: int = 0, seed: int = 0) -> "AlgorithmicTask":
        tokens, targets, is_train, _ = load_task_table(path)
        return cls(tokens, targets, is_train, batch_size, seed)

    @property
    def rows_per_step(self) -> int:
        return self.batch_size or len(self.train_tokens)

    @property
    def tokens_per_step(self) -> int:
        return self.rows_per_step * self.seq_len

    def global_batch(self, step: int) -> Batch:
        if self.batch_size == 0:
            return Batch(self.train_tokens, self.train_targets)
        rows = np.random.default_rng([self.seed, 0, step]).choice(len(self.train_tokens), self.batch_size, replace=False)
        return Batch(self.train_tokens[rows], self.train_targets[rows])

    def eval_batches(self, n: int = 1) -> list[Batch]:
        """The held-out rows, as one batch (`n` is ignored: the test set is small and fixed)."""
        return [Batch(self.test_tokens, self.test_targets)]

    def train_batch(self) -> Batch:
        return Batch(self.train_tokens, self.train_targets)

    def vocab_ids(self) -> np.ndarray:
        train_targets = self.train_targets
        return np.unique(train_targets[train_targets != IGNORE]).astype(np.int64)


Dataset = Union[TextTokens, RepeatedSequences, AlgorithmicTask]
