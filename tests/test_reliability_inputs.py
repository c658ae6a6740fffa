"""Bad input to the model, the hooks, generation and the analyses: each is refused with one of
hookgpt's documented errors (`hookgpt.errors`), whose message names the argument, never a bare
IndexError/RuntimeError from inside torch and never a silently wrong answer.

The first part is a table of the cases found by hand (each reproduces a defect that was there);
the second throws random bad inputs at the same functions with hypothesis.
"""

import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY, no_hooks
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analyses import attribution, collect, heads, logit_lens
from hookgpt import GPTConfig, HookedGPT, KVCache
from hookgpt.errors import (
    ArgumentError,
    ArgumentTypeError,
    HookgptError,
    HookOutputError,
    HookShapeError,
    IndexRangeError,
    UnknownNameError,
)
from hookgpt.generate import generate


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return HookedGPT(GPTConfig(**TINY)).eval()


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 1000, (2, 6), generator=torch.Generator().manual_seed(0))


_SCRATCH: dict = {}


@pytest.fixture(scope="module", autouse=True)
def scratch_dir(tmp_path_factory):
    _SCRATCH["dir"] = tmp_path_factory.mktemp("scratch")
    yield
    _SCRATCH.clear()


def scratch():
    """A folder for the collect calls (under pytest's tmp, never a fixed path)."""
    if "dir" not in _SCRATCH:  # the table used outside pytest
        _SCRATCH["dir"] = Path(tempfile.mkdtemp(prefix="hookgpt-scratch-"))
    return _SCRATCH["dir"] / "acts"


def replace_with(value):
    return lambda act, hook: value(act)


# (description, call(model, tokens), error type, a fragment the message must hold)
CASES = [
    ("float token ids", lambda m, t: m(t.float()), ArgumentTypeError, "input: token ids must be an integer tensor"),
    ("empty batch [0, pos]", lambda m, t: m(t[:0]), ArgumentError, "empty batch"),
    ("0-D token tensor", lambda m, t: m(t[0, 0]), ArgumentError, "input: token ids must have shape"),
    ("token id out of range", lambda m, t: m(t + 1000), ArgumentError, "d_vocab=1000"),
    ("sequence longer than n_ctx", lambda m, t: m(t.repeat(1, 11)), ArgumentError, "n_ctx=64"),
    ("numpy token ids", lambda m, t: m(t.numpy()), ArgumentTypeError, "input: expected text"),
    ("list of ints as input", lambda m, t: m([1, 2, 3]), ArgumentError, "or feed token ids"),
    ("return_type typo", lambda m, t: m(t, return_type="logit"), ArgumentError, "return_type"),
    ("attention_mask of 0.5", lambda m, t: m(t, attention_mask=torch.full(t.shape, 0.5)), ArgumentError, "attention_mask must hold only 0"),
    ("attention_mask of 2s", lambda m, t: m(t, attention_mask=torch.full(t.shape, 2)), ArgumentError, "found 2"),
    ("attention_mask of -1s", lambda m, t: m(t, attention_mask=-torch.ones_like(t)), ArgumentError, "found -1"),
    ("attention_mask row of zeros", lambda m, t: m(t, attention_mask=torch.stack([torch.ones(6), torch.zeros(6)]).long()), ArgumentError, "row 1 is all zeros"),
    ("attention_mask of wrong shape", lambda m, t: m(t, attention_mask=torch.ones(2, 5)), ArgumentError, "attention_mask has shape (2, 5)"),
    ("attention_mask a string", lambda m, t: m(t, attention_mask="all"), ArgumentTypeError, "attention_mask must be a tensor"),
    ("float start_at_layer", lambda m, t: m(torch.randn(2, 6, 64), start_at_layer=1.0), ArgumentTypeError, "start_at_layer must be an integer"),
    ("float stop_at_layer", lambda m, t: m(t, stop_at_layer=1.5), ArgumentTypeError, "stop_at_layer must be an integer"),
    ("stop_at_layer out of range", lambda m, t: m(t, stop_at_layer=7), ArgumentError, "stop_at_layer=7 is out of range"),
    ("stop_at_layer before start_at_layer", lambda m, t: m(torch.randn(2, 6, 64), start_at_layer=2, stop_at_layer=1), ArgumentError, "comes before start_at_layer=2"),
    ("residual of the wrong width", lambda m, t: m(torch.randn(2, 6, 32), start_at_layer=1), ArgumentError, "d_model=64"),
    ("KV cache of another config", lambda m, t: m(t, past_kv_cache=KVCache.empty(GPTConfig(**{**TINY, "n_layers": 3}), 2)), ArgumentError, "past_kv_cache has 3 layers"),
    ("KV cache of other heads", lambda m, t: m(t, past_kv_cache=KVCache.empty(GPTConfig(**{**TINY, "n_heads": 2}), 2)), ArgumentError, "past_kv_cache holds [n_heads, d_head] = (2, 32)"),
    ("KV cache of another batch", lambda m, t: m(t, past_kv_cache=KVCache.empty(m.cfg, 3)), ArgumentError, "past_kv_cache holds a batch of 3"),
    ("KV cache not a KVCache", lambda m, t: m(t, past_kv_cache={}), ArgumentTypeError, "past_kv_cache must be a KVCache"),
    ("hook returning float64", lambda m, t: m.run_with_hooks(t, fwd_hooks=[("blocks.0.attn.hook_z", replace_with(lambda a: a.double()))]), HookOutputError, "blocks.0.attn.hook_z returned a torch.float64"),
    ("hook returning a meta tensor", lambda m, t: m.run_with_hooks(t, fwd_hooks=[("blocks.0.attn.hook_z", replace_with(lambda a: a.to("meta")))]), HookOutputError, "on meta"),
    ("hook returning another shape", lambda m, t: m.run_with_hooks(t, fwd_hooks=[("hook_embed", replace_with(lambda a: a[:, :1]))]), HookShapeError, "hook_embed returned shape"),
    ("hook returning a list", lambda m, t: m.run_with_hooks(t, fwd_hooks=[("hook_embed", replace_with(lambda a: [1]))]), ArgumentTypeError, "returned list"),
    ("non-callable hook", lambda m, t: m.run_with_hooks(t, fwd_hooks=[("hook_embed", 3)]), ArgumentTypeError, "the hook for 'hook_embed' is not callable"),
    ("fwd_hooks as one tuple", lambda m, t: m.run_with_hooks(t, fwd_hooks=("hook_embed", lambda a, hook: None)), ArgumentTypeError, "got one pair; wrap it in a list"),
    ("fwd_hooks as a dict", lambda m, t: m.run_with_hooks(t, fwd_hooks={"hook_embed": lambda a, hook: None}), ArgumentTypeError, "got a dict"),
    ("add_hook of a non-callable", lambda m, t: m.add_hook("hook_embed", "print"), ArgumentTypeError, "not callable"),
    ("hook name typo", lambda m, t: m.run_with_hooks(t, fwd_hooks=[("blocks.0.hook_resid_prex", lambda a, hook: None)]), UnknownNameError, "did you mean"),
    ("names_filter typo", lambda m, t: m.run_with_cache(t, names_filter="blocks.0.hook_resid_prex"), UnknownNameError, "names_filter: no hook point named 'blocks.0.hook_resid_prex'; did you mean"),
    ("names_filter list with a typo", lambda m, t: m.run_with_cache(t, names_filter=["hook_embed", "blocks.9.hook_resid_pre"]), UnknownNameError, "blocks.9.hook_resid_pre"),
    ("names_filter an int", lambda m, t: m.run_with_cache(t, names_filter=3), ArgumentTypeError, "names_filter must be"),
    ("hooks() with a typo", lambda m, t: m.hooks(fwd_hooks=[("hook_embd", lambda a, hook: None)]).__enter__(), UnknownNameError, "hook_embed"),
    ("collect with a typo", lambda m, t: collect.collect_activations(m, t, "blocks.0.hook_resid_prex", scratch()), UnknownNameError, "did you mean"),
    ("bwd_hooks with a typo after a good one", lambda m, t: m.run_with_hooks(t, bwd_hooks=[("hook_embed", lambda g, hook: None), ("hook_embd", lambda g, hook: None)]), UnknownNameError, "hook_embd"),
    ("bwd_hooks under no_grad", lambda m, t: torch.no_grad()(m.run_with_hooks)(t, bwd_hooks=[("hook_embed", lambda g, hook: None)]), ArgumentError, "bwd_hooks cannot fire"),
    ("temperature nan", lambda m, t: generate(m, t, 2, do_sample=True, temperature=math.nan), ArgumentError, "temperature must be a finite number"),
    ("temperature 'hot'", lambda m, t: generate(m, t, 2, do_sample=True, temperature="hot"), ArgumentTypeError, "temperature must be a number"),
    ("temperature -1", lambda m, t: generate(m, t, 2, do_sample=True, temperature=-1), ArgumentError, "temperature"),
    ("top_k 2.5", lambda m, t: generate(m, t, 2, do_sample=True, top_k=2.5), ArgumentError, "top_k must be a positive integer"),
    ("top_p 0", lambda m, t: generate(m, t, 2, do_sample=True, top_p=0), ArgumentError, "top_p"),
    ("max_new_tokens 2.0", lambda m, t: generate(m, t, 2.0), ArgumentError, "max_new_tokens"),
    ("0-D prompt tensor", lambda m, t: generate(m, t[0, 0], 2), ArgumentError, "input: token ids must have shape [pos] or [batch, pos]"),
    ("numpy prompt", lambda m, t: generate(m, t.numpy(), 2), ArgumentTypeError, "input: expected a string"),
    ("eos_token_id a string", lambda m, t: generate(m, t, 2, eos_token_id="eos"), ArgumentTypeError, "eos_token_id"),
    ("seed a string", lambda m, t: generate(m, t, 2, do_sample=True, seed="1"), ArgumentTypeError, "seed"),
    ("generate mask with 2s", lambda m, t: generate(m, t, 2, attention_mask=torch.full(t.shape, 2)), ArgumentError, "attention_mask must hold only 0"),
    ("induction_scores(seq_len=0)", lambda m, t: heads.induction_scores(m, seq_len=0), ArgumentError, "seq_len must be >= 1"),
    ("induction_scores(batch=0)", lambda m, t: heads.induction_scores(m, batch=0), ArgumentError, "batch must be >= 1"),
    ("induction_scores(seq_len=2.5)", lambda m, t: heads.induction_scores(m, seq_len=2.5), ArgumentTypeError, "seq_len must be an integer"),
    ("top_heads(k=-1)", lambda m, t: heads.top_heads(torch.rand(2, 4), k=-1), ArgumentError, "k must be >= 1"),
    ("top_heads(order=...)", lambda m, t: heads.top_heads(torch.rand(2, 4), order="best"), ArgumentError, "order"),
    ("logit_lens(k=0)", lambda m, t: logit_lens.logit_lens(m, t[:1], k=0), ArgumentError, "k must be in [1, 1000]"),
    ("logit_lens(k=2.5)", lambda m, t: logit_lens.logit_lens(m, t[:1], k=2.5), ArgumentTypeError, "k must be an integer"),
    ("logit_lens float targets", lambda m, t: logit_lens.logit_lens(m, t[:1], target=torch.zeros(6)), ArgumentTypeError, "target ids must be integers"),
    ("logit_lens target out of range", lambda m, t: logit_lens.logit_lens(m, t[:1], target=torch.full((6,), 5000)), ArgumentError, "target ids must lie in"),
    ("attribution position out of range", lambda m, t: attribution.direct_logit_attribution(m, t, answer=1, positions=9), IndexRangeError, "position 9 is out of range"),
    ("attribution float position", lambda m, t: attribution.direct_logit_attribution(m, t, answer=1, positions=1.5), ArgumentTypeError, "positions: expected a position (int)"),
    ("attribution answer out of range", lambda m, t: attribution.direct_logit_attribution(m, t, answer=5000), ArgumentError, "token id 5000 is out of range"),
    ("attribution float answers", lambda m, t: attribution.direct_logit_attribution(m, t, answer=torch.tensor([1.0, 2.0])), ArgumentTypeError, "must be integers"),
    ("collect float data", lambda m, t: collect.collect_activations(m, t.float(), "hook_embed", scratch()), ArgumentError, "data: token ids must be integers"),
    ("collect batch_size 0", lambda m, t: collect.collect_activations(m, t, "hook_embed", scratch(), batch_size=0), ArgumentError, "batch_size"),
    ("GPTConfig field of the wrong type", lambda m, t: GPTConfig.from_dict({**TINY, "n_layers": "2"}), ArgumentTypeError, "GPTConfig.n_layers must be an integer, got str '2'"),
    ("preset typo", lambda m, t: GPTConfig.preset("gpt-2"), KeyError, "gpt2"),
]


@pytest.mark.parametrize("what, call, error, fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_a_clear_error(model, tokens, what, call, error, fragment):
    with pytest.raises(error) as info:
        call(model, tokens)
    assert fragment in str(info.value)
    assert no_hooks(model)


@pytest.mark.parametrize("dtype", [torch.uint16, torch.int8, torch.int16, torch.uint8, torch.int32])
def test_every_integer_dtype_of_token_ids_gives_the_same_logits(model, tokens, dtype):
    small = tokens.clamp(max=100)  # fits int8
    assert torch.equal(model(small.to(dtype)), model(small))


def test_attention_masks_as_numpy_lists_and_bools_are_the_same(model, tokens):
    mask = torch.tensor([[1] * 6, [0, 0, 1, 1, 1, 1]])
    expected = model(tokens, attention_mask=mask)
    for same in (mask.numpy(), mask.tolist(), mask.bool(), mask.float()):
        assert torch.equal(model(tokens, attention_mask=same), expected)


def test_one_dimensional_token_ids_are_a_batch_of_one(model, tokens):
    assert torch.equal(model(tokens[0]), model(tokens[:1]))


def test_bwd_hooks_of_run_with_hooks_fire_at_the_later_backward(model, tokens):
    grads = {}
    loss = model.run_with_hooks(
        tokens, return_type="loss", bwd_hooks=[("blocks.0.hook_resid_post", lambda g, hook: grads.setdefault(hook.name, g.clone()))]
    )
    assert no_hooks(model)  # detached: the next forward does not see them
    loss.backward()
    assert grads["blocks.0.hook_resid_post"].shape == (2, 6, 64) and grads["blocks.0.hook_resid_post"].abs().sum() > 0
    model.zero_grad()
    again = {}
    model.run_with_hooks(tokens, return_type="loss", bwd_hooks=[("hook_embed", lambda g, hook: again.setdefault("x", 1))])
    model(tokens, return_type="loss").backward()  # a later, separate forward: the hook is not attached to it
    assert again == {}
    model.zero_grad()


# ---------------------------------------------------------------------------------------------
# Random bad inputs
# ---------------------------------------------------------------------------------------------

DTYPES = [torch.float32, torch.float64, torch.bool, torch.complex64, torch.int64, torch.int32, torch.uint8, torch.uint16]


@st.composite
def token_tensors(draw):
    """Tensors of ids that may be bad in every way: dtype, rank, empty dims, range, length."""
    shape = tuple(draw(st.lists(st.integers(0, 70), min_size=0, max_size=4)))
    dtype = draw(st.sampled_from(DTYPES))
    low, high = draw(st.sampled_from([(0, 1000), (-5, 5), (990, 1010), (0, 50000)]))
    values = torch.randint(low, high, shape) if math.prod(shape) else torch.zeros(shape, dtype=torch.long)
    if dtype == torch.uint16:
        values = values.clamp(0, 65535)
    return values.to(dtype), {"input"}


@st.composite
def masks(draw, shape):
    kind = draw(st.sampled_from(["values", "shape", "type", "zeros"]))
    if kind == "values":
        value = draw(st.sampled_from([0.5, 2, -1, 3.0, float("nan")]))
        mask = torch.ones(shape)
        mask[..., -1] = value
        return mask
    if kind == "shape":
        return torch.ones(shape[0], shape[1] + draw(st.integers(1, 3)))
    if kind == "zeros":
        return torch.zeros(shape, dtype=torch.long)
    return draw(st.sampled_from(["mask", 3, object(), {"a": 1}]))


LAYER_VALUES = st.one_of(st.integers(-9, 9), st.floats(-3, 3), st.just(math.nan), st.sampled_from(["1", None, [1]]))


def assert_documented(error: BaseException, names: set[str]) -> None:
    assert isinstance(error, HookgptError), f"{type(error).__name__}: {error}"
    assert any(name in str(error) for name in names), f"the message names none of {names}: {error}"


def check(call, names: set[str]) -> None:
    try:
        call()
    except HookgptError as e:
        assert_documented(e, names)
    except Exception as e:  # anything else is the defect this test exists for
        raise AssertionError(f"{type(e).__name__} instead of a hookgpt error: {e}") from e


# HOOKGPT_FUZZ_EXAMPLES=2000 for a longer search
FUZZ = settings(max_examples=int(os.environ.get("HOOKGPT_FUZZ_EXAMPLES", 60)), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@FUZZ
@given(data=st.data())
def test_forward_refuses_random_bad_input_clearly(model, data):
    tokens, names = data.draw(token_tensors())
    kwargs = {}
    if data.draw(st.booleans()) and tokens.ndim == 2 and 0 not in tokens.shape:
        kwargs["attention_mask"] = data.draw(masks(tuple(tokens.shape)))
        names |= {"attention_mask"}
    if data.draw(st.booleans()):
        kwargs["stop_at_layer"] = data.draw(LAYER_VALUES)
        names |= {"stop_at_layer"}
    if data.draw(st.booleans()):
        kwargs["return_type"] = data.draw(st.sampled_from(["logits", "loss", "logit", 3, None]))
        names |= {"return_type", "loss"}
    with torch.no_grad():
        check(lambda: model(tokens, **kwargs), names)
    assert no_hooks(model)


@FUZZ
@given(data=st.data())
def test_run_with_cache_and_hooks_refuse_random_bad_input_clearly(model, tokens, data):
    names_filter = data.draw(
        st.one_of(
            st.sampled_from(list(model.hook_dict)).map(lambda n: n + data.draw(st.sampled_from(["", "x", "_pre"]))),
            st.lists(st.text("abcdehklmnopst._0123", max_size=25), max_size=3),
            st.sampled_from([3, 2.5, b"hook_embed", {"hook_embed": 1}]),
        )
    )
    start = data.draw(st.one_of(st.none(), LAYER_VALUES))
    kwargs = {} if start is None else {"start_at_layer": start}
    args = torch.randn(2, 6, 64) if start is not None else tokens
    with torch.no_grad():
        check(lambda: model.run_with_cache(args, names_filter=names_filter, **kwargs), {"names_filter", "hook point", "start_at_layer", "input"})
    hook = data.draw(st.sampled_from([None, 3, "fn", lambda a, hook: a.double(), lambda a, hook: a[..., :1], lambda a, hook: a.to("meta")]))
    name = data.draw(st.sampled_from(["hook_embed", "blocks.0.attn.hook_pattern", "blocks.1.hook_mlp_out", "blocks.0.hook_mlp_outt"]))
    with torch.no_grad():
        check(lambda: model.run_with_hooks(tokens, fwd_hooks=[(name, hook)]), {"hook", name})
    assert no_hooks(model)


@FUZZ
@given(data=st.data())
def test_generate_refuses_random_bad_options_clearly(model, tokens, data):
    options = dict(
        max_new_tokens=data.draw(st.one_of(st.integers(-3, 80), st.floats(0, 5), st.just("3"))),
        temperature=data.draw(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-2, 3), st.just("hot"))),
        top_k=data.draw(st.one_of(st.none(), st.integers(-2, 2000), st.floats(0, 5))),
        top_p=data.draw(st.one_of(st.none(), st.floats(-1, 2), st.just(math.nan))),
        do_sample=data.draw(st.booleans()),
    )
    prompt = data.draw(st.sampled_from([tokens, tokens[0], tokens[0, 0], tokens.float(), tokens.numpy(), tokens + 2000]))
    check(lambda: generate(model, prompt, **options), set(options) | {"input", "n_ctx"})
    assert no_hooks(model)


@FUZZ
@given(data=st.data())
def test_analyses_refuse_random_bad_input_clearly(model, tokens, data):
    which = data.draw(st.sampled_from(["lens", "induction", "top_heads", "attribution", "collect", "scores"]))
    number = st.one_of(st.integers(-3, 5000), st.floats(-2, 3), st.just(math.nan), st.sampled_from(["2", None]))
    if which == "lens":
        k, target = data.draw(number), data.draw(st.sampled_from(["next", None, 5000, -3, torch.zeros(6), torch.arange(6) * 300]))
        check(lambda: logit_lens.logit_lens(model, tokens[:1], target=target, k=k), {"k", "target", "token"})
    elif which == "induction":
        seq_len, batch = data.draw(number), data.draw(number)
        check(lambda: heads.induction_scores(model, seq_len=seq_len, batch=batch), {"seq_len", "batch"})
    elif which == "top_heads":
        k = data.draw(number)
        check(lambda: heads.top_heads(torch.rand(2, 4), k=k), {"k"})
    elif which == "attribution":
        positions = data.draw(st.one_of(number, st.lists(st.integers(-9, 9), max_size=3)))
        answer = data.draw(st.sampled_from([1, 5000, -1, torch.tensor([1.0]), torch.tensor([1, 2, 3]), " the"]))
        check(lambda: attribution.direct_logit_attribution(model, tokens, answer=answer, positions=positions), {"position", "answer", "token", "d_vocab"})
    elif which == "scores":
        bad = data.draw(st.sampled_from([tokens.float(), tokens[:0], tokens + 1000, tokens.numpy(), tokens[0, 0]]))
        check(lambda: heads.previous_token_scores(model, bad), {"input"})
    else:
        data_arg = data.draw(st.sampled_from([tokens, tokens.float(), tokens[0], tokens.numpy().astype(np.float32), "x" * 3]))
        batch_size = data.draw(number)
        check(
            lambda: collect.collect_activations(model, data_arg, "hook_embed", scratch(), batch_size=batch_size, disable=True),
            {"data", "batch_size", "seq_len"},
        )
    assert no_hooks(model)
