"""Steering: contrastive directions, the metric per scale through the engine, steered generations."""

import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from analyses import steering
from hookgpt import interventions as iv
from hookgpt.interventions import Site
from helpers import no_hooks, perturbed_model


@pytest.fixture(scope="module")
def model():
    return perturbed_model(scale=0.1)


def test_direction_is_the_difference_of_means(model):
    g = torch.Generator().manual_seed(0)
    pos, neg = torch.randint(0, 1000, (3, 5), generator=g), torch.randint(0, 1000, (2, 6), generator=g)
    name = "blocks.1.hook_resid_pre"
    direction = steering.direction_from_prompts(model, pos, neg, name)
    _, cp = model.run_with_cache(pos, names_filter=name)
    _, cn = model.run_with_cache(neg, names_filter=name)
    torch.testing.assert_close(direction, cp[name][:, -1].mean(0) - cn[name][:, -1].mean(0))
    with pytest.raises(KeyError, match="did you mean"):
        steering.direction_from_prompts(model, pos, neg, "blocks.1.hook_resid_pree")


def test_steer_reports_metric_probabilities_and_text_per_scale(model):
    tokens = torch.tensor([[1, 2, 3, 4]])
    token = 42
    direction = model.W_U[:, token].detach()
    metric = lambda logits: logits[:, -1, token].mean()  # noqa: E731
    result = steering.steer(model, tokens, Site.resid("post", 1), direction, scales=[0, 5, 20], metric=metric, max_new_tokens=4)
    # scale 0 is the unsteered model; the metric per scale equals the run with the hook by hand
    assert float(result.values[0]) == pytest.approx(float(metric(model(tokens).detach())), abs=1e-5)
    with model.interventions(iv.add(Site.resid("post", 1), direction, scale=20)):
        by_hand = float(metric(model(tokens).detach()))
    assert float(result.values[2]) == pytest.approx(by_hand, abs=1e-4)
    assert result.values[2] > result.values[1] > result.values[0]
    assert "#42" in result.top_tokens and result.probs[2, result.top_tokens.index("#42")] > result.probs[0, result.top_tokens.index("#42")]
    assert result.texts[20.0] == "#42" * 4 and result.texts[0.0] != result.texts[20.0]
    df = result.to_df()
    assert isinstance(df, pd.DataFrame) and list(df.scale) == [0, 5, 20] and "text" in df.columns
    assert isinstance(result.figure(), go.Figure)
    assert no_hooks(model)
    with pytest.raises(ValueError, match="scales is empty"):
        steering.steer(model, tokens, Site.resid("post", 1), direction, scales=[])
