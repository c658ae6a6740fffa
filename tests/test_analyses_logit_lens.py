"""Logit lens: each layer read through the model's own ln_final and unembedding."""

import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from analyses.logit_lens import logit_lens, logit_lens_logits
from hookgpt import GPTConfig, HookedGPT
from helpers import no_hooks, perturbed_model


@pytest.fixture(scope="module")
def model():
    return perturbed_model(scale=0.2)


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 1000, (1, 9), generator=torch.Generator().manual_seed(1))


def test_lens_logits_apply_ln_final_to_each_layer(model, tokens):
    lens, labels = logit_lens_logits(model, tokens)
    assert labels == ["0_pre", "0_mid", "1_pre", "1_mid", "final_post"]
    assert lens.shape == (5, 1, 9, 1000)
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
        assert torch.allclose(lens[-1], logits, atol=1e-5)  # the last layer is the model's output
        # each intermediate residual normalised by its *own* LayerNorm scale
        resid = cache["resid_mid", 1]
        centred = resid - resid.mean(-1, keepdim=True)
        normalised = centred / (centred.pow(2).mean(-1, keepdim=True) + model.cfg.layer_norm_eps).sqrt()
        manual = (normalised * model.ln_final.w + model.ln_final.b) @ model.W_U + model.b_U
    assert torch.allclose(lens[3], manual, atol=1e-4)
    assert no_hooks(model)


def test_top_k_and_target_probabilities(model, tokens):
    result = logit_lens(model, tokens, k=4)
    lens, _ = logit_lens_logits(model, tokens)
    probs = lens[:, 0].softmax(-1)  # [layer, pos, d_vocab]
    assert result.top_probs.shape == (5, 9, 4) and len(result.top_tokens) == 5 and len(result.top_tokens[0][0]) == 4
    assert torch.allclose(result.top_probs, probs.topk(4, dim=-1).values, atol=1e-6)
    assert torch.equal(result.top_token_ids, probs.topk(4, dim=-1).indices)
    # target "next": the actual next token, none at the last position
    assert torch.equal(result.target_ids[:-1], tokens[0, 1:]) and result.target_ids[-1] == -1
    expected = probs[:, torch.arange(8), tokens[0, 1:]]
    assert torch.allclose(result.target_probs[:, :-1], expected, atol=1e-6)
    assert result.target_probs[:, -1].isnan().all() and (result.target_ranks[:, -1] == -1).all()
    ranks = (lens[:, 0, :8] > lens[:, 0, torch.arange(8), tokens[0, 1:]][..., None]).sum(-1)
    assert torch.equal(result.target_ranks[:, :-1], ranks)
    # ranks and top-k agree: rank 0 where the target is the top prediction
    assert torch.equal(result.target_ranks[:, :-1] == 0, result.top_token_ids[:, :-1, 0] == result.target_ids[:-1])


def test_fixed_target_and_no_target(model, tokens):
    fixed = logit_lens(model, tokens, target=7, incl_mid=False)
    assert fixed.layer_labels == ["0_pre", "1_pre", "final_post"]
    assert (fixed.target_ids == 7).all() and not fixed.target_probs.isnan().any()
    none = logit_lens(model, tokens, target=None)
    assert none.target_probs.isnan().all()
    assert isinstance(none.figure(), go.Figure)  # falls back to the top-1 probability
    with pytest.raises(ValueError, match="one sequence"):
        logit_lens(model, tokens.repeat(2, 1))


def test_uses_a_given_cache_without_changing_it(model, tokens):
    _, cache = model.run_with_cache(tokens)
    before = {k: v.clone() for k, v in cache.items()}
    from_cache = logit_lens(model, tokens, cache=cache)
    fresh = logit_lens(model, tokens)
    assert torch.allclose(from_cache.top_probs, fresh.top_probs, atol=1e-6)
    assert all(torch.equal(before[k], cache[k]) for k in before)


def test_dataframe_figure_and_grid_props(model, tokens):
    result = logit_lens(model, tokens, k=3)
    df = result.to_df()
    assert isinstance(df, pd.DataFrame) and len(df) == 5 * 9
    row = df[(df.layer == "1_pre") & (df.pos == 2)].iloc[0]
    assert row.top_prob == pytest.approx(float(result.top_probs[2, 2, 0]))
    assert row.target_rank == int(result.target_ranks[2, 2])
    fig = result.figure()
    assert isinstance(fig, go.Figure) and fig.data[0].z.shape == (5, 9)
    assert isinstance(result.figure("target_rank"), go.Figure)
    props = result.grid_props()
    assert set(props) == {"tokens", "layer_labels", "top_tokens", "top_probs", "target_tokens"}
    assert props["top_probs"].shape == (5, 9, 3) and props["target_tokens"][-1] == ""
    assert props["tokens"][0] == f"#{int(tokens[0, 0])}"  # no tokenizer for a 1000-token vocabulary: ids
    render = pytest.importorskip("analyses.render")
    assert "LogitLensGrid" in render.logit_lens_grid(**props)._repr_html_()


def test_text_input_uses_token_strings():
    model = HookedGPT(GPTConfig(n_layers=1, d_model=32, n_heads=2, n_ctx=32)).eval()
    result = logit_lens(model, "Hello world", target=" world", k=2)
    assert result.tokens == ["<|endoftext|>", "Hello", " world"]
    assert result.target_tokens == [" world"] * 3
    assert all(isinstance(t, str) for t in result.top_tokens[0][0])
