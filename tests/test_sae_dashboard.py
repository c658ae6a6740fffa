"""Feature dashboards: the data (checked against brute force) and the Svelte views in a real browser."""

import pytest
import torch
from helpers import no_hooks, perturbed_model

from analyses.render import feature_browser, feature_dashboard
from analyses.sae import SAE, SAEConfig
from analyses.sae.dashboard import feature_dashboards
from test_render_browser import OfflinePage, browser  # noqa: F401 (the module's Chromium fixture)

HOOK = "blocks.1.hook_resid_pre"


@pytest.fixture(scope="module")
def setup():
    model = perturbed_model()
    sae = SAE(SAEConfig(d_in=64, d_sae=64, architecture="topk", k=8, hook_name=HOOK), seed=0)
    tokens = torch.randint(0, 1000, (10, 16), generator=torch.Generator().manual_seed(0))
    return model, sae, tokens


@pytest.fixture(scope="module")
def dashboards(setup):
    model, sae, tokens = setup
    return feature_dashboards(model, sae, tokens, features=[3, 5, 9], n_contexts=4, window=(5, 2), batch_size=3,
                              n_logits=4, steer_prompt=None, disable=True)


def test_dashboard_data_matches_brute_force(setup, dashboards):
    model, sae, tokens = setup
    _, cache = model.run_with_cache(tokens, names_filter=[HOOK])
    acts = sae.encode(cache[HOOK]).detach()  # [row, pos, d_sae]
    for f in (3, 5, 9):
        entry = dashboards[f]
        a = acts[..., f]
        assert entry["density"] == pytest.approx(float((a > 0).float().mean()))
        assert entry["maxActivation"] == pytest.approx(float(a.max()), rel=1e-5)
        assert sum(entry["histogram"]["counts"]) == int((a > 0).sum())
        expected = a.flatten().topk(4).values
        expected = expected[expected > 0]
        assert [c["max"] for c in entry["contexts"]] == pytest.approx(expected.tolist(), rel=1e-5)
        top = entry["contexts"][0]
        assert float(a[top["row"], top["pos"]]) == pytest.approx(top["max"], rel=1e-5)
        assert top["acts"][top["peak"]] == pytest.approx(top["max"], abs=1e-3)
        assert len(top["tokens"]) == len(top["acts"]) <= 8
        direct = sae.W_dec[f] @ model.W_U
        assert [e["value"] for e in entry["topLogits"]] == pytest.approx(direct.topk(4).values.tolist(), abs=1e-4)
        assert [e["value"] for e in entry["bottomLogits"]] == pytest.approx((-(-direct).topk(4).values).tolist(), abs=1e-4)
    assert no_hooks(model)


def test_steering_panel_on_the_shipped_model():
    from hookgpt import HookedGPT

    model = HookedGPT.from_pretrained("hookgpt-shakespeare")
    sae = SAE.from_pretrained("hookgpt-shakespeare-resid-pre-1")
    tokens = model.to_tokens("ROMEO: But soft, what light through yonder window breaks? It is the east.")
    dash = feature_dashboards(model, sae, tokens, features=[7], n_logits=3, steer_prompt="JULIET:", steer_coefficient=20.0, disable=True)
    steering = dash[7]["steering"]
    clean = model("JULIET:")[0, -1].softmax(-1)
    name, direction = sae.cfg.hook_name, 20.0 * sae.W_dec[7]
    steered = model.run_with_hooks("JULIET:", fwd_hooks=[(name, lambda act, hook: act + direction)])[0, -1].softmax(-1)
    rise = (steered - clean).topk(3).indices
    assert [e["token"] for e in steering["tokens"]] == model.to_str_tokens(rise, prepend_bos=False)
    assert [e["after"] for e in steering["tokens"]] == pytest.approx(steered[rise].tolist(), abs=1e-5)
    assert [e["before"] for e in steering["tokens"]] == pytest.approx(clean[rise].tolist(), abs=1e-5)


def test_bad_props_are_clear_errors(dashboards):
    entry = dict(dashboards[3])
    entry["contexts"] = [{**entry["contexts"][0], "acts": [1.0]}]
    with pytest.raises(ValueError, match="activations"):
        feature_dashboard(entry)
    with pytest.raises(ValueError, match="selected=99"):
        feature_browser(dashboards.features, selected=99)
    with pytest.raises(ValueError, match="lacks"):
        feature_dashboard({"feature": 1})


# ----------------------------------------------------------------------------- in the browser


@pytest.mark.browser
def test_dashboard_and_browser_in_chromium(browser, tmp_path, dashboards):
    tab = OfflinePage(browser, tmp_path)
    try:
        entry = dashboards[5]
        page = tab.open(feature_dashboard(entry, title="feature 5"), "feature-5")
        assert page.locator(".header").get_attribute("data-feature") == "5"
        assert page.locator(".context").count() == len(entry["contexts"])
        assert page.locator("rect.bin").count() == len(entry["histogram"]["counts"])
        assert [page.locator("td.positive").nth(i).get_attribute("data-token") for i in range(4)] == [e["token"] for e in entry["topLogits"]]
        top = entry["contexts"][0]
        page.locator(".context").first.locator(".tok").nth(top["peak"]).hover()
        assert float(page.locator(".value-info .value").text_content()) == pytest.approx(top["max"], abs=1e-3)
        tab.assert_clean()

        page = tab.open(feature_browser(dashboards.features, title="features"), "features")
        assert page.locator(".item").count() == 3
        assert page.locator(".item.active").get_attribute("data-feature") == "3"
        page.locator('.item[data-feature="9"]').click()
        assert page.locator(".header").get_attribute("data-feature") == "9"
        assert page.locator(".context").count() == len(dashboards[9]["contexts"])
        page.locator(".filter").fill("5")
        assert page.locator(".item").count() == 1
        tab.screenshot("feature-browser")
        tab.assert_clean()
    finally:
        tab.context.close()
