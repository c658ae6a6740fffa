"""analyses.render: input validation, the HTML it writes, and the bundle it ships.

These tests need no browser (tests/test_render_browser.py drives Chromium)
and no npm: the bundle's freshness is checked by recomputing the fingerprint
of web/ in Python.
"""

import json
import os
import re
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from analyses import render as views
from analyses.render import bundle_hash
from analyses.render.html import BUNDLE_PATH, COMPONENTS, MANIFEST_PATH, RenderedHTML, bundle_source, render

REPO = Path(__file__).resolve().parents[1]
WEB_SRC = REPO / "web" / "src"


def causal_attention(n_heads: int, n_pos: int, seed: int = 0) -> np.ndarray:
    """Random causal attention patterns: [n_heads, query_pos, key_pos], rows sum to 1."""
    scores = np.random.default_rng(seed).normal(size=(n_heads, n_pos, n_pos)) * 2
    scores = np.where(np.tril(np.ones((n_pos, n_pos), dtype=bool)), scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    return weights / weights.sum(-1, keepdims=True)


TOKENS = ["<|endoftext|>", "The", " cat", " sat", " on", " the", " mat"]


def props_of(html: str) -> dict:
    """The JSON props embedded in a fragment or page."""
    match = re.search(r'<script type="application/json" id="([^"]+)-props">(.*?)</script>', html, re.S)
    assert match, "no props <script> in the HTML"
    return json.loads(match.group(2))


def element_ids(html: str) -> list[str]:
    return re.findall(r'<div id="(hookgpt-view-[0-9a-f]+)"', html)


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "attention, tokens, message",
    [
        (np.ones((7, 7)), TOKENS, r"attention must have 3 dimension\(s\) \[n_heads, query_pos, key_pos\], got 2"),
        (np.ones((1, 2, 7, 7)), TOKENS, r"looks batched .* pass attention\[0\]"),
        (np.ones((2, 7, 6)), TOKENS, r"must be square .* query_pos=7, key_pos=6"),
        (np.ones((2, 5, 5)), TOKENS, r"tokens has 7 entries but attention \(shape \(2, 5, 5\)\)"),
        (np.ones((2, 0, 0)), [], r"empty axis"),
        ([[[1, 2], [3]]], TOKENS[:2], r"regular shape"),
    ],
)
def test_attention_heads_rejects_bad_shapes(attention, tokens, message):
    with pytest.raises(ValueError, match=message):
        views.attention_heads(tokens, attention)


def test_attention_heads_rejects_nan_and_names_where():
    attention = causal_attention(2, 7)
    attention[1, 3, 2] = np.nan
    with pytest.raises(ValueError, match=r"attention contains 1 non-finite value\(s\) \(first: NaN at index \(1, 3, 2\)\)"):
        views.attention_heads(TOKENS, attention)


@pytest.mark.parametrize(
    "tokens, head_names, message",
    [
        ("The cat sat", None, r"got a single str"),
        ([1, 2, 3, 4, 5, 6, 7], None, r"tokens\[0\] is int"),
        (TOKENS, ["a", "b", "c"], r"head_names has 3 entries but attention n_heads has 2"),
    ],
)
def test_attention_heads_rejects_bad_labels(tokens, head_names, message):
    with pytest.raises(ValueError, match=message):
        views.attention_heads(tokens, causal_attention(2, 7), head_names)


def test_attention_pattern_validation():
    with pytest.raises(ValueError, match=r"pattern must have 2 dimension\(s\) \[query_pos, key_pos\]"):
        views.attention_pattern(TOKENS, causal_attention(2, 7))
    with pytest.raises(ValueError, match=r"must be square .* query_pos=7, key_pos=3"):
        views.attention_pattern(TOKENS, np.ones((7, 3)))
    with pytest.raises(ValueError, match=r"tokens has 6 entries but pattern"):
        views.attention_pattern(TOKENS[:6], causal_attention(1, 7)[0])
    with pytest.raises(ValueError, match=r"infinite at index \(0, 0\)"):
        views.attention_pattern(TOKENS, np.full((7, 7), np.inf))


def test_colored_tokens_validation():
    with pytest.raises(ValueError, match=r"tokens has 7 entries but values has 3"):
        views.colored_tokens(TOKENS, np.ones(3))
    with pytest.raises(ValueError, match=r"values must have 1 dimension\(s\) \[pos\], got 2"):
        views.colored_tokens(TOKENS, np.ones((7, 2)))
    with pytest.raises(ValueError, match=r"values\['b'\] contains 1 non-finite"):
        views.colored_tokens(TOKENS, {"a": np.ones(7), "b": np.array([0, 1, 2, np.nan, 4, 5, 6])})
    with pytest.raises(ValueError, match=r"empty dict"):
        views.colored_tokens(TOKENS, {})
    with pytest.raises(ValueError, match=r"min_value must be below max_value"):
        views.colored_tokens(TOKENS, np.ones(7), min_value=1, max_value=0)


def logit_lens_inputs(n_layers=3, n_pos=4, k=2):
    probs = np.random.default_rng(1).dirichlet(np.ones(k + 1), size=(n_layers, n_pos))[..., :k]
    probs = -np.sort(-probs, axis=-1)
    top = [[[f"L{l}p{p}k{i}" for i in range(k)] for p in range(n_pos)] for l in range(n_layers)]
    return [f"t{p}" for p in range(n_pos)], [f"layer {l}" for l in range(n_layers)], top, probs


def test_logit_lens_grid_validation():
    tokens, labels, top, probs = logit_lens_inputs()
    with pytest.raises(ValueError, match=r"top_probs must hold probabilities in \[0, 1\]"):
        views.logit_lens_grid(tokens, labels, top, probs * 10)
    with pytest.raises(ValueError, match=r"layer_labels has 2 entries but top_probs \(shape \(3, 4, 2\)\) layer has 3"):
        views.logit_lens_grid(tokens, labels[:2], top, probs)
    with pytest.raises(ValueError, match=r"tokens has 5 entries"):
        views.logit_lens_grid(tokens + ["x"], labels, top, probs)
    with pytest.raises(ValueError, match=r"top_tokens\[1\] must have 4 positions"):
        views.logit_lens_grid(tokens, labels, [top[0], top[1][:3], top[2]], probs)
    with pytest.raises(ValueError, match=r"top_tokens\[2\]\[0\] has 1 entries but top_probs .* k has 2"):
        views.logit_lens_grid(tokens, labels, [top[0], top[1], [top[2][0][:1]] + top[2][1:]], probs)
    with pytest.raises(ValueError, match=r"top_probs must have 3 dimension"):
        views.logit_lens_grid(tokens, labels, top, probs[0])
    with pytest.raises(ValueError, match=r"target_tokens has 3 entries"):
        views.logit_lens_grid(tokens, labels, top, probs, target_tokens=["a", "b", "c"])


def test_unknown_component_suggests_the_closest():
    with pytest.raises(ValueError, match=r"unknown component 'AttentionHead'.*did you mean AttentionHeads"):
        render("AttentionHead", tokens=[])


def test_render_refuses_nan_props():
    with pytest.raises(ValueError, match=r"props of TopKTokens must be finite"):
        render("TopKTokens", tokens=["a"], probs=[float("nan")])


# --- props and HTML ---------------------------------------------------------------------------


def test_attention_heads_props_are_rounded_lists():
    attention = causal_attention(3, 7)
    html = views.attention_heads(TOKENS, attention, ["h0", "h1", "h2"], title="Layer 0")._repr_html_()
    props = props_of(html)
    assert props["tokens"] == TOKENS
    assert props["headNames"] == ["h0", "h1", "h2"]
    assert props["title"] == "Layer 0"
    assert np.array(props["attention"]).shape == (3, 7, 7)
    np.testing.assert_allclose(props["attention"], np.round(attention, 3), atol=1e-12)
    # The masked upper triangle is written as the int 0, not 0.0.
    assert props["attention"][0][0][1:] == [0] * 6
    assert all(type(x) is int for x in props["attention"][0][0][1:])


def test_tensor_and_array_inputs_give_the_same_html_props():
    attention = causal_attention(2, 7)
    tensor = torch.tensor(attention, dtype=torch.float32, requires_grad=True)
    from_tensor = props_of(views.attention_heads(TOKENS, tensor)._repr_html_())
    from_array = props_of(views.attention_heads(TOKENS, attention)._repr_html_())
    assert from_tensor == from_array
    assert from_tensor["headNames"] == ["Head 0", "Head 1"]


def test_fragment_contains_bundle_props_and_mount_call():
    view = views.attention_pattern(TOKENS, causal_attention(1, 7)[0])
    html = view._repr_html_()
    (element_id,) = element_ids(html)
    assert f'id="{element_id}-props"' in html
    assert f'document.getElementById("{element_id}")' in html
    assert 'window.hookgptViews.mount("AttentionPattern", element, props);' in html
    assert bundle_source() in html
    assert props_of(html)["tokens"] == TOKENS


def test_repr_html_gives_every_output_its_own_id():
    view = views.colored_tokens(TOKENS, np.arange(7.0))
    first, second = view._repr_html_(), view._repr_html_()
    assert len(element_ids(first)) == len(element_ids(second)) == 1
    assert element_ids(first) != element_ids(second)
    assert props_of(first) == props_of(second)


def test_bundle_is_evaluated_once_per_page():
    """The inlined bundle is guarded by its version, so a second output reuses the first one's."""
    html = views.colored_tokens(TOKENS, np.arange(7.0))._repr_html_()
    version = json.loads(MANIFEST_PATH.read_text())["sources_sha256"]
    assert f'if (!window.hookgptViews || window.hookgptViews.version !== "{version}")' in html
    assert version in bundle_source()  # the bundle reports the same version


def test_tokens_cannot_break_out_of_the_script_element():
    tokens = ["</script><script>alert(1)</script>", "a & b", "<!--", "\u2028"]
    html = views.colored_tokens(tokens, np.arange(4.0)).to_html()
    assert "</script><script>alert(1)" not in html
    assert props_of(html)["tokens"] == tokens


def test_colored_tokens_props_keep_significant_digits():
    values = {"small": np.array([1e-4, -2.5e-4, 3.3333e-4]), "big": np.array([1234.5678, 12.34, -2.0])}
    props = props_of(views.colored_tokens(["a", "b", "c"], values, min_value=-1)._repr_html_())
    assert props["values"]["small"] == [0.0001, -0.00025, 0.0003333]
    assert props["values"]["big"] == [1235, 12, -2]  # 4 significant digits of 1234.5678
    assert props["minValue"] == -1.0 and "maxValue" not in props
    plain = props_of(views.colored_tokens(["a", "b", "c"], [1.0, 2.0, 3.25])._repr_html_())
    assert plain["values"] == [1, 2, 3.25]


def test_logit_lens_grid_props():
    tokens, labels, top, probs = logit_lens_inputs()
    props = props_of(views.logit_lens_grid(tokens, labels, top, probs, target_tokens=tokens)._repr_html_())
    assert props["layerLabels"] == labels and props["topTokens"] == top and props["targetTokens"] == tokens
    np.testing.assert_allclose(props["topProbs"], np.round(probs, 4))


def test_saved_html_is_standalone_with_no_urls(tmp_path):
    view = views.attention_heads(TOKENS, causal_attention(2, 7))
    path = view.save(tmp_path / "heads.html")
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert re.search(r"https?://", text) is None
    assert re.search(r"[a-z][a-z0-9+.-]*://", text, re.I) is None, "no URL of any scheme"
    assert re.search(r"<(link|img|iframe)\b|\bsrc=|\bhref=|@import", text, re.I) is None
    assert "Content-Security-Policy" in text and "default-src 'none'" in text
    assert bundle_source() in text
    assert props_of(text)["tokens"] == TOKENS


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "view.html"
    path.write_text("old contents")
    replaced = []
    real_replace = os.replace

    def failing_replace(src, dst):
        replaced.append((Path(src), Path(dst)))
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        views.colored_tokens(TOKENS, np.arange(7.0)).save(path)
    # The old file is untouched, the temporary file was next to it and is gone.
    assert path.read_text() == "old contents"
    ((tmp, dst),) = replaced
    assert tmp.parent == path.parent and tmp != path and dst == path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["view.html"]

    monkeypatch.setattr(os, "replace", real_replace)
    views.colored_tokens(TOKENS, np.arange(7.0)).save(path)
    assert "hookgptViews.mount" in path.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["view.html"]


def test_show_saves_and_opens_a_browser(monkeypatch):
    opened = []
    monkeypatch.setattr("webbrowser.open", lambda url: opened.append(url) or True)
    path = views.top_k_tokens([" Paris", " France"], [0.8, 0.1]).show()
    assert path.exists() and opened == [path.as_uri()]
    path.unlink()
    path.parent.rmdir()


def test_top_k_tokens_validation():
    with pytest.raises(ValueError, match=r"tokens has 1 entries but probs has 2"):
        views.top_k_tokens(["a"], [0.5, 0.2])
    with pytest.raises(ValueError, match=r"pass softmax\(logits\), not logits"):
        views.top_k_tokens(["a", "b"], [3.0, -1.0])


def test_html_of_twelve_heads_of_256_tokens_stays_small():
    html = views.attention_heads([f"t{i}" for i in range(256)], causal_attention(12, 256)).to_html()
    assert len(html) < 5_000_000, f"{len(html):,} bytes"


# --- the model shortcut -----------------------------------------------------------------------


class FakeModel:
    """Just the TransformerLens-style API `attention()` uses, over fixed patterns."""

    def __init__(self, patterns: torch.Tensor):  # [n_layers, n_heads, pos, pos]
        self.patterns = patterns
        self.cfg = types.SimpleNamespace(n_layers=patterns.shape[0])
        self.filters = []

    def to_str_tokens(self, text):
        return ["<|endoftext|>"] + [f" {word}" for word in text.split()]

    def run_with_cache(self, text, names_filter):
        self.filters.append(names_filter)
        names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(self.cfg.n_layers)]
        names += [f"blocks.{layer}.hook_resid_post" for layer in range(self.cfg.n_layers)]
        kept = {name for name in names if names_filter(name)}
        patterns = self.patterns

        class Cache:
            def __getitem__(self, key):
                kind, layer = key
                name = f"blocks.{layer}.attn.hook_{kind}"
                if name not in kept:
                    raise KeyError(name)
                return patterns[layer][None]  # [batch=1, n_heads, pos, pos]

        return torch.zeros(1, patterns.shape[-1], 10), Cache()


def test_attention_from_a_duck_typed_model():
    patterns = torch.tensor(np.stack([causal_attention(3, 4, seed) for seed in range(2)]), dtype=torch.float32)
    model = FakeModel(patterns)
    view = views.attention(model, "the cat sat", layer=1)
    assert view.component == "AttentionHeads"
    props = props_of(view._repr_html_())
    assert props["tokens"] == ["<|endoftext|>", " the", " cat", " sat"]
    assert props["headNames"] == ["L1H0", "L1H1", "L1H2"]
    assert props["title"] == "Attention heads of layer 1"
    np.testing.assert_allclose(props["attention"], np.round(patterns[1].numpy(), 3), atol=1e-6)
    # Only the one pattern that is shown was cached.
    (names_filter,) = model.filters
    assert names_filter("blocks.1.attn.hook_pattern")
    assert not names_filter("blocks.0.attn.hook_pattern") and not names_filter("blocks.1.hook_resid_post")


@pytest.mark.parametrize("layer", [2, -1, 0.5])
def test_attention_rejects_layers_the_model_does_not_have(layer):
    model = FakeModel(torch.zeros(2, 1, 3, 3))
    with pytest.raises(ValueError, match=r"layer must be an int in \[0, 2\)"):
        views.attention(model, "a b", layer=layer)


def test_attention_from_a_real_hooked_gpt():
    hookgpt = pytest.importorskip("hookgpt", reason="hookgpt model core not importable")
    if not hasattr(hookgpt, "HookedGPT"):
        pytest.skip("hookgpt.HookedGPT not available yet")
    torch.manual_seed(0)
    config = hookgpt.GPTConfig(n_layers=2, d_model=64, n_heads=4, d_head=16, d_mlp=256, d_vocab=50257, n_ctx=128)
    model = hookgpt.HookedGPT(config)
    text = "When Mary and John went to the store"
    view = views.attention(model, text, layer=1)
    props = props_of(view._repr_html_())
    assert props["tokens"] == model.to_str_tokens(text)
    _, cache = model.run_with_cache(text)
    expected = cache["pattern", 1][0].detach().numpy()
    assert np.array(props["attention"]).shape == expected.shape == (4, len(props["tokens"]), len(props["tokens"]))
    np.testing.assert_allclose(props["attention"], expected, atol=5e-4 + 1e-6)


# --- the shipped bundle -----------------------------------------------------------------------


def test_bundle_is_small_and_url_free():
    size = BUNDLE_PATH.stat().st_size
    assert size < 150_000, f"bundle is {size:,} bytes"
    assert re.search(r"[a-z][a-z0-9+.-]*://", bundle_source(), re.I) is None


@pytest.mark.skipif(not (REPO / "web" / "package.json").exists(), reason="web/ sources not in this checkout")
def test_bundle_is_built_from_the_current_sources():
    """Fails when web/ changed after the last `npm run build` (or the bundle was edited by hand)."""
    assert bundle_hash.problems() == []


@pytest.mark.skipif(not WEB_SRC.exists(), reason="web/ sources not in this checkout")
def test_python_knows_every_component_of_the_bundle():
    folders = {p.parent.name for p in WEB_SRC.glob("*/*.svelte") if p.stem == p.parent.name}
    assert folders == set(COMPONENTS)
    entry = (WEB_SRC / "index.js").read_text()
    for name in COMPONENTS:
        assert f"import {name} from './{name}/{name}.svelte';" in entry


@pytest.mark.skipif(not WEB_SRC.exists(), reason="web/ sources not in this checkout")
@pytest.mark.parametrize("component", COMPONENTS)
def test_every_mock_renders(component):
    props = json.loads((WEB_SRC / component / "mock.json").read_text())
    view = render(component, **props)
    assert isinstance(view, RenderedHTML)
    assert props_of(view.to_html()) == props
