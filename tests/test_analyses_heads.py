"""Head scans: known answers on a hand-built model, agreement with TransformerLens' definitions."""

import math

import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from analyses import heads
from hookgpt import GPTConfig, HookedGPT
from helpers import no_hooks

CFG = dict(n_layers=2, d_model=64, n_heads=4, d_vocab=1000, n_ctx=64)
THETA = math.pi / 64  # angle between consecutive positions
CURRENT, PREVIOUS, FIRST = "current", "previous", "first"
# head roles of the hand-built model: [layer][head]
ROLES = [[CURRENT, PREVIOUS, FIRST, CURRENT], [CURRENT, CURRENT, FIRST, CURRENT]]


def hand_built_model() -> HookedGPT:
    """Position p is the point (cos p*theta, sin p*theta) of a circle (dims 0, 1; mirrored in dims
    2, 3 so the residual has mean 0 and every position the same LayerNorm scale). Nothing writes
    to the residual stream (W_O = W_out = 0), so every layer reads the positions alone. A head's
    query and key are that point, scaled up; the key rotated by one step makes the query at p
    match the key at p - 1 (previous-token head); a constant query (1, 0) matches position 0 best
    (first-token head); unrotated, a position matches itself (current-token head)."""
    model = HookedGPT(GPTConfig(**CFG))
    positions = torch.arange(CFG["n_ctx"]) * THETA
    scale = 60.0  # sharp attention: the best key beats its neighbours by ~35 nats
    rotate = torch.tensor([[math.cos(THETA), math.sin(THETA)], [-math.sin(THETA), math.cos(THETA)]])  # row vector @ rotate = rotated by +theta
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        for block in model.blocks:
            block.ln1.w.fill_(1.0)
            block.ln2.w.fill_(1.0)
        model.ln_final.w.fill_(1.0)
        model.pos_embed.W_pos[:, 0], model.pos_embed.W_pos[:, 1] = positions.cos(), positions.sin()
        model.pos_embed.W_pos[:, 2], model.pos_embed.W_pos[:, 3] = -positions.cos(), -positions.sin()
        ln_gain = 1 / math.sqrt(2 / CFG["d_model"])  # 1 / LayerNorm scale of every position
        for layer, roles in enumerate(ROLES):
            attn = model.blocks[layer].attn
            for head, role in enumerate(roles):
                attn.W_K[head, :2, :2] = scale * (rotate if role == PREVIOUS else torch.eye(2))
                if role == FIRST:
                    attn.b_Q[head, 0] = scale * ln_gain
                else:
                    attn.W_Q[head, :2, :2] = scale * torch.eye(2)
    return model


@pytest.fixture(scope="module")
def built():
    return hand_built_model().eval()


@pytest.fixture(scope="module")
def random_model():
    torch.manual_seed(0)
    model = HookedGPT(GPTConfig(**CFG)).eval()
    with torch.no_grad():
        for block in model.blocks:  # sharper, more varied patterns than the default init
            block.attn.W_Q.mul_(20)
            block.attn.W_K.mul_(20)
    return model


def expected(role: str) -> torch.Tensor:
    return torch.tensor([[1.0 if r == role else 0.0 for r in layer] for layer in ROLES])


def test_hand_built_heads_attend_as_designed(built):
    tokens = heads.repeated_random_tokens(built, seq_len=10, batch=2)
    _, cache = built.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    n = tokens.shape[1]
    prev = cache["pattern", 0][:, 1]  # head 0.1
    assert torch.allclose(prev[:, 1:, :].argmax(-1), torch.arange(n - 1).expand(2, -1))
    assert prev[:, 1:].max(-1).values.min() > 0.999


def test_previous_token_scan_finds_head_0_1(built):
    scores = heads.previous_token_scores(built)
    assert scores.shape == (2, 4)
    assert scores[0, 1] == pytest.approx(1.0, abs=1e-3)
    others = scores.clone()
    others[0, 1] = 0
    assert others.abs().max() < 0.05  # first-token heads get 1/(n-1): at query 1 the previous token is BOS
    assert no_hooks(built)


def test_current_and_first_token_scans(built):
    tokens = heads.repeated_random_tokens(built, seq_len=20, batch=3, seed=1)
    n = tokens.shape[1]
    current = heads.current_token_scores(built, tokens)
    first = heads.first_token_scores(built, tokens)
    # every row has a target: a head doing something else still gets row 0 (key 0 is current and first)
    assert torch.allclose(current, expected(CURRENT) + (1 - expected(CURRENT)) / n, atol=1e-3)
    first_expected = expected(FIRST) + (1 - expected(FIRST)) / n
    first_expected[0, 1] += 1 / n  # the previous-token head's query 1 looks at BOS too
    assert torch.allclose(first, first_expected, atol=1e-3)


def test_user_template_tensor_and_function(built):
    tokens = heads.repeated_random_tokens(built, seq_len=8, batch=2)
    n = tokens.shape[1]
    as_tensor = heads.head_scores(built, tokens, torch.ones(n - 1).diag(-1))
    as_function = heads.head_scores(built, tokens, heads.previous_token_template)
    assert torch.equal(as_tensor, as_function)
    with pytest.raises(ValueError, match="template"):
        heads.head_scores(built, tokens, torch.ones(3, 3))
    assert no_hooks(built)


def test_induction_score_with_an_induction_pattern(built):
    """Replace head 1.0's pattern by exact induction attention (rows without a target attend to
    BOS): it scores 1, every head of the hand-built model ~0."""
    seq_len = 12
    tokens = heads.repeated_random_tokens(built, seq_len=seq_len, batch=2)
    n = tokens.shape[1]
    ideal = torch.zeros(n, n)
    ideal[:, 0] = 1
    for i in range(seq_len + 1, n):  # the second copy attends to the token after the first occurrence
        ideal[i] = 0
        ideal[i, i - seq_len + 1] = 1

    def induction_head(pattern, hook):
        pattern = pattern.clone()
        pattern[:, 0] = ideal
        return pattern

    assert heads.induction_scores(built, tokens=tokens).abs().max() < 0.05
    with built.hooks(fwd_hooks=[("blocks.1.attn.hook_pattern", induction_head)]):
        scores = heads.induction_scores(built, tokens=tokens)
    assert scores[1, 0] == pytest.approx(1.0, abs=1e-6)
    assert no_hooks(built)


def test_repeated_random_tokens():
    model = HookedGPT(GPTConfig(**CFG))
    a = heads.repeated_random_tokens(model, seq_len=15, batch=4, seed=3)
    b = heads.repeated_random_tokens(model, seq_len=15, batch=4, seed=3)
    assert torch.equal(a, b) and a.shape == (4, 31)
    bos = CFG["d_vocab"] - 1
    assert (a[:, 0] == bos).all() and torch.equal(a[:, 1:16], a[:, 16:])
    for row in a:
        assert len(set(row[1:16].tolist())) == 15 and bos not in row[1:].tolist()
    with pytest.raises(ValueError, match="n_ctx"):
        heads.repeated_random_tokens(model, seq_len=40)



def test_repeated_random_tokens_draw_only_predictable_ids():
    """Ids masked by a very negative unembedding bias (as hookgpt-shakespeare masks the ids its
    corpus lacks) are never drawn; centring the biases keeps the same ids; explicit token_ids win."""
    model = HookedGPT(GPTConfig(**CFG))
    masked = torch.arange(0, CFG["d_vocab"], 3)
    with torch.no_grad():
        model.b_U[masked] = -100.0
    allowed = set(heads.predictable_token_ids(model).tolist())
    assert allowed == set(range(CFG["d_vocab"])) - set(masked.tolist())
    tokens = heads.repeated_random_tokens(model, seq_len=30, batch=6, seed=0)
    assert set(tokens[:, 1:].flatten().tolist()) <= allowed
    with torch.no_grad():
        model.b_U.sub_(model.b_U.mean())  # what centring the unembedding does
    assert set(heads.predictable_token_ids(model).tolist()) == allowed
    chosen = torch.arange(100, 140)
    tokens = heads.repeated_random_tokens(model, seq_len=20, batch=3, token_ids=chosen)
    assert set(tokens[:, 1:].flatten().tolist()) <= set(chosen.tolist())
    with pytest.raises(ValueError, match="token_ids"):
        heads.repeated_random_tokens(model, token_ids=torch.tensor([5, CFG["d_vocab"]]))
    with pytest.raises(ValueError, match="seq_len=20 distinct"):
        heads.repeated_random_tokens(model, seq_len=20, token_ids=torch.arange(10))

# ---- TransformerLens' head_detector, transcribed (exclude_bos=False, exclude_current_token=False, "mul")


def tl_previous(tokens):
    n = tokens.shape[0]
    pattern = torch.zeros(n, n)
    pattern[1:, :-1] = torch.eye(n - 1)
    return torch.tril(pattern)


def tl_duplicate(tokens):
    token_pattern = tokens.repeat(tokens.shape[0], 1).numpy()
    eq_mask = torch.tensor(token_pattern == token_pattern.T).int()
    eq_mask.fill_diagonal_(0)
    return torch.tril(eq_mask.float())


def tl_induction(tokens):
    duplicate = tl_duplicate(tokens)
    shifted = torch.roll(duplicate, shifts=1, dims=1)
    return torch.tril(torch.cat((torch.zeros(duplicate.shape[0], 1), shifted[:, 1:]), dim=1))


def tl_score(pattern, template):
    return (pattern * template).sum() / pattern.sum()


@pytest.mark.parametrize(
    "ours, tl",
    [
        (heads.previous_token_template, tl_previous),
        (heads.duplicate_token_template, tl_duplicate),
        (heads.induction_template, tl_induction),
    ],
)
def test_templates_match_transformer_lens(ours, tl):
    for seed in range(3):
        tokens = torch.randint(0, 6, (15,), generator=torch.Generator().manual_seed(seed))  # many repeats
        assert torch.equal(ours(tokens), tl(tokens))


@pytest.mark.parametrize("name", ["previous_token", "duplicate_token", "induction", "current_token", "first_token"])
def test_scores_are_transformer_lens_scores_renormalised(random_model, name):
    tokens = heads.repeated_random_tokens(random_model, seq_len=10, batch=3)
    n = tokens.shape[1]
    template = heads.SCANS[name]
    ours = heads.pattern_scores(random_model, tokens, {name: template})[name]
    _, cache = random_model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    before = {k: v.clone() for k, v in cache.items()}
    tl = torch.zeros(tokens.shape[0], 2, 4)
    rows = torch.zeros(tokens.shape[0])
    for b, seq in enumerate(tokens):
        t = template(seq)
        rows[b] = (t != 0).any(-1).sum()
        for layer in range(2):
            for head in range(4):
                tl[b, layer, head] = tl_score(cache["pattern", layer][b, head], t)
    assert torch.allclose(ours, (tl * n / rows[:, None, None]).mean(0), atol=1e-5)
    if name in ("current_token", "first_token"):  # every row has a target: identical to TL
        assert torch.allclose(ours, tl.mean(0), atol=1e-5)
    assert all(torch.equal(before[k], cache[k]) for k in before)


def test_top_heads_and_figures(built):
    scores = heads.pattern_scores(built)
    df = heads.top_heads(scores["previous_token"], k=3, kind="previous_token")
    assert isinstance(df, pd.DataFrame) and list(df.columns) == ["kind", "layer", "head", "score"]
    assert (df.layer[0], df["head"][0]) == (0, 1)
    assert df.score.is_monotonic_decreasing
    smallest = heads.top_heads(scores["previous_token"], k=2, order="smallest")
    assert smallest.score.is_monotonic_increasing
    long = heads.head_scores_df(scores)
    assert len(long) == len(scores) * 8
    assert isinstance(heads.plot_head_scores(scores["induction"]), go.Figure)
    assert no_hooks(built)
