"""TransformerLens's `head_detector`: `detect_head` with TL's scores, over analyses' templates.

The detection patterns are `analyses.heads`'s templates (the same rules as TL's); the score is TL's:
"mul" = attention on the pattern's query-key pairs / all attention, "abs" = 1 - mean absolute
difference * seq_len (rounded to 3 places, as TL). Unlike TL, a cache passed in is never modified
(TL zeroes the BOS column / diagonal of the cached pattern in place with exclude_bos /
exclude_current_token).
"""

import logging
from collections import defaultdict
from typing import Literal, Optional, Union

import torch
from beartype import beartype
from torch import Tensor

from analyses.heads import duplicate_token_template, induction_template, previous_token_template

HeadName = Literal["previous_token_head", "duplicate_token_head", "induction_head"]
HEAD_NAMES = ["previous_token_head", "duplicate_token_head", "induction_head"]
ErrorMeasure = Literal["abs", "mul"]
LayerHeadTuple = tuple[int, int]
LayerToHead = dict[int, list[int]]

SEQ_LEN_ERR = "The sequence must be non-empty and must fit within the model's context window."
DET_PAT_NOT_SQUARE_ERR = (
    "The detection pattern must be a lower triangular matrix of shape (sequence_length, sequence_length); "
    "sequence_length=%d; got detection pattern of shape %s"
)


def get_previous_token_head_detection_pattern(tokens: Tensor) -> Tensor:
    return previous_token_template(tokens.reshape(-1).cpu())


def get_duplicate_token_head_detection_pattern(tokens: Tensor) -> Tensor:
    return duplicate_token_template(tokens.reshape(-1).cpu())


def get_induction_head_detection_pattern(tokens: Tensor) -> Tensor:
    return induction_template(tokens.reshape(-1).cpu())


_PATTERNS = {
    "previous_token_head": get_previous_token_head_detection_pattern,
    "duplicate_token_head": get_duplicate_token_head_detection_pattern,
    "induction_head": get_induction_head_detection_pattern,
}


def get_supported_heads() -> None:
    print(f"Supported heads: {HEAD_NAMES}")


@beartype
def detect_head(
    model,
    seq: Union[str, list[str]],
    detection_pattern: Union[Tensor, HeadName],
    heads: Optional[Union[list[LayerHeadTuple], LayerToHead]] = None,
    cache=None,
    *,
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
    error_measure: ErrorMeasure = "mul",
) -> Tensor:
    """Score every head (`[n_layers, n_heads]`; heads not asked for are -1) on how well its
    attention pattern on `seq` matches `detection_pattern` (a head name or a `[pos, pos]` tensor).
    A list of sequences with a head name gives the mean of their scores."""
    cfg = model.cfg
    tokens = model.to_tokens(seq).to(cfg.device)
    seq_len = tokens.shape[-1]
    if isinstance(detection_pattern, str):
        if isinstance(seq, list):
            return torch.stack([detect_head(model, s, detection_pattern, heads, exclude_bos=exclude_bos,
                                            exclude_current_token=exclude_current_token, error_measure=error_measure) for s in seq]).mean(0)
        detection_pattern = _PATTERNS[detection_pattern](tokens).to(cfg.device)
    if error_measure == "mul" and not set(detection_pattern.unique().tolist()).issubset({0, 1}):
        logging.warning("Using detection pattern with values other than 0 or 1 with error_measure 'mul'")
    assert 1 < seq_len < cfg.n_ctx, SEQ_LEN_ERR
    assert detection_pattern.shape == (seq_len, seq_len) and bool((detection_pattern.triu(1) == 0).all()), (
        DET_PAT_NOT_SQUARE_ERR % (seq_len, tuple(detection_pattern.shape))
    )
    if cache is None:
        _, cache = model.run_with_cache(tokens, remove_batch_dim=True, names_filter=lambda name: name.endswith("hook_pattern"))
    if heads is None:
        layer_to_heads = {layer: list(range(cfg.n_heads)) for layer in range(cfg.n_layers)}
    elif isinstance(heads, list):
        layer_to_heads = defaultdict(list)
        for layer, head in heads:
            layer_to_heads[layer].append(head)
    else:
        layer_to_heads = heads
    scores = -torch.ones(cfg.n_layers, cfg.n_heads, dtype=cfg.dtype)
    for layer, layer_heads in layer_to_heads.items():
        patterns = cache["pattern", layer]
        for head in layer_heads:
            scores[layer, head] = _similarity(patterns[head].clone(), detection_pattern.to(patterns), exclude_bos, exclude_current_token, error_measure)
    return scores


def _similarity(pattern: Tensor, detection_pattern: Tensor, exclude_bos: bool, exclude_current_token: bool, error_measure: str) -> float:
    """TL's `compute_head_attention_similarity_score`, on a copy of the pattern."""
    if error_measure == "mul":
        if exclude_bos:
            pattern[:, 0] = 0
        if exclude_current_token:
            pattern.fill_diagonal_(0)
        return ((pattern * detection_pattern).sum() / pattern.sum()).item()
    abs_diff = (pattern - detection_pattern).abs()
    if exclude_bos:
        abs_diff[:, 0] = 0
    if exclude_current_token:
        abs_diff.fill_diagonal_(0)
    return 1 - round((abs_diff.mean() * len(abs_diff)).item(), 3)
