"""analyses.compat.transformer_lens: TransformerLens 2.x code, one import line changed, on hookgpt
(the shipped model and random GPT-2 configs)."""

import json

import pytest
import torch

from analyses.compat import transformer_lens
from analyses.compat.transformer_lens import HookedTransformer, HookedTransformerConfig, utils
from analyses.compat.transformer_lens.past_key_value_caching import HookedTransformerKeyValueCache
from hookgpt.loading import SHIPPED_DIR


@pytest.fixture(scope="module")
def model():
    return HookedTransformer.from_pretrained("hookgpt-shakespeare")


def tiny(**kw):
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=2, d_model=16, d_head=4, n_ctx=16, d_vocab=30, act_fn="relu", **kw)
    return HookedTransformer(cfg)


def test_class_names_survive_submodule_imports():
    import analyses.compat.transformer_lens.HookedTransformer as module  # noqa: F401

    assert transformer_lens.HookedTransformer is HookedTransformer and isinstance(HookedTransformer, type)


def test_tl_defaults_fold_and_center(model):
    assert model.cfg.normalization_type == "LNPre" and model.cfg.default_prepend_bos
    torch.testing.assert_close(model.blocks[0].ln1.w, torch.ones(model.cfg.d_model))  # fold_ln
    assert model.W_E.mean(-1).abs().max() < 1e-5  # center_writing_weights
    assert model.W_U.mean(-1).abs().max() < 1e-5  # center_unembed
    assert model.b_V.abs().max() == 0  # fold_value_biases
    raw = HookedTransformer.from_pretrained_no_processing("hookgpt-shakespeare")
    tokens = model.to_tokens("To be, or not to be")
    torch.testing.assert_close(model(tokens).log_softmax(-1), raw(tokens).log_softmax(-1), atol=1e-4, rtol=0)


def test_dla_idiom_and_cache_methods(model):
    tokens = model.to_tokens(["When John and Mary went to the shops, John gave the bag to"] * 2)
    _, cache = model.run_with_cache(tokens)
    assert "blocks.0.attn.hook_result" not in cache.cache_dict  # as TL without use_attn_result
    acc = cache.accumulated_resid(layer=-1, incl_mid=True, pos_slice=-1)
    assert acc.shape == (5, 2, model.cfg.d_model)
    ans = torch.tensor([model.to_single_token(" Mary"), model.to_single_token(" John")])
    dirs = model.tokens_to_residual_directions(ans)
    scaled = cache.apply_ln_to_stack(acc, layer=-1, pos_slice=-1)
    ref = torch.einsum("cbd,d->c", scaled, dirs[0] - dirs[1]) / 2
    attrs = cache.logit_attrs(acc, tokens=ans[0], incorrect_tokens=ans[1], pos_slice=-1).mean(-1)
    torch.testing.assert_close(attrs, ref, atol=1e-5, rtol=0)
    assert torch.equal(cache["scale1ln1"], cache["blocks.1.ln1.hook_scale"])
    with pytest.raises(AssertionError):
        cache.remove_batch_dim()


def test_hooks_levels_permanent_and_flags():
    m = tiny()
    calls = []
    m.add_perma_hook("hook_embed", lambda x, hook: calls.append("perm"))
    with m.hooks(fwd_hooks=[("hook_embed", lambda x, hook: calls.append("ctx"))]):
        assert len(m.hook_dict["hook_embed"].fwd_hooks) == 2
        m(torch.arange(5)[None])
    assert len(m.hook_dict["hook_embed"].fwd_hooks) == 1 and calls == ["perm", "ctx"]
    m.reset_hooks()
    assert len(m.hook_dict["hook_embed"].fwd_hooks) == 1  # permanent hooks stay, as in TL
    m.remove_all_hook_fns(including_permanent=True)
    assert not m.hook_dict["hook_embed"].fwd_hooks
    with pytest.raises(AssertionError, match="use_attn_result"):
        m.add_hook("blocks.0.attn.hook_result", lambda x, hook: x)
    m.set_use_attn_result(True)
    _, cache = m.run_with_cache(torch.arange(5)[None])
    torch.testing.assert_close(cache["result", 0].sum(-2) + m.blocks[0].attn.b_O, cache["attn_out", 0], atol=1e-5, rtol=0)
    with pytest.raises(NotImplementedError, match="rotary"):
        tiny(positional_embedding_type="rotary")


def test_left_padding_and_kv_cache(model):
    prompts = ["Hello world!", "How are you today, my friend?"]
    model.tokenizer.padding_side = "left"
    try:
        left = model(prompts)
        tokens = model.to_tokens(prompts)
        assert tokens[0, 0] == model.tokenizer.pad_token_id
        torch.testing.assert_close(model(tokens), left)  # the mask is inferred, as TL
    finally:
        model.tokenizer.padding_side = "right"
    alone = model(prompts[0])
    torch.testing.assert_close(left[0, -alone.shape[1]:], alone[0], atol=1e-4, rtol=0)
    pre, post = model.to_tokens("I went to"), model.to_tokens(" the market", prepend_bos=False)
    full = model(torch.cat([pre, post], dim=1))
    kv = HookedTransformerKeyValueCache.init_cache(model.cfg, model.cfg.device, 1)
    model(pre, past_kv_cache=kv)
    torch.testing.assert_close(model(post, past_kv_cache=kv), full[:, -post.shape[1]:], atol=1e-4, rtol=0)


def test_generate_and_utils(model):
    out = model.generate("To be", max_new_tokens=3, do_sample=False, verbose=False)
    assert isinstance(out, str) and out.startswith("To be")
    toks = model.generate(model.to_tokens("To be"), max_new_tokens=3, do_sample=False, verbose=False)
    assert toks.shape == (1, 6) and model.to_string(toks[0, 1:]) == out
    embeds = model.generate(model.embed(model.to_tokens("To be")), max_new_tokens=2, do_sample=False, return_type="embeds", verbose=False)
    assert embeds.shape == (1, 5, model.cfg.d_model)
    assert utils.get_act_name("k6a") == "blocks.6.attn.hook_k"
    assert utils.to_numpy(torch.ones(2)).tolist() == [1.0, 1.0]
    assert model.to_single_str_token(11) == ","


def test_patching_matches_a_run_with_hooks_loop(model):
    from analyses.compat.transformer_lens import patching

    clean = model.to_tokens("When John and Mary went to the shops, John gave the bag to")
    corrupted = model.to_tokens("When John and Mary went to the shops, Mary gave the bag to")
    _, clean_cache = model.run_with_cache(clean)
    mary, john = model.to_single_token(" Mary"), model.to_single_token(" John")

    def metric(logits):
        return logits[:, -1, mary].mean() - logits[:, -1, john].mean()

    grid = patching.get_act_patch_resid_pre(model, corrupted, clean_cache, metric)
    assert grid.shape == (model.cfg.n_layers, clean.shape[1])
    for layer, pos in [(0, 9), (1, 9), (1, clean.shape[1] - 1)]:
        def patch(resid, hook, pos=pos):
            resid[:, pos] = clean_cache[hook.name][:, pos]
            return resid

        logits = model.run_with_hooks(corrupted, fwd_hooks=[(utils.get_act_name("resid_pre", layer), patch)])
        torch.testing.assert_close(grid[layer, pos], metric(logits), atol=1e-4, rtol=1e-4)
    every = patching.get_act_patch_attn_head_all_pos_every(model, corrupted, clean_cache, metric)
    assert every.shape == (5, model.cfg.n_layers, model.cfg.n_heads)
    with pytest.raises(ValueError, match="hook_embed"):
        patching.get_act_patch_resid_pre(model, corrupted, type(clean_cache)({}, model), metric)


def test_detect_head_scores_like_transformer_lens(model):
    from analyses.compat.transformer_lens.head_detector import HEAD_NAMES, detect_head

    text = " one two three four five six seven eight nine ten"
    prev = json.loads((SHIPPED_DIR / "hookgpt-shakespeare" / "card.json").read_text())["top_heads"]["previous_token"][0]
    layer, head = prev["layer"], prev["head"]  # the shipped model's previous-token head, from its card
    scores = detect_head(model, text, "previous_token_head")
    _, cache = model.run_with_cache(text, remove_batch_dim=True)
    before = cache["pattern", 0].clone()
    pattern = cache["pattern", layer][head]
    target = torch.zeros_like(pattern)
    target[1:, :-1] = torch.eye(pattern.shape[0] - 1)
    torch.testing.assert_close(scores[layer, head], (pattern * target).sum() / pattern.sum())  # TL's "mul" score
    assert divmod(int(scores.argmax()), model.cfg.n_heads) == (layer, head)  # the detector finds it on this text too
    detect_head(model, text, "previous_token_head", cache=cache, exclude_bos=True)
    assert torch.equal(cache["pattern", 0], before)  # a given cache is never modified
    assert detect_head(model, text, "induction_head", heads=[(1, 0)])[0].eq(-1).all()
    assert len(HEAD_NAMES) == 3
    with pytest.raises(AssertionError, match="non-empty"):
        detect_head(model, "", "previous_token_head")


def test_tokenize_and_concatenate_rows():
    texts = ["To be, or not to be, that is the question.", "Whether 'tis nobler in the mind to suffer"] * 5
    out = utils.tokenize_and_concatenate(texts, HookedTransformer.from_pretrained("hookgpt-shakespeare").tokenizer, max_length=8)
    tokens = out["tokens"]
    assert tokens.shape[1] == 8 and (tokens[:, 0] == 50256).all()
    from hookgpt import Tokenizer

    stream = Tokenizer.gpt2().encode("<|endoftext|>".join(texts))
    assert tokens[0, 1:].tolist() == stream[:7]  # the joined text, EOS between documents, cut into rows


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_configs_compute_hookgpt_s_function(seed):
    from hookgpt import HookedGPT

    g = torch.Generator().manual_seed(seed)
    n_layers, d_head, n_heads = (int(torch.randint(1, 4, (), generator=g)), int(torch.randint(2, 9, (), generator=g)), int(torch.randint(1, 5, (), generator=g)))
    cfg = HookedTransformerConfig(n_layers=n_layers, d_model=d_head * n_heads, d_head=d_head, n_ctx=12, d_vocab=40,
                                  act_fn=["relu", "gelu", "gelu_new"][seed], attn_only=seed == 1)
    torch.manual_seed(seed)
    tl_model = HookedTransformer(cfg)
    reference = HookedGPT(cfg.to_gpt_config())
    reference.load_state_dict(tl_model.state_dict())
    tokens = torch.randint(0, 40, (2, 7), generator=g)
    torch.testing.assert_close(tl_model(tokens), reference(tokens))
    _, cache = tl_model.run_with_cache(tokens, pos_slice=-1)
    _, ref_cache = reference.run_with_cache(tokens)
    assert cache["q", 0].shape == (2, 1, n_heads, d_head)  # TL's run_with_cache keeps an int pos_slice's dim
    torch.testing.assert_close(cache["resid_post", -1][:, 0], ref_cache["resid_post", -1][:, -1])
    resid, toks, _, mask = tl_model.input_to_embed(tokens)
    assert mask is None and torch.equal(toks, tokens)
    torch.testing.assert_close(tl_model(resid, start_at_layer=0), reference(tokens))
    torch.testing.assert_close(tl_model(tokens, stop_at_layer=n_layers), ref_cache["resid_post", -1], atol=1e-5, rtol=0)


def test_cache_dict_holds_tensors_as_in_transformer_lens(model):
    """hookgpt computes a cache's patterns lazily; TL code that reads cache.cache_dict directly
    still finds tensors, equal to what a hook sees in the forward pass."""
    tokens = model.to_tokens("To be, or not to be, that is the question")
    seen = {}
    model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_pattern", lambda x, hook: seen.setdefault("p", x.clone()))])
    _, cache = model.run_with_cache(tokens)
    assert all(isinstance(value, torch.Tensor) for value in cache.cache_dict.values())
    torch.testing.assert_close(cache.cache_dict["blocks.1.attn.hook_pattern"], seen["p"], atol=1e-6, rtol=0)
    assert torch.equal(cache["pattern", 1], cache.cache_dict["blocks.1.attn.hook_pattern"])
