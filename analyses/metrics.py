"""The metric contract every intervening analysis shares (ablation, patching, steering, circuits).

A **metric** is a function of logits returning a scalar tensor:

    metric(logits: [batch, n_read, d_vocab]) -> Tensor[]

where `logits` are the model's logits at the analysis's `read_positions` (in that order), for the
prompts of one run, exactly as a plain forward pass with that intervention would give them. Each
analysis calls it once per intervention set (each ablated unit, each patch, each steering scale)
and once without any intervention. `read_positions=None` means every position (so the metric sees
`[batch, pos, d_vocab]`, as from `model(tokens)`); ablation reads every position by default,
patching and steering the last one (`-1`).

Reading fewer positions is faster: the engine unembeds only those, and skips work before them.

This module also builds the common metrics: `logit_diff` and the normalised `logit_diff_metric`.
"""

from typing import Callable, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor

from analyses._common import token_id
from hookgpt.model import HookedGPT

Metric = Callable[[Float[Tensor, "batch read_pos d_vocab"]], Float[Tensor, ""]]
TokenChoice = Union[int, str, Int[Tensor, "batch"]]


def _ids(tokens: TokenChoice, batch: int, device: torch.device) -> Int[Tensor, "batch 1"]:
    ids = torch.as_tensor(tokens, device=device).long().flatten()
    if ids.shape[0] not in (1, batch):
        raise ValueError(f"need one token or one per prompt ({batch}), got {ids.shape[0]}")
    return ids.expand(batch)[:, None]


def logit_diff(logits: Float[Tensor, "batch pos d_vocab"], answer: TokenChoice, wrong: TokenChoice) -> Float[Tensor, ""]:
    """Mean over the batch of `logit[answer] - logit[wrong]` at the last position of `logits`."""
    if isinstance(answer, str) or isinstance(wrong, str):
        raise ValueError(f"answer {answer!r} / wrong {wrong!r}: logit_diff takes token ids; look strings up with model.to_single_token")
    last = logits[:, -1]  # [batch, d_vocab]
    answer_ids = _ids(answer, last.shape[0], last.device)
    wrong_ids = _ids(wrong, last.shape[0], last.device)
    return (last.gather(-1, answer_ids) - last.gather(-1, wrong_ids)).mean()


def logit_diff_metric(
    clean_logits: Float[Tensor, "batch pos d_vocab"],
    corrupted_logits: Float[Tensor, "batch pos d_vocab"],
    answer: TokenChoice,
    wrong: TokenChoice,
    model: HookedGPT = None,
) -> Metric:
    """A patching metric: the logit difference (answer - wrong, at the last position, averaged over
    the batch) rescaled so the corrupted run gives 0 and the clean run gives 1.

    `answer`/`wrong` are token ids, or single-token strings when `model` is given to look them up.

    `clean_logits`/`corrupted_logits` are the two unpatched runs' logits (all positions, or just
    the read positions: only the last one is used). The returned metric likewise reads the last
    of the positions it is given, so keep the answer position last in `read_positions`.
    """
    if isinstance(answer, str) or isinstance(wrong, str):
        if model is None:
            raise ValueError(f"answer {answer!r} / wrong {wrong!r}: strings need model=... to be looked up; or pass token ids")
        answer, wrong = (token_id(model, t) if isinstance(t, str) else t for t in (answer, wrong))
    clean_diff = logit_diff(clean_logits, answer, wrong)
    corrupted_diff = logit_diff(corrupted_logits, answer, wrong)
    if torch.isclose(clean_diff, corrupted_diff):
        raise ValueError(f"the clean and corrupted logit differences are equal ({float(clean_diff):.4g}): nothing to recover")

    def normalised_logit_diff(logits: Float[Tensor, "batch read_pos d_vocab"]) -> Float[Tensor, ""]:
        return (logit_diff(logits, answer, wrong) - corrupted_diff) / (clean_diff - corrupted_diff)

    return normalised_logit_diff
