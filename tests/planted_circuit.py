"""A hand-built 2-layer attention-only model with a planted two-head circuit, for known-answer
tests of `analyses.circuits`.

The task: say token `Z` at the last position when the prompt has the signal token `S` at
position `SIGNAL_POS`. The circuit:

- head A (`L0H0`), a previous-token head: at every position it writes `flag` if the token
  before is `S`, else `noflag` (so every position gets one feature from it);
- head B (`L1H0`), at the last position: its query is constant, its key reads `flag` (which
  only A writes), so it attends to the position right after `S`; its value reads the position,
  and it writes "I attended to position p" (`out_p`); the unembedding turns `out_{SIGNAL_POS+1}`
  into the logit of `Z`.

So B depends on A through its key only: B's query and value read the embeddings, which are the
same in the clean and the corrupted prompt (where `S` is replaced by another token) except at the
signal position, where they read nothing that changes. The other head of each layer, and every
other weight, is tiny random noise ("everything else weak").

LayerNorm is handled by construction: the residual stream is built from features `e_a - e_a'`
(a dimension and its mirror), so every vector has mean zero and centring does nothing; every
position holds the same number of features (token, constant, position; then A's flag or noflag),
so the scale is constant at ln1, and each ln1 gain is set to that scale to pass its input
through unchanged.
"""

import math

import torch

from hookgpt import GPTConfig, HookedGPT

BOS, S, Z = 0, 1, 2  # other tokens: 3 .. VOCAB - 1
VOCAB = 12
N_CTX = 12
SIGNAL_POS = 3  # where S sits in a clean prompt; B attends to SIGNAL_POS + 1
FEATURES = dict(token=VOCAB, const=1, pos=N_CTX, flag=1, noflag=1, out=N_CTX)
N_FEATURES = sum(FEATURES.values())
D_MODEL = 2 * N_FEATURES
D_HEAD = N_CTX
SHARPNESS = 12.0  # attention score of a match (before softmax)
CONFIDENCE = 8.0  # logit of Z when B attends to the position after S
A, B = "L0H0", "L1H0"


def _offset(kind: str) -> int:
    return sum(list(FEATURES.values())[: list(FEATURES).index(kind)])


def feature(kind: str, i: int = 0) -> torch.Tensor:
    """The residual-stream direction of feature `i` of `kind`: e_a - e_a' (mean zero)."""
    v = torch.zeros(D_MODEL, dtype=torch.float64)
    a = _offset(kind) + i
    v[a], v[N_FEATURES + a] = 1.0, -1.0
    return v


def reader(kind: str, i: int = 0) -> torch.Tensor:
    """A read direction: reader . feature(kind, i) = 1, and 0 on every other feature."""
    return feature(kind, i) / 2


def planted_model(noise: float = 0.01, seed: int = 0) -> HookedGPT:
    cfg = GPTConfig(
        n_layers=2, d_model=D_MODEL, n_heads=2, d_head=D_HEAD, d_vocab=VOCAB, n_ctx=N_CTX, attn_only=True, dtype=torch.float64
    )
    model = HookedGPT(cfg).eval()
    g = math.sqrt(SHARPNESS * math.sqrt(D_HEAD))  # q . k / sqrt(d_head) = SHARPNESS for a match
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():  # everything weak ...
            param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float64) * noise)
        a, b = model.blocks[0].attn, model.blocks[1].attn
        for attn in (a, b):  # ... except the two heads of the circuit, built exactly
            for w in (attn.W_Q, attn.W_K, attn.W_V, attn.W_O, attn.b_Q, attn.b_K, attn.b_V):
                w[0] = 0.0
            attn.b_O.zero_()
        for t in range(VOCAB):
            model.embed.W_E[t] = feature("token", t) + feature("const")
        for p in range(N_CTX):
            model.pos_embed.W_pos[p] = feature("pos", p)
            a.W_Q[0, :, p] = g * reader("pos", p)  # head A: position p attends to p - 1
            if p + 1 < D_HEAD:
                a.W_K[0, :, p + 1] = g * reader("pos", p)
            b.W_V[0, :, p] = reader("pos", p)  # head B's value: the position it attends to
            b.W_O[0, p] = feature("out", p)
        # head A's value: e0 = 1 for every token (the constant), e1 = 1 for S; it writes
        # noflag + (flag - noflag) * [S]: flag after S, noflag elsewhere
        a.W_V[0, :, 0] = reader("const")
        a.W_V[0, :, 1] = reader("token", S)
        a.W_O[0, 0] = feature("noflag")
        a.W_O[0, 1] = feature("flag") - feature("noflag")
        b.W_Q[0, :, 0] = g * reader("const")  # head B: a constant query ...
        b.W_K[0, :, 0] = g * reader("flag")  # ... that matches A's flag
        model.unembed.W_U.zero_()
        model.unembed.W_U[:, Z] = CONFIDENCE * reader("out", SIGNAL_POS + 1)
        model.unembed.b_U.zero_()
        # LayerNorm: each feature has squared norm 2; layer 0 sees token + const + pos, layer 1
        # also A's flag or noflag
        for ln, n in ((model.blocks[0].ln1, 3), (model.blocks[1].ln1, 4), (model.ln_final, 5)):
            ln.w.fill_(math.sqrt(2 * n / D_MODEL))
            ln.b.zero_()
    return model


def planted_prompts(batch: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean, corrupted) `[batch, N_CTX]`: BOS and random tokens, with S at SIGNAL_POS in the
    clean prompts and another random token there in the corrupted ones (the same elsewhere)."""
    generator = torch.Generator().manual_seed(seed)
    clean = torch.randint(3, VOCAB, (batch, N_CTX), generator=generator)
    clean[:, 0] = BOS
    corrupted = clean.clone()
    clean[:, SIGNAL_POS] = S
    return clean, corrupted


def metric(logits: torch.Tensor) -> torch.Tensor:
    """Mean log-prob of Z at the read position (the last)."""
    return logits.log_softmax(-1)[..., Z].mean()
