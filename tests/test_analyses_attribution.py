"""Direct logit attribution: the components' contributions plus the bias term sum to the logit."""

import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from analyses.attribution import direct_logit_attribution
from helpers import no_hooks, perturbed_model


@pytest.fixture(scope="module")
def model():
    return perturbed_model(n_layers=2, d_model=64, n_heads=4, d_vocab=1000, n_ctx=64)


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 1000, (3, 8), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("per_head", [True, False])
@pytest.mark.parametrize("per_neuron", [True, False])
def test_attributions_sum_to_the_logit(model, tokens, per_head, per_neuron):
    result = direct_logit_attribution(model, tokens, answer=5, positions=[-1, 2], per_head=per_head, per_neuron=per_neuron)
    with torch.no_grad():
        logits = model(tokens)
    actual = logits[:, [7, 2], 5]
    assert torch.allclose(result.logits, actual, atol=1e-5)
    assert torch.allclose(result.total(), actual, atol=1e-4)
    assert torch.allclose(result.attributions.sum(0) + result.constant, actual, atol=1e-4)
    # the documented constant: ln_final.b @ W_U[:, t] + b_U[t]
    constant = model.ln_final.b @ model.W_U[:, 5] + model.b_U[5]
    assert torch.allclose(result.constant, constant.detach().expand(3, 2))
    n_attn = 2 * (4 + 1) if per_head else 2
    n_mlp = 2 * (256 + 1) if per_neuron else 2
    assert result.attributions.shape == (2 + n_attn + n_mlp, 3, 2)
    assert no_hooks(model)


def test_logit_difference_with_an_answer_per_prompt(model, tokens):
    answers, wrong = torch.tensor([4, 40, 400]), torch.tensor([9, 90, 900])
    result = direct_logit_attribution(model, tokens, answer=answers, wrong=wrong, per_neuron=True)
    with torch.no_grad():
        last = model(tokens)[:, -1]
    diff = last[torch.arange(3), answers] - last[torch.arange(3), wrong]
    assert torch.allclose(result.total()[:, 0], diff, atol=1e-4)
    # the constant of a difference: the bias terms of the two tokens, subtracted
    W_U, b_U, b = model.W_U.detach(), model.b_U.detach(), model.ln_final.b.detach()
    assert torch.allclose(result.constant[:, 0], b @ (W_U[:, answers] - W_U[:, wrong]) + b_U[answers] - b_U[wrong], atol=1e-6)


def test_finer_components_add_up_to_coarser_ones(model, tokens):
    coarse = direct_logit_attribution(model, tokens, answer=5, per_head=False, per_neuron=False)
    fine = direct_logit_attribution(model, tokens, answer=5, per_head=True, per_neuron=True)
    for layer in range(2):
        for kind, parts in (("attn", ("head", "attn_bias")), ("mlp", ("neuron", "mlp_bias"))):
            whole = coarse.attributions[coarse.kinds.index(kind) + (0 if layer == 0 else 2)]
            rows = [i for i, (k, l) in enumerate(zip(fine.kinds, fine.layers)) if k in parts and l == layer]
            assert torch.allclose(fine.attributions[rows].sum(0), whole, atol=1e-5)
    heads = fine.head_attributions()
    assert heads.shape == (2, 4)
    assert heads[1, 3] == pytest.approx(float(fine.attributions[fine.labels.index("L1H3")].mean()))
    assert fine.neuron_attributions().shape == (2, 256)


def test_given_cache_is_used_and_unchanged(model, tokens):
    _, cache = model.run_with_cache(tokens)
    before = {k: v.clone() for k, v in cache.items()}
    from_cache = direct_logit_attribution(model, tokens, answer=5, wrong=6, cache=cache, per_neuron=True)
    fresh = direct_logit_attribution(model, tokens, answer=5, wrong=6, per_neuron=True)
    assert torch.allclose(from_cache.attributions, fresh.attributions, atol=1e-6)
    assert all(torch.equal(before[k], cache[k]) for k in before)


def test_attention_only_model(tokens):
    model = perturbed_model(n_layers=2, d_model=64, n_heads=4, d_vocab=1000, n_ctx=64, attn_only=True)
    result = direct_logit_attribution(model, tokens, answer=3, per_neuron=True)
    assert "mlp" not in result.kinds and "neuron" not in result.kinds
    with torch.no_grad():
        assert torch.allclose(result.total()[:, 0], model(tokens)[:, -1, 3], atol=1e-4)


def test_tables_and_figures(model, tokens):
    result = direct_logit_attribution(model, tokens, answer=5, positions=[1, -1], per_neuron=True)
    df = result.to_df()
    assert isinstance(df, pd.DataFrame) and list(df.columns) == ["component", "kind", "layer", "index", "pos", "attribution"]
    assert len(df) == len(result.labels) * 2
    row = df[(df.component == "L0H2") & (df.pos == 7)].iloc[0]
    assert row.attribution == pytest.approx(float(result.attributions[result.labels.index("L0H2"), :, 1].mean()))
    for view in ("components", "heads", "neurons"):
        assert isinstance(result.figure(view), go.Figure)
    bars = result.figure().data[0]
    assert "0_neurons" in list(bars.customdata) and len(bars.y) < 30  # neurons summed per layer
    with pytest.raises(ValueError, match="per_head"):
        direct_logit_attribution(model, tokens, answer=5, per_head=False).head_attributions()
