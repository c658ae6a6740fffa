"""Generation: greedy equals transformers' generate token for token (single prompts and left-padded
batches), the KV cache changes nothing, hooks see the new positions, sampling is seeded, EOS
stops and pads, streaming, and bad input fails before any compute."""

import pytest
import torch
from hf_utils import GPT2_EOS, GPT2_VOCAB, random_hf_gpt2, save_random_hf_gpt2

from hookgpt import GPTConfig, HookedGPT
from hookgpt import tokenizer as tok
from hookgpt.generate import sample_next_token
from hookgpt.loading import from_pretrained

PROMPTS = ["The quick brown fox", "Hello", "In a hole in the ground there lived a hobbit. Not a nasty"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A random GPT-2 with GPT-2's vocabulary (so the real tokenizer works), in HF and hookgpt."""
    directory = tmp_path_factory.mktemp("gen")
    hf_model = save_random_hf_gpt2(directory, vocab_size=GPT2_VOCAB, n_positions=96, n_embd=64, n_head=4, n_layer=2)
    return from_pretrained(directory), hf_model


def hf_generate(hf_model, tokens, max_new_tokens, attention_mask=None, **kwargs):
    kwargs.setdefault("eos_token_id", GPT2_EOS)
    kwargs.setdefault("pad_token_id", GPT2_EOS)
    with torch.no_grad():
        return hf_model.generate(
            tokens,
            attention_mask=torch.ones_like(tokens) if attention_mask is None else attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            **kwargs,
        )


# ---------------------------------------------------------------------------------------------
# Same tokens as transformers
# ---------------------------------------------------------------------------------------------


def test_greedy_matches_transformers(pair):
    model, hf_model = pair
    tokens = model.to_tokens(PROMPTS[0])
    ours = model.generate(tokens, max_new_tokens=30)
    assert ours.shape == (1, tokens.shape[1] + 30)
    assert ours.tolist() == hf_generate(hf_model, tokens, 30).tolist()
    assert len(set(ours[0, tokens.shape[1] :].tolist())) > 3  # not a degenerate repeat


def test_left_padded_batch_matches_transformers(pair):
    model, hf_model = pair
    tokens, mask = tok.to_tokens_with_mask(model.tokenizer, PROMPTS, padding_side="left")
    ours = model.generate(tokens, max_new_tokens=20, attention_mask=mask)
    assert ours.tolist() == hf_generate(hf_model, tokens, 20, attention_mask=mask).tolist()
    # each row continues exactly as it would alone
    for row, prompt in enumerate(PROMPTS):
        alone = model.generate(model.to_tokens(prompt), max_new_tokens=20)
        assert ours[row, -20:].tolist() == alone[0, -20:].tolist()


def test_text_batch_is_left_padded_like_transformers(pair):
    model, hf_model = pair
    texts = model.generate(PROMPTS, max_new_tokens=12)
    tokens, mask = tok.to_tokens_with_mask(model.tokenizer, PROMPTS, padding_side="left")
    expected = hf_generate(hf_model, tokens, 12, attention_mask=mask)[:, -12:]
    assert texts == [p + model.tokenizer.decode(row) for p, row in zip(PROMPTS, expected)]
    assert isinstance(model.generate(PROMPTS[0], max_new_tokens=3), str)


@pytest.mark.parametrize("batched", [False, True])
def test_kv_cache_changes_nothing(pair, batched):
    model, _ = pair
    prompts = PROMPTS if batched else PROMPTS[0]
    with_cache = model.generate(prompts, max_new_tokens=25, return_type="tokens")
    without = model.generate(prompts, max_new_tokens=25, return_type="tokens", use_kv_cache=False)
    assert torch.equal(with_cache, without)


def test_eos_stops_and_pads_like_transformers(pair):
    model, hf_model = pair
    tokens, mask = tok.to_tokens_with_mask(model.tokenizer, PROMPTS, padding_side="left")
    free = model.generate(tokens, max_new_tokens=15, attention_mask=mask, stop_at_eos=False)
    eos = int(free[0, tokens.shape[1] + 4])  # row 0 emits this token at step 5: call it EOS
    ours = model.generate(tokens, max_new_tokens=15, attention_mask=mask, eos_token_id=eos)
    theirs = hf_generate(hf_model, tokens, 15, attention_mask=mask, eos_token_id=eos, pad_token_id=eos)
    assert ours.tolist() == theirs.tolist()
    new = ours[:, tokens.shape[1] :]
    # row 0 stops at step 5, then holds the padding (the EOS id) until every row stops
    assert (new[0, 4:] == eos).all() and (new[0, :4] != eos).all()
    # text stops before the EOS token
    assert model.generate(PROMPTS[0], max_new_tokens=15, eos_token_id=eos) == PROMPTS[0] + model.tokenizer.decode(new[0, :4])


def test_all_rows_finishing_ends_the_loop_early(pair):
    model, _ = pair
    tokens = model.to_tokens(PROMPTS[1])
    first = int(model.generate(tokens, max_new_tokens=1)[0, -1])
    out = model.generate(tokens, max_new_tokens=50, eos_token_id=first)
    assert out.shape[1] == tokens.shape[1] + 1 and int(out[0, -1]) == first
    assert model.generate(PROMPTS[1], max_new_tokens=50, eos_token_id=first) == PROMPTS[1]


def test_default_eos_is_the_tokenizers(pair, monkeypatch):
    model, _ = pair
    seen = []
    original = torch.isin

    def spy(elements, test_elements, **kwargs):
        seen.append(test_elements.tolist())
        return original(elements, test_elements, **kwargs)

    monkeypatch.setattr(torch, "isin", spy)
    model.generate("Hi", max_new_tokens=2)
    assert seen and seen[0] == [GPT2_EOS]


# ---------------------------------------------------------------------------------------------
# Hooks during generation
# ---------------------------------------------------------------------------------------------


def test_hooks_see_each_new_position(pair):
    model, _ = pair
    tokens = model.to_tokens(PROMPTS[:2], padding_side="left")
    batch, n_prompt = tokens.shape
    shapes = {"resid": [], "pattern": [], "q": []}

    def record(kind):
        return lambda act, hook: shapes[kind].append(tuple(act.shape))

    hooks = [
        ("blocks.1.hook_resid_post", record("resid")),
        ("blocks.0.attn.hook_pattern", record("pattern")),
        ("blocks.0.attn.hook_q", record("q")),
    ]
    with model.hooks(fwd_hooks=hooks):
        model.generate(PROMPTS[:2], max_new_tokens=4)
    d_model, n_heads, d_head = model.cfg.d_model, model.cfg.n_heads, model.cfg.d_head
    assert shapes["resid"] == [(batch, n_prompt, d_model)] + [(batch, 1, d_model)] * 3
    assert shapes["q"] == [(batch, n_prompt, n_heads, d_head)] + [(batch, 1, n_heads, d_head)] * 3
    assert shapes["pattern"] == [(batch, n_heads, n_prompt, n_prompt)] + [(batch, n_heads, 1, n_prompt + i) for i in (1, 2, 3)]
    assert all(not hp.has_hooks for hp in model.hook_points())


def test_observing_the_pattern_does_not_change_the_output(pair):
    model, _ = pair
    plain = model.generate(PROMPTS, max_new_tokens=8)
    with model.hooks(fwd_hooks=[(lambda name: name.endswith("hook_pattern"), lambda act, hook: None)]):
        observed = model.generate(PROMPTS, max_new_tokens=8)
    assert observed == plain


def test_editing_hooks_steer_generation(pair):
    model, _ = pair

    def zero(act, hook):
        return torch.zeros_like(act)

    # a zero final residual stream leaves logits = b_U = 0 everywhere: argmax picks token 0
    with model.hooks(fwd_hooks=[("ln_final.hook_normalized", zero)]):
        out = model.generate(model.to_tokens("Hi"), max_new_tokens=3)
    assert out[0, -3:].tolist() == [0, 0, 0]


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------


def test_sampling_is_seeded(pair):
    model, _ = pair
    a = model.generate(PROMPTS[0], max_new_tokens=12, do_sample=True, seed=7)
    b = model.generate(PROMPTS[0], max_new_tokens=12, do_sample=True, seed=7)
    c = model.generate(PROMPTS[0], max_new_tokens=12, do_sample=True, seed=8)
    assert a == b and a != c


def test_sampling_limits_reduce_to_greedy(pair):
    model, _ = pair
    greedy = model.generate(PROMPTS, max_new_tokens=10)
    assert model.generate(PROMPTS, max_new_tokens=10, do_sample=True, top_k=1, seed=0) == greedy
    assert model.generate(PROMPTS, max_new_tokens=10, do_sample=True, top_p=1e-6, seed=0) == greedy
    assert model.generate(PROMPTS, max_new_tokens=10, do_sample=True, temperature=0.0, seed=0) == greedy


def test_top_k_and_top_p_restrict_the_support():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0, -1.0]]).repeat(2000, 1)
    gen = torch.Generator().manual_seed(0)
    top_k = sample_next_token(logits, do_sample=True, top_k=3, generator=gen)
    assert set(top_k.tolist()) == {0, 1, 2}
    probs = logits[0].softmax(-1)  # [0.64, 0.23, 0.09, ...]: the 0.8 nucleus is tokens 0 and 1
    assert probs[:1].sum() < 0.8 < probs[:2].sum()
    top_p = sample_next_token(logits, do_sample=True, top_p=0.8, generator=gen)
    assert set(top_p.tolist()) == {0, 1}
    counts = torch.bincount(top_p, minlength=2).float() / len(top_p)
    assert abs(float(counts[0]) - float(probs[0] / probs[:2].sum())) < 0.05
    hot = sample_next_token(logits, do_sample=True, temperature=100.0, generator=gen)
    assert len(set(hot.tolist())) == 6


# ---------------------------------------------------------------------------------------------
# Streaming, return types
# ---------------------------------------------------------------------------------------------


def test_streaming_text_adds_up(pair):
    model, _ = pair
    full = model.generate(PROMPTS[0], max_new_tokens=15)
    pieces = list(model.generate(PROMPTS[0], max_new_tokens=15, stream=True))
    assert all(isinstance(p, str) for p in pieces)
    assert PROMPTS[0] + "".join(pieces) == full
    batch = list(model.generate(PROMPTS, max_new_tokens=15, stream=True))
    assert [p + "".join(step[row] for step in batch) for row, p in enumerate(PROMPTS)] == model.generate(PROMPTS, max_new_tokens=15)


def test_streaming_tokens(pair):
    model, _ = pair
    tokens = model.to_tokens(PROMPTS[0])
    steps = model.generate(tokens, max_new_tokens=6, stream=True)
    first = next(steps)  # lazy: one step computed
    assert first.shape == (1,)
    rest = list(steps)
    assert torch.stack([first, *rest], dim=1).tolist() == model.generate(tokens, max_new_tokens=6)[:, -6:].tolist()


def test_streaming_holds_back_partial_characters(pair):
    model, _ = pair
    emoji = model.tokenizer.encode("🦊")  # several tokens, the first not valid UTF-8 alone
    assert len(emoji) > 1 and "\ufffd" in model.tokenizer.decode(emoji[:1])
    from hookgpt.generate import _stream_text

    steps = iter([torch.tensor([t]) for t in emoji + model.tokenizer.encode(" ok")])
    pieces = list(_stream_text(model, steps, "x", None))
    assert "".join(pieces) == "🦊 ok" and not any("\ufffd" in p for p in pieces)


def test_return_types(pair):
    model, _ = pair
    tokens = model.to_tokens(PROMPTS[0])
    one_d = model.generate(tokens[0], max_new_tokens=3)
    assert one_d.ndim == 1 and one_d.shape[0] == tokens.shape[1] + 3
    as_text = model.generate(tokens, max_new_tokens=3, return_type="str")
    assert as_text == ["<|endoftext|>" + model.generate(PROMPTS[0], max_new_tokens=3)]
    as_tokens = model.generate(PROMPTS[0], max_new_tokens=3, return_type="tokens")
    assert torch.equal(as_tokens, model.generate(tokens, max_new_tokens=3))
    assert torch.equal(model.generate(tokens, max_new_tokens=0), tokens)
    assert model.generate(PROMPTS[0], max_new_tokens=3, prepend_bos=False) != model.generate(PROMPTS[0], max_new_tokens=3)


def test_progress_bar_is_opt_in(pair, capsys):
    model, _ = pair
    quiet = model.generate("Hi", max_new_tokens=2)
    assert capsys.readouterr().err == ""
    assert model.generate("Hi", max_new_tokens=2, verbose=True) == quiet
    assert "".join(model.generate("Hi", max_new_tokens=2, verbose=True, stream=True)) == quiet[2:]


def test_model_without_tokenizer_generates_tokens():
    torch.manual_seed(0)
    model = HookedGPT(GPTConfig(n_layers=1, d_model=32, n_heads=4, d_vocab=100, n_ctx=32))
    out = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=5)
    assert out.shape == (1, 8)
    assert torch.equal(out, model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=5, use_kv_cache=False))


# ---------------------------------------------------------------------------------------------
# Bad input: clear errors before any compute
# ---------------------------------------------------------------------------------------------


def count_forwards(model):
    calls = []
    handles = model.add_hook("hook_embed", lambda act, hook: calls.append(1))
    return calls, handles


def test_too_long_for_the_context(pair):
    model, _ = pair
    n_ctx = model.cfg.n_ctx
    tokens = torch.randint(0, 1000, (1, n_ctx - 5))
    calls, handles = count_forwards(model)
    try:
        with pytest.raises(ValueError, match=r"max_new_tokens=10.*n_ctx=96.*truncate=True"):
            model.generate(tokens, max_new_tokens=10)
        with pytest.raises(ValueError, match="n_ctx=96"):
            model.generate(torch.randint(0, 1000, (1, n_ctx + 1)), max_new_tokens=1)
        assert calls == []
    finally:
        for h in handles:
            h.remove()
    out = model.generate(tokens, max_new_tokens=10, truncate=True)
    assert out.shape == (1, n_ctx - 5 + 10)
    assert torch.equal(out[:, -10:], model.generate(tokens[:, -(n_ctx - 10) :], max_new_tokens=10)[:, -10:])
    with pytest.raises(ValueError, match="n_ctx"):
        model.generate(tokens, max_new_tokens=n_ctx, truncate=True)


def test_out_of_range_ids(pair):
    model, _ = pair
    calls, handles = count_forwards(model)
    try:
        with pytest.raises(ValueError, match="token id 50257 .* out of range"):
            model.generate(torch.tensor([[1, 50257, 3]]), max_new_tokens=3)
        with pytest.raises(ValueError, match="token id -1"):
            model.generate(torch.tensor([[-1, 2]]), max_new_tokens=3)
        assert calls == []
    finally:
        for h in handles:
            h.remove()
    with pytest.raises(TypeError):  # "must be an integer tensor" (or the runtime type checker's error)
        model.generate(torch.tensor([[1.0, 2.0]]), max_new_tokens=3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_new_tokens=-1), "max_new_tokens"),
        (dict(temperature=-1.0), "temperature"),
        (dict(top_k=0), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(return_type="logits"), "return_type"),
        (dict(eos_token_id=10**6), "eos_token_id"),
    ],
)
def test_bad_options(pair, kwargs, message):
    model, _ = pair
    kwargs.setdefault("max_new_tokens", 3)
    with pytest.raises(ValueError, match=message):
        model.generate("Hi", **kwargs)


def test_right_padding_is_rejected(pair):
    model, _ = pair
    tokens = torch.tensor([[5, 6, 7], [5, 6, GPT2_EOS]])
    with pytest.raises(ValueError, match="LEFT padding"):
        model.generate(tokens, attention_mask=torch.tensor([[1, 1, 1], [1, 1, 0]]), max_new_tokens=2)
    with pytest.raises(ValueError, match="only for token input"):
        model.generate("Hi", attention_mask=torch.ones(1, 2, dtype=torch.long), max_new_tokens=2)


def test_generate_on_small_random_hf_model_matches(tmp_path):
    """A model without GPT-2's vocabulary: token ids in, token ids out, still equal to HF."""
    hf_model = random_hf_gpt2(vocab_size=300, n_positions=48, seed=5)
    hf_model.save_pretrained(tmp_path)
    model = from_pretrained(tmp_path)
    tokens = torch.randint(0, 300, (2, 6), generator=torch.Generator().manual_seed(1))
    ours = model.generate(tokens, max_new_tokens=20, eos_token_id=299)
    with torch.no_grad():
        theirs = hf_model.generate(tokens, attention_mask=torch.ones_like(tokens), max_new_tokens=20, do_sample=False, eos_token_id=299, pad_token_id=299)
    assert ours.tolist() == theirs.tolist()


def test_a_tiny_temperature_samples_the_argmax_instead_of_failing():
    # found by the random bad-input test: logits / 9e-80 overflowed to +inf and softmax gave NaN
    from hookgpt.generate import sample_next_token

    logits = torch.tensor([[1.0, 3.0, 2.0], [0.5, -1.0, 0.25]])
    picked = sample_next_token(logits, do_sample=True, temperature=9e-80, generator=torch.Generator().manual_seed(0))
    assert picked.tolist() == [1, 0]
