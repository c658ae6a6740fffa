"""Head scans: find the heads whose attention follows a recognisable rule.

A rule is a *template* `[query_pos, key_pos]`: where a head following the rule would put its
attention. The score of a head is the share of its attention that lands on the template,
averaged over the query positions that have a target:

    score = sum(pattern * template) / (number of rows of the template with a target)

then averaged over the batch. A head that follows the rule exactly scores 1, one that never
attends there scores 0. Rules shipped here (all built from the tokens of each sequence):

- previous token:  query i -> key i-1
- current token:   query i -> key i
- first token:     query i -> key 0 (the BOS token, an "attention sink")
- duplicate token: query i -> every earlier key j with the same token
- induction:       query i -> the key after every earlier occurrence of token i (j+1 where
                   tokens[j] == tokens[i], j < i): "I saw A B before, now A, so attend to B"

Relation to TransformerLens' `head_detector` (with `exclude_bos=False, exclude_current_token=False`,
`error_measure="mul"`): the templates are the same, and TL's score is
`sum(pattern * template) / sum(pattern)`, i.e. it divides by *every* query row. Rows without a
target (position 0 for the previous-token rule; the whole first half for induction) then drag the
score down, so even a perfect previous-token head scores (n-1)/n in TL. Here only rows with a
target count. Where every row has a target (current token, first token) the two agree exactly;
elsewhere `ours = TL * n_rows / n_rows_with_target`. TL also zeroes entries of the cached pattern in
place when excluding BOS/the current token; nothing here writes to a pattern.

Induction is measured on repeated random tokens (`repeated_random_tokens`: BOS, then `seq_len`
random tokens, then the same tokens again; no token repeats within a copy), where the rule reads
"each token of the second copy attends to the token after its first occurrence".
"""

from typing import Any, Callable, Literal, Optional, Union

import pandas as pd
import plotly.graph_objects as go
import torch
from jaxtyping import Float, Int
from torch import Tensor

from analyses._common import TokensLike, as_tokens, check_count
from hookgpt.errors import ArgumentError
from analyses.plotting import heatmap
from hookgpt.model import HookedGPT

Template = Union[
    Float[Tensor, "query_pos key_pos"],
    Float[Tensor, "batch query_pos key_pos"],
    Callable[[Int[Tensor, "pos"]], Float[Tensor, "query_pos key_pos"]],
]

# ------------------------------------------------------------------ data: repeated random tokens


MASKED_LOGIT_GAP = 50.0


def predictable_token_ids(model: HookedGPT) -> Int[Tensor, "n_ids"]:
    """The ids the model can predict: all of them, except ids whose unembedding bias sits more
    than `MASKED_LOGIT_GAP` (50) below the largest bias, which a model was made never to predict
    (`hookgpt-shakespeare` masks the ids that never occur in its corpus with a bias of -100, so
    its full softmax equals the one it was trained with). The rule survives centring the
    unembedding (a shift of every bias)."""
    b_U = model.b_U.detach().float()
    return torch.nonzero(b_U >= b_U.max() - MASKED_LOGIT_GAP).flatten().cpu()


def repeated_random_tokens(
    model: HookedGPT, seq_len: int = 20, batch: int = 8, seed: int = 0, bos_token_id: Optional[int] = None,
    token_ids: Optional[Int[Tensor, "n_ids"]] = None,
) -> Int[Tensor, "batch pos"]:
    """`[batch, 1 + 2 * seq_len]`: BOS, then `seq_len` distinct random tokens, then the same again.

    Seeded (the global RNG is untouched). The BOS id is the tokenizer's, or `d_vocab - 1` for a
    model without a GPT-2 tokenizer; it never appears among the random tokens. The random tokens
    are drawn from `token_ids` (default: `predictable_token_ids(model)`; for most models every
    id, for `hookgpt-shakespeare` the ids of its corpus).
    """
    d_vocab = model.cfg.d_vocab
    check_count(seq_len, "seq_len")
    check_count(batch, "batch")
    if bos_token_id is None:
        bos_token_id = _bos_token_id(model)
    if 1 + 2 * seq_len > model.cfg.n_ctx:
        raise ArgumentError(f"1 + 2 * seq_len = {1 + 2 * seq_len} tokens exceed the model's n_ctx={model.cfg.n_ctx}")
    pool = predictable_token_ids(model) if token_ids is None else torch.as_tensor(token_ids).flatten().long().cpu()
    if token_ids is not None and (len(pool) == 0 or pool.min() < 0 or pool.max() >= d_vocab):
        raise ArgumentError(f"token_ids must be ids in [0, {d_vocab}), got {len(pool)} ids"
                            + (f" in [{int(pool.min())}, {int(pool.max())}]" if len(pool) else ""))
    every_id = len(pool) == d_vocab and bool((pool == torch.arange(d_vocab)).all())
    pool = torch.unique(pool[pool != bos_token_id])
    if seq_len > len(pool):
        raise ArgumentError(f"seq_len={seq_len} distinct tokens need more than seq_len ids to draw from, there are {len(pool)} "
                            f"(d_vocab={d_vocab})")
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(batch):
        if every_id:  # kept as it was, so seeds give the same tokens as before
            random = torch.randperm(d_vocab - 1, generator=generator)[:seq_len]
            random = random + (random >= bos_token_id).long()  # skip the BOS id
        else:
            random = pool[torch.randperm(len(pool), generator=generator)[:seq_len]]
        rows.append(torch.cat([torch.tensor([bos_token_id]), random, random]))
    return torch.stack(rows).to(model.device)


def _bos_token_id(model: HookedGPT) -> int:
    try:
        bos = model.tokenizer.bos_token_id
        if bos < model.cfg.d_vocab:
            return bos
    except (ValueError, AttributeError):
        pass
    return model.cfg.d_vocab - 1


# ------------------------------------------------------------------ templates: where a rule attends


def previous_token_template(tokens: Int[Tensor, "pos"]) -> Float[Tensor, "query_pos key_pos"]:
    """query i -> key i - 1 (row 0 has no target)."""
    n = tokens.shape[0]
    return torch.ones(n - 1, device=tokens.device).diag(-1) if n > 1 else torch.zeros(1, 1, device=tokens.device)


def current_token_template(tokens: Int[Tensor, "pos"]) -> Float[Tensor, "query_pos key_pos"]:
    """query i -> key i."""
    return torch.eye(tokens.shape[0], device=tokens.device)


def first_token_template(tokens: Int[Tensor, "pos"]) -> Float[Tensor, "query_pos key_pos"]:
    """query i -> key 0 (the BOS token)."""
    template = torch.zeros(tokens.shape[0], tokens.shape[0], device=tokens.device)
    template[:, 0] = 1.0
    return template


def duplicate_token_template(tokens: Int[Tensor, "pos"]) -> Float[Tensor, "query_pos key_pos"]:
    """query i -> every earlier key j < i holding the same token."""
    same = tokens[:, None] == tokens[None, :]
    return same.float().tril(diagonal=-1)


def induction_template(tokens: Int[Tensor, "pos"]) -> Float[Tensor, "query_pos key_pos"]:
    """query i -> key j + 1 for every earlier j < i with tokens[j] == tokens[i]."""
    duplicates = duplicate_token_template(tokens)
    shifted = torch.zeros_like(duplicates)
    shifted[:, 1:] = duplicates[:, :-1]  # the token after each earlier occurrence
    return shifted.tril()


SCANS: dict[str, Callable[[Tensor], Tensor]] = {
    "previous_token": previous_token_template,
    "duplicate_token": duplicate_token_template,
    "induction": induction_template,
    "first_token": first_token_template,
    "current_token": current_token_template,
}

# ------------------------------------------------------------------ scoring


def _batched_template(template: Template, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch query_pos key_pos"]:
    batch, n = tokens.shape
    if callable(template):
        template = torch.stack([template(row).float() for row in tokens])
    template = torch.as_tensor(template, device=tokens.device).float()
    if template.ndim == 2 and template.shape == (n, n):
        template = template.expand(batch, n, n)
    if template.shape != (batch, n, n):
        raise ArgumentError(
            f"a template must be [query_pos, key_pos] = {(n, n)} or [batch, query_pos, key_pos], got {tuple(template.shape)}"
        )
    return template


def pattern_scores(
    model: HookedGPT, tokens: Optional[TokensLike] = None, templates: Optional[dict[str, Template]] = None
) -> dict[str, Float[Tensor, "layer n_heads"]]:
    """Score every head against several templates in one forward pass.

    Args:
        model: a HookedGPT.
        tokens: text or ids `[batch, pos]`; default `repeated_random_tokens(model)`.
        templates: name -> template, each a `[query_pos, key_pos]` tensor, a `[batch, query_pos,
            key_pos]` tensor, or a function of one sequence's tokens `[pos]` returning
            `[query_pos, key_pos]`. Default: all of `SCANS`.

    Returns name -> `[n_layers, n_heads]` scores (see the module docstring for the definition).
    Sequences whose template has no target at all are left out of the batch average; if none
    has one, the score is NaN.
    """
    tokens = repeated_random_tokens(model) if tokens is None else as_tokens(model, tokens)
    templates = SCANS if templates is None else templates
    batched = {name: _batched_template(t, tokens) for name, t in templates.items()}
    rows_with_target = {name: (t != 0).any(dim=-1).sum(dim=-1).float() for name, t in batched.items()}  # [batch]
    scores = {name: torch.zeros(model.cfg.n_layers, model.cfg.n_heads) for name in batched}

    def score_pattern(pattern: Float[Tensor, "batch n_heads query_pos key_pos"], hook: Any) -> None:
        layer = int(hook.name.split(".")[1])
        for name, template in batched.items():
            on_template = (pattern * template[:, None]).sum(dim=(-2, -1))  # [batch, n_heads]
            per_sequence = on_template / rows_with_target[name][:, None]  # NaN where no target
            scores[name][layer] = per_sequence.nanmean(dim=0).cpu()

    with torch.no_grad(), model.hooks(fwd_hooks=[(lambda name: name.endswith("attn.hook_pattern"), score_pattern)]):
        model(tokens, stop_at_layer=model.cfg.n_layers)  # no unembedding needed
    return scores


def head_scores(
    model: HookedGPT, tokens: Optional[TokensLike] = None, template: Template = previous_token_template
) -> Float[Tensor, "layer n_heads"]:
    """`[n_layers, n_heads]` scores of every head against one template (a user-supplied
    `[query_pos, key_pos]` tensor or a function of the tokens); see `pattern_scores`."""
    return pattern_scores(model, tokens, {"template": template})["template"]


def previous_token_scores(model: HookedGPT, tokens: Optional[TokensLike] = None) -> Float[Tensor, "layer n_heads"]:
    """How much each head attends from each token to the one before it."""
    return head_scores(model, tokens, previous_token_template)


def current_token_scores(model: HookedGPT, tokens: Optional[TokensLike] = None) -> Float[Tensor, "layer n_heads"]:
    """How much each head attends from each token to itself."""
    return head_scores(model, tokens, current_token_template)


def first_token_scores(model: HookedGPT, tokens: Optional[TokensLike] = None) -> Float[Tensor, "layer n_heads"]:
    """How much each head attends to the first (BOS) token."""
    return head_scores(model, tokens, first_token_template)


def duplicate_token_scores(model: HookedGPT, tokens: Optional[TokensLike] = None) -> Float[Tensor, "layer n_heads"]:
    """How much each head attends from a token to its earlier occurrences (default data:
    repeated random tokens, where every token of the second copy has one)."""
    return head_scores(model, tokens, duplicate_token_template)


def induction_scores(
    model: HookedGPT, seq_len: int = 20, batch: int = 8, seed: int = 0, tokens: Optional[TokensLike] = None
) -> Float[Tensor, "layer n_heads"]:
    """Mean attention from each token of the second copy of a repeated random sequence to the
    token after its first occurrence. `tokens` overrides the generated
    `repeated_random_tokens(model, seq_len, batch, seed)` (the template then follows TL's
    induction rule on those tokens)."""
    if tokens is None:
        tokens = repeated_random_tokens(model, seq_len=seq_len, batch=batch, seed=seed)
    return head_scores(model, tokens, induction_template)


# ------------------------------------------------------------------ presenting scores


def plot_head_scores(scores: Float[Tensor, "layer n_heads"], title: str = "Head scores") -> go.Figure:
    """Heatmap layer x head (layer 0 at the bottom)."""
    layers = [str(l) for l in range(scores.shape[0])]
    return heatmap(scores, y_labels=layers, title=title, x_title="head", y_title="layer", colorbar_title="score")


def top_heads(
    scores: Float[Tensor, "layer n_heads"],
    k: int = 10,
    kind: str = "score",
    order: Literal["largest", "smallest", "abs"] = "largest",
) -> pd.DataFrame:
    """The `k` best-scoring heads as a DataFrame (kind, layer, head, score), best first.
    `kind` names the scan in the table; `order` picks largest, smallest or largest |score|."""
    check_count(k, "k")
    if order not in ("largest", "smallest", "abs"):
        raise ArgumentError(f"order must be 'largest', 'smallest' or 'abs', got {order!r}")
    flat = scores.detach().float().flatten().cpu()
    key = {"largest": flat, "smallest": -flat, "abs": flat.abs()}[order]
    key = torch.where(flat.isnan(), float("-inf"), key)
    best = key.argsort(descending=True)[: min(k, flat.numel())]
    n_heads = scores.shape[1]
    return pd.DataFrame(
        dict(
            kind=kind,
            layer=[int(i) // n_heads for i in best],
            head=[int(i) % n_heads for i in best],
            score=[float(flat[i]) for i in best],
        )
    )


def head_scores_df(scores: dict[str, Float[Tensor, "layer n_heads"]]) -> pd.DataFrame:
    """Long table of several scans: one row per (kind, layer, head)."""
    rows = [
        dict(kind=kind, layer=layer, head=head, score=float(s[layer, head]))
        for kind, s in scores.items()
        for layer in range(s.shape[0])
        for head in range(s.shape[1])
    ]
    return pd.DataFrame(rows)
