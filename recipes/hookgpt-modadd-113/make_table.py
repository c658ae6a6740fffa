"""The task table of hookgpt-modadd-113: every pair (a, b) of Z_113, answer (a + b) mod 113.

    python recipes/hookgpt-modadd-113/make_table.py          # -> runs/hookgpt-modadd-113-table.npz

Each example is the three tokens `a b =` (the `=` token is id p = 113), with the one target
(a + b) mod p at the `=` position (the loss is on that position only). As in Nanda et al. 2023,
"Progress measures for grokking via mechanistic interpretability", a random 30% of the p^2
pairs are the training set (seeded: the same table every time) and the other 70% the test set.
The trainer reads the table as data (`dataset: "algorithmic"`); it knows nothing of the task.
"""

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from hookgpt.datasets import IGNORE, save_task_table  # noqa: E402

P = 113
TRAIN_FRACTION = 0.3
SPLIT_SEED = 598  # the data seed of the paper's code
TABLE = ROOT / "runs" / "hookgpt-modadd-113-table.npz"


def modular_addition_table(p: int = P, train_fraction: float = TRAIN_FRACTION, seed: int = SPLIT_SEED):
    """`(tokens [p*p, 3], targets [p*p, 3], is_train [p*p])`, rows in the order a * p + b."""
    a, b = (x.flatten() for x in np.meshgrid(np.arange(p), np.arange(p), indexing="ij"))
    tokens = np.stack([a, b, np.full_like(a, p)], axis=1)
    targets = np.full_like(tokens, IGNORE)
    targets[:, 2] = (a + b) % p
    order = np.random.default_rng(seed).permutation(p * p)
    is_train = np.zeros(p * p, dtype=bool)
    is_train[order[: int(train_fraction * p * p)]] = True
    return tokens, targets, is_train


def main(path: Path = TABLE) -> Path:
    tokens, targets, is_train = modular_addition_table()
    save_task_table(path, tokens, targets, is_train, task="modular addition", p=P, train_fraction=TRAIN_FRACTION,
                    split_seed=SPLIT_SEED, format="a b = -> (a + b) mod p; '=' is token p")
    print(f"{path}: {len(tokens)} examples, {int(is_train.sum())} for training")
    return path


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else TABLE)
