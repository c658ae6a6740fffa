"""analyses.render in a real browser: saved HTML opened from disk in headless Chromium.

Every page is opened via file:// with all other requests aborted (and
recorded: a view that tries the network fails its test), then driven like a
user would: hover a token, click a head, hover a heatmap cell, and read what
the view displays back against the data that went in.

Needs Debian's chromium (`apt-get install -y chromium`) and the Python
`playwright` package; the browsers Playwright would download are not used.
Screenshots land in test-artifacts/ (gitignored).
"""

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from analyses import render as views
from analyses.render.html import COMPONENTS

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = Path(os.environ.get("HOOKGPT_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def causal_attention(n_heads: int, n_pos: int, seed: int = 0) -> np.ndarray:
    """Random causal attention patterns: [n_heads, query_pos, key_pos], rows sum to 1."""
    scores = np.random.default_rng(seed).normal(size=(n_heads, n_pos, n_pos)) * 2
    scores = np.where(np.tril(np.ones((n_pos, n_pos), dtype=bool)), scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    return weights / weights.sum(-1, keepdims=True)


TOKENS = ["<|endoftext|>", "When", " Mary", " and", " John", " went", " to", " the", " store"]


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the whole module."""
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)) and not shutil.which(str(CHROMIUM)):
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install -y chromium (or set HOOKGPT_CHROMIUM)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Python package playwright not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


class OfflinePage:
    """A browser tab that may read file:// and nothing else, and remembers what went wrong."""

    def __init__(self, browser, directory: Path):
        self.directory = directory
        self.context = browser.new_context(viewport={"width": 1200, "height": 900}, device_scale_factor=1)
        self.blocked: list[str] = []
        self.errors: list[str] = []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))
        self.page.on("console", lambda msg: msg.type == "error" and self.errors.append(f"console: {msg.text}"))

    def _route(self, route):
        if route.request.url.startswith("file:"):
            route.continue_()
        else:
            self.blocked.append(route.request.url)
            route.abort()

    def open(self, view, name: str, init_script: str | None = None):
        """Save `view` as `name`.html, open it, wait until the component is mounted; returns the page."""
        path = view.save(self.directory / f"{name}.html")
        if init_script:
            self.page.add_init_script(init_script)
        self.page.goto(path.as_uri())
        self.page.wait_for_selector(f'[data-mounted="{view.component}"] .hookgpt-view', timeout=10_000)
        return self.page

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def assert_clean(self):
        assert self.blocked == [], f"the view tried the network: {self.blocked}"
        assert self.errors == [], self.errors


@pytest.fixture
def tab(browser, tmp_path):
    tab = OfflinePage(browser, tmp_path)
    yield tab
    tab.context.close()


def text(page, selector: str) -> str:
    return page.locator(selector).text_content()


# --- every component, with the mock data of web/src/<Component>/mock.json ---------------------


@pytest.mark.parametrize("component", COMPONENTS)
def test_mock_view_mounts_offline(tab, component):
    mock = REPO / "web" / "src" / component / "mock.json"
    if not mock.exists():
        pytest.skip("web/ sources not in this checkout")
    page = tab.open(views.render(component, **json.loads(mock.read_text())), f"mock-{component}")
    assert page.locator(f'.hookgpt-view[data-component="{component}"]').count() == 1
    assert page.evaluate("Object.keys(window.hookgptViews.components).sort()") == sorted(COMPONENTS)
    tab.screenshot(f"mock-{component}")
    tab.assert_clean()


# --- notebook outputs --------------------------------------------------------------------------

COUNT_BUNDLES = """
(() => {
  let current;
  const seen = new Set();
  Object.defineProperty(window, 'hookgptViews', {
    configurable: true,
    get: () => current,
    set: (value) => { current = value; seen.add(value); },
  });
  window.__bundlesEvaluated = () => seen.size;
})();
"""


def test_two_notebook_outputs_share_one_bundle(tab):
    """Two `_repr_html_` fragments on one page (as in a notebook): both mount, the bundle runs once."""
    first = views.colored_tokens(TOKENS, np.arange(len(TOKENS), dtype=float))
    second = views.attention_pattern(TOKENS, causal_attention(1, len(TOKENS))[0])
    page_path = tab.directory / "notebook.html"
    page_path.write_text(
        '<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>'
        f"{first._repr_html_()}<p>some markdown cell</p>{second._repr_html_()}</body></html>",
        encoding="utf-8",
    )
    tab.page.add_init_script(COUNT_BUNDLES)
    tab.page.goto(page_path.as_uri())
    tab.page.wait_for_selector('[data-mounted="AttentionPattern"] .hookgpt-view')
    assert tab.page.locator('[data-mounted="ColoredTokens"] .hookgpt-view').count() == 1
    assert tab.page.evaluate("window.__bundlesEvaluated()") == 1
    tab.assert_clean()


# --- AttentionHeads ----------------------------------------------------------------------------


def test_attention_heads_hover_click_and_values(tab):
    attention = np.round(causal_attention(4, len(TOKENS), seed=3), 3)
    names = [f"L0H{h}" for h in range(4)]
    page = tab.open(views.attention_heads(TOKENS, attention, names, title="Layer 0"), "heads")

    # Four thumbnails, the first one enlarged.
    assert page.locator(".thumb").count() == 4
    assert page.locator(".thumb.selected").get_attribute("data-head") == "0"
    assert text(page, ".head-title") == "L0H0"

    # Click head 2: it becomes the selected one and is shown large.
    page.click('.thumb[data-head="2"]')
    assert page.locator('.thumb[data-head="2"]').get_attribute("aria-selected") == "true"
    assert page.locator(".thumb.selected").count() == 1
    assert page.locator(".enlarged").get_attribute("data-head") == "2"
    assert text(page, ".head-title") == "L0H2"
    small = page.locator('.thumb[data-head="2"] canvas').bounding_box()
    large = page.locator(".enlarged .pattern-view canvas").bounding_box()
    assert large["width"] > 2 * small["width"] and large["height"] > 2 * small["height"]

    # Hover " John" (position 4): the text is coloured by what it attends to ...
    query = 4
    page.hover(f'.tokens .tok[data-index="{query}"]')
    shown = [float(page.locator(f'.tokens .tok[data-index="{k}"]').get_attribute("data-value")) for k in range(len(TOKENS))]
    np.testing.assert_array_equal(shown, attention[2, query])
    # ... and the info line names the strongest key with its value.
    best = int(np.argmax(attention[2, query]))
    first_link = page.locator(".token-info .links").first.locator(".link").first
    assert first_link.get_attribute("data-pos") == str(best)
    assert f"{attention[2, query, best]:.3f}" in first_link.text_content()
    assert repr(TOKENS[best]).strip("\"'") in first_link.text_content()
    # The other direction: who attends to " John".
    attended_by = page.locator(".token-info .links").nth(1).locator(".link").first
    best_query = int(np.argmax(attention[2, :, query]))
    assert attended_by.get_attribute("data-pos") == str(best_query)
    assert f"{attention[2, best_query, query]:.3f}" in attended_by.text_content()
    tab.screenshot("heads-hover-token")

    # Switch the colouring to "what attends to it".
    page.check('input[value="from"]')
    page.hover(f'.tokens .tok[data-index="{query}"]')
    shown = [float(page.locator(f'.tokens .tok[data-index="{q}"]').get_attribute("data-value")) for q in range(len(TOKENS))]
    np.testing.assert_array_equal(shown, attention[2, :, query])

    # Hover a cell of the enlarged heatmap: the info line shows that weight.
    q, k = 6, 2
    box = page.locator(".enlarged .pattern-view canvas").bounding_box()
    cell = box["width"] / len(TOKENS)
    page.mouse.move(box["x"] + (k + 0.5) * cell, box["y"] + (q + 0.5) * cell)
    info = page.locator(".pattern-info")
    assert (info.get_attribute("data-query"), info.get_attribute("data-key")) == (str(q), str(k))
    assert text(page, ".pattern-info .value") == f"{attention[2, q, k]:.3f}"
    assert "' to'" in info.text_content() and "' Mary'" in info.text_content()
    tab.screenshot("heads-hover-cell")
    tab.assert_clean()


def test_attention_pattern_hover_cell(tab):
    pattern = np.round(causal_attention(1, len(TOKENS), seed=5)[0], 3)
    page = tab.open(views.attention_pattern(TOKENS, pattern, title="one head"), "pattern")
    assert page.locator(".key-label").count() == page.locator(".query-label").count() == len(TOKENS)
    box = page.locator("canvas").bounding_box()
    cell = box["width"] / len(TOKENS)
    for q, k in [(0, 0), (8, 3), (5, 5)]:
        page.mouse.move(box["x"] + (k + 0.5) * cell, box["y"] + (q + 0.5) * cell)
        assert text(page, ".pattern-info .value") == f"{pattern[q, k]:.3f}"
        assert page.locator(".query-label.on").text_content().strip() == TOKENS[q].strip()
    tab.screenshot("pattern-hover-cell")
    tab.assert_clean()


# --- ColoredTokens -----------------------------------------------------------------------------


def test_colored_tokens_hover_and_switch_sets(tab):
    rng = np.random.default_rng(7)
    values = {"neuron 12": np.round(rng.normal(size=len(TOKENS)), 3), "loss": np.round(rng.uniform(0, 5, len(TOKENS)), 3)}
    page = tab.open(views.colored_tokens(TOKENS, values, title="values"), "colored-tokens")
    assert page.locator(".set.active").text_content() == "neuron 12"

    for i in (2, 5):
        page.hover(f'.tokens .tok[data-index="{i}"]')
        assert text(page, ".value-info .value") == f"{values['neuron 12'][i]:.3f}"
        assert page.locator(".value-info").get_attribute("data-index") == str(i)

    # Positive values are drawn red, negative blue.
    def rgb(i):
        style = page.locator(f'.tokens .tok[data-index="{i}"]').evaluate("e => getComputedStyle(e).backgroundColor")
        return [int(x) for x in re.findall(r"\d+", style)[:3]]

    top, bottom = int(np.argmax(values["neuron 12"])), int(np.argmin(values["neuron 12"]))
    assert rgb(top)[0] > rgb(top)[2] and rgb(bottom)[2] > rgb(bottom)[0]

    page.click('.set[data-set="loss"]')
    page.hover('.tokens .tok[data-index="3"]')
    assert text(page, ".value-info .value") == f"{values['loss'][3]:.3f}"
    tab.screenshot("colored-tokens-hover")
    tab.assert_clean()


# --- LogitLensGrid -----------------------------------------------------------------------------


def test_logit_lens_grid_shows_top_tokens(tab):
    rng = np.random.default_rng(11)
    vocab = [" Paris", " France", " the", " a", " located", " Tower", ",", "\n"]
    n_layers, n_pos, k = 4, 5, 3
    logits = rng.normal(size=(n_layers, n_pos, len(vocab))) * 2
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    order = np.argsort(-probs, axis=-1)[..., :k]
    top_probs = np.round(np.take_along_axis(probs, order, -1), 4)
    top_tokens = [[[vocab[i] for i in order[l, p]] for p in range(n_pos)] for l in range(n_layers)]
    labels = ["embed", "L0", "L1", "final"]
    page = tab.open(views.logit_lens_grid(["<|endoftext|>", "The", " Eiffel", " Tower", " is"], labels, top_tokens, top_probs), "logit-lens")

    for layer in range(n_layers):
        for pos in range(n_pos):
            cell = page.locator(f'td.cell[data-layer="{layer}"][data-pos="{pos}"]')
            assert cell.text_content() == top_tokens[layer][pos][0].replace("\n", "↵")

    page.hover('td.cell[data-layer="2"][data-pos="3"]')
    detail = page.locator(".detail")
    assert (detail.get_attribute("data-layer"), detail.get_attribute("data-pos")) == ("2", "3")
    assert "L1" in detail.text_content() and "' Tower'" in detail.text_content()
    rows = detail.locator("tr[data-rank]")
    assert rows.count() == k
    for rank in range(k):
        row = rows.nth(rank)
        assert row.get_attribute("data-token") == top_tokens[2][3][rank]
        assert float(row.get_attribute("data-prob")) == top_probs[2, 3, rank]
        percent = float(row.locator(".prob").text_content().rstrip("%"))
        assert abs(percent - 100 * top_probs[2, 3, rank]) <= 0.05 + 1e-9
    tab.screenshot("logit-lens-hover")
    tab.assert_clean()


# --- size and speed ----------------------------------------------------------------------------

TIMING_SCRIPT = """
window.__hookgptTiming = {};
document.addEventListener('DOMContentLoaded', () => {
  window.__hookgptTiming.mounted = performance.now();
  requestAnimationFrame(() => requestAnimationFrame(() => { window.__hookgptTiming.painted = performance.now(); }));
});
"""

# Mount the same props again into a fresh element and wait for the next frame:
# Svelte runs the effects that paint the canvases just before it.
REMOUNT_SCRIPT = """
async () => {
  const props = JSON.parse(document.querySelector('script[type="application/json"]').textContent);
  const element = document.createElement('div');
  document.body.append(element);
  const start = performance.now();
  const instance = window.hookgptViews.mount('AttentionHeads', element, props);
  await new Promise((resolve) => requestAnimationFrame(resolve));
  const elapsed = performance.now() - start;
  window.hookgptViews.unmount(instance);
  element.remove();
  return elapsed;
}
"""


def test_twelve_heads_of_256_tokens_render_fast(tab):
    n_heads, n_pos = 12, 256
    tokens = [f" w{i}" for i in range(n_pos)]
    attention = causal_attention(n_heads, n_pos, seed=1)
    view = views.attention_heads(tokens, attention)
    page = tab.open(view, "heads-12x256", init_script=TIMING_SCRIPT)
    page.wait_for_function("window.__hookgptTiming && window.__hookgptTiming.painted", timeout=10_000)
    timing = page.evaluate("window.__hookgptTiming")
    assert page.locator(".thumb").count() == n_heads
    assert page.locator(".tokens .tok").count() == n_pos
    mount_ms = page.evaluate(REMOUNT_SCRIPT)

    # Interaction stays responsive: hover the last token, its row is recoloured.
    page.hover(f'.tokens .tok[data-index="{n_pos - 1}"]')
    assert float(page.locator('.tokens .tok[data-index="0"]').get_attribute("data-value")) == round(attention[0, -1, 0], 3)

    html_bytes = (tab.directory / "heads-12x256.html").stat().st_size
    report = {"html_bytes": html_bytes, "load_to_first_paint_ms": round(timing["painted"], 1),
              "load_to_mounted_ms": round(timing["mounted"], 1), "mount_to_next_frame_ms": round(mount_ms, 1)}
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "render-timing.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n12 heads x 256 tokens: {report}")
    tab.screenshot("heads-12x256")
    assert timing["painted"] < 3000, report  # target < 1 s; generous for a loaded CI machine
    tab.assert_clean()


# --- CircuitGraph ------------------------------------------------------------------------------


def full_circuit(n_layers: int, n_heads: int, seed: int = 0):
    """Every node and edge of a model's graph (as EAP scores them), with distinct random scores.

    Nodes: the embeddings, each head (column = head index), each layer's MLP, the logits. Edges:
    from every node to every later one, into each head through q, k and v separately.
    """
    rng = np.random.default_rng(seed)
    nodes = [{"id": "embed", "layer": -1, "kind": "embed", "label": "embed"}]
    for layer in range(n_layers):
        for head in range(n_heads):
            nodes.append({"id": f"L{layer}H{head}", "layer": layer, "kind": "head", "label": f"L{layer}H{head}",
                          "head": head, "score": round(float(rng.normal()), 4)})
        nodes.append({"id": f"MLP{layer}", "layer": layer, "kind": "mlp", "label": f"MLP {layer}"})
    nodes.append({"id": "logits", "layer": n_layers, "kind": "logits", "label": "logits"})
    edges = []
    for source in nodes:
        for target in nodes:
            later = source["layer"] < target["layer"] or (source["kind"], target["kind"]) == ("head", "mlp") and source["layer"] == target["layer"]
            if source["kind"] == "logits" or target["kind"] == "embed" or not later:
                continue
            for receiver in ("q", "k", "v") if target["kind"] == "head" else (None,):
                edges.append({"source": source["id"], "target": target["id"], "receiver": receiver})
    scores = rng.permutation(np.linspace(-1, 1.5, len(edges))) * rng.uniform(0.5, 1, len(edges))
    for edge, score in zip(edges, scores):
        edge["score"] = round(float(score), 5)
    return nodes, edges


EDGE_MIDPOINT = """
(index) => {
  const path = document.querySelector(`g.edge[data-index="${index}"] path.hit`);
  const point = path.getPointAtLength(path.getTotalLength() / 2);
  const screen = new DOMPoint(point.x, point.y).matrixTransform(path.getScreenCTM());
  return [screen.x, screen.y];
}
"""

NODE_BOXES = """
() => [...document.querySelectorAll('g.node')].map((g) => {
  const box = g.querySelector('rect').getBoundingClientRect();
  return { id: g.dataset.id, x: box.x, y: box.y, w: box.width, h: box.height, text: g.querySelector('.node-label').textContent };
})
"""

SET_SLIDER = """
(value) => {
  const slider = document.querySelector('input.top-n');
  slider.value = String(value);
  slider.dispatchEvent(new Event('input', { bubbles: true }));
}
"""


def four_significant(value: float) -> str:
    """What the view writes for a score (formatScore in web/src/shared/format.js), for |value| in [1e-4, 1e5)."""
    return repr(float(f"{value:.4g}")).removesuffix(".0")


def assert_no_overlaps(boxes):
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            apart = a["x"] + a["w"] <= b["x"] or b["x"] + b["w"] <= a["x"] or a["y"] + a["h"] <= b["y"] or b["y"] + b["h"] <= a["y"]
            assert apart, f"nodes {a['id']} and {b['id']} overlap: {a} {b}"


def test_circuit_graph_hover_threshold_and_click(tab):
    nodes, edges = full_circuit(2, 4, seed=2)
    scores = np.array([edge["score"] for edge in edges])
    tokens = ["<|endoftext|>", " A", " B", " C", " A", " B"]
    pattern = np.round(causal_attention(1, len(tokens), seed=4)[0], 3)
    view = views.circuit_graph(nodes, edges, patterns={"L1H1": {"tokens": tokens, "pattern": pattern}}, title="2 x 4")
    page = tab.open(view, "circuit-2x4")

    # Every node and (110 <= top_n) every edge is drawn; each head that receives q/k/v edges has three ports.
    assert page.locator("g.node").count() == len(nodes) == 12
    assert page.locator("g.edge").count() == len(edges) == 110
    assert page.locator("circle.port").count() == 3 * 8
    assert page.locator(".edge-count").get_attribute("data-shown") == "110"

    # Layers run upwards: embed below layer 0 below layer 1 below the logits; heads in order, MLP to their right.
    boxes = {box["id"]: box for box in page.evaluate(NODE_BOXES)}
    assert_no_overlaps(list(boxes.values()))
    assert all(box["text"] == next(n["label"] for n in nodes if n["id"] == box["id"]) for box in boxes.values())
    y = lambda node_id: boxes[node_id]["y"]
    assert y("embed") > y("L0H0") > y("L1H0") > y("logits")
    assert y("L0H0") > y("MLP0") > y("L1H0")  # the MLP reads its layer's attention: raised half a row
    assert [boxes[f"L1H{h}"]["x"] for h in range(4)] == sorted(boxes[f"L1H{h}"]["x"] for h in range(4))
    assert boxes["MLP1"]["x"] > boxes["L1H3"]["x"] + boxes["L1H3"]["w"]
    assert boxes["L0H2"]["x"] == boxes["L1H2"]["x"]  # a head sits in the column of its index

    # Colour by sign, width by magnitude.
    strongest, weakest = int(np.argmax(np.abs(scores))), int(np.argmin(np.abs(scores)))
    negative = int(np.argmin(scores))
    stroke = lambda i: page.locator(f'g.edge[data-index="{i}"] path.stroke')
    assert float(stroke(strongest).get_attribute("stroke-width")) > 3 * float(stroke(weakest).get_attribute("stroke-width"))
    assert stroke(negative).get_attribute("stroke") == "rgb(33, 102, 172)"
    assert stroke(int(np.argmax(scores))).get_attribute("stroke") == "rgb(178, 24, 43)"

    # Hover the strongest edge: the tooltip names it and shows its score.
    page.mouse.move(*page.evaluate(EDGE_MIDPOINT, strongest))
    tooltip = page.locator(".tooltip")
    assert tooltip.get_attribute("data-index") == str(strongest)
    edge = edges[strongest]
    receiver = f" ({edge['receiver']})" if edge["receiver"] else ""
    assert text(page, ".tooltip .label") == f"{edge['source']} → {edge['target']}{receiver}".replace("MLP", "MLP ")
    assert text(page, ".tooltip .score") == four_significant(edge["score"])
    assert float(tooltip.get_attribute("data-score")) == edge["score"]
    assert page.locator("g.edge.lit").count() == 1
    tab.screenshot("circuit-2x4-hover-edge")

    # Hover a node: its label and score.
    page.hover('g.node[data-id="L0H3"]')
    assert text(page, ".tooltip .label") == "L0H3"
    assert text(page, ".tooltip .score") == four_significant(nodes[4]["score"])

    # Hovering a node lights exactly its edges.
    incident = [i for i, e in enumerate(edges) if "L0H3" in (e["source"], e["target"])]
    assert sorted(int(i) for i in page.locator("g.edge.lit").evaluate_all("els => els.map((e) => e.dataset.index)")) == incident
    page.mouse.move(2, 2)
    assert page.locator(".tooltip").count() == 0 and page.locator("g.edge.lit, g.edge.dim").count() == 0

    # Thin to the 10 strongest edges: exactly those stay, and the threshold is the 10th |score|.
    page.evaluate(SET_SLIDER, 10)
    top10 = np.argsort(-np.abs(scores), kind="stable")[:10]
    drawn = {int(i) for i in page.locator("g.edge").evaluate_all("els => els.map((e) => e.dataset.index)")}
    assert drawn == set(top10.tolist())
    count = page.locator(".edge-count")
    assert count.get_attribute("data-shown") == "10"
    assert float(count.get_attribute("data-threshold")) == abs(scores[top10[-1]])
    page.evaluate(SET_SLIDER, 0)
    assert page.locator("g.edge").count() == 0
    page.evaluate(SET_SLIDER, 25)
    assert page.locator("g.edge").count() == 25

    # Click L1H1: its panel lists its strongest inputs and shows its attention pattern.
    page.click('g.node[data-id="L1H1"]')
    assert page.locator('g.node.selected').get_attribute("data-id") == "L1H1"
    panel = page.locator('.node-panel[data-id="L1H1"]')
    inputs = [i for i in np.argsort(-np.abs(scores), kind="stable") if edges[i]["target"] == "L1H1"][:5]
    listed = panel.locator(".edge-list").first.locator(".edge-item")
    assert [int(listed.nth(k).get_attribute("data-index")) for k in range(listed.count())] == inputs
    assert page.locator('.pattern-panel[data-id="L1H1"] canvas').count() == 1
    box = page.locator(".pattern-panel canvas").bounding_box()
    cell = box["width"] / len(tokens)
    page.mouse.move(box["x"] + 1.5 * cell, box["y"] + 4.5 * cell)
    assert text(page, ".pattern-info .value") == f"{pattern[4, 1]:.3f}"
    tab.screenshot("circuit-2x4-click-head")

    # The keyboard works too: Enter on a focused node selects it.
    page.focus('g.node[data-id="MLP0"]')
    page.keyboard.press("Enter")
    assert page.locator('.node-panel[data-id="MLP0"]').count() == 1
    assert page.locator(".node-panel .no-pattern").count() == 0  # an MLP has no pattern to miss

    # A head without a pattern says so; clicking it again closes the panel.
    page.click('g.node[data-id="L0H0"]')
    assert page.locator('.node-panel[data-id="L0H0"] .no-pattern').count() == 1
    assert page.locator(".pattern-panel").count() == 0
    page.click('g.node[data-id="L0H0"]')
    assert page.locator(".node-panel").count() == 0
    tab.assert_clean()


def test_circuit_graph_of_gpt2_small_size(tab):
    """12 layers x 12 heads, all ~32k edges in the props: the strongest 200 drawn, readable, no overlaps."""
    nodes, edges = full_circuit(12, 12, seed=3)
    scores = np.array([edge["score"] for edge in edges])
    page = tab.open(views.circuit_graph(nodes, edges, title="12 x 12"), "circuit-12x12", init_script=TIMING_SCRIPT)
    page.wait_for_function("window.__hookgptTiming && window.__hookgptTiming.painted", timeout=20_000)
    painted_ms = page.evaluate("window.__hookgptTiming.painted")
    assert page.locator("g.node").count() == len(nodes) == 12 * 13 + 2
    assert len(edges) > 32_000
    assert page.locator("g.edge").count() == 200
    boxes = page.evaluate(NODE_BOXES)
    assert_no_overlaps(boxes)
    labels = {node["id"]: node["label"] for node in nodes}
    assert [box["text"] for box in boxes] == [labels[box["id"]] for box in boxes], "a label was cut"
    assert min(box["w"] for box in boxes) >= 40 and min(box["h"] for box in boxes) >= 24

    # The slider is logarithmic in the number of edges: its middle shows about sqrt(32k) of them.
    page.evaluate(SET_SLIDER, 500)
    shown = page.locator("g.edge").count()
    assert shown == round(len(edges) ** 0.5)
    threshold = float(page.locator(".edge-count").get_attribute("data-threshold"))
    assert threshold == np.sort(np.abs(scores))[::-1][shown - 1]
    # No room beside the graph at this width: a clicked node's panel opens over the graph, next to the node.
    page.click('g.node[data-id="L2H1"]')
    panel = page.locator('.node-panel.popover[data-id="L2H1"]').bounding_box()
    node = page.locator('g.node[data-id="L2H1"] rect').bounding_box()
    graph = page.locator("svg.graph").bounding_box()
    assert panel["x"] >= node["x"] + node["width"], "the panel covers the node it describes"
    assert graph["y"] <= panel["y"] and panel["y"] + panel["height"] <= graph["y"] + graph["height"] + 1
    tab.screenshot("circuit-12x12-click")
    page.click(".node-panel .close")
    assert page.locator(".node-panel").count() == 0
    print(f"\n12 x 12 circuit, {len(edges)} edges: load to first paint {painted_ms:.0f} ms, "
          f"{(tab.directory / 'circuit-12x12.html').stat().st_size:,} bytes of HTML")
    tab.screenshot("circuit-12x12")
    assert painted_ms < 5000
    tab.assert_clean()


def test_circuit_graph_reports_bad_props_inside_the_view(tab):
    """Props that bypass circuit_graph's checks (render() directly) fail visibly, naming the field."""
    nodes = [{"id": "a", "layer": -1, "kind": "embed", "label": "a"}, {"id": "b", "layer": 0, "kind": "head", "label": "b"}]
    path = views.render("CircuitGraph", nodes=nodes, edges=[{"source": "a", "target": "c", "score": 1}]).save(tab.directory / "bad.html")
    tab.page.goto(path.as_uri())
    tab.page.wait_for_selector(".hookgpt-view-root pre")
    assert 'edges[0].target is "c", which is not a node id' in text(tab.page, ".hookgpt-view-root pre")
    assert tab.blocked == []


def test_circuit_graph_heads_without_index_and_long_labels(tab):
    """Heads placed in order when they carry no index; long labels are cut to fit and shown whole on hover."""
    nodes = [{"id": "tok", "layer": -1, "kind": "embed", "label": "token embedding"},
             {"id": "pos", "layer": -1, "kind": "embed", "label": "position embedding"}]
    nodes += [{"id": f"a{l}.{h}", "layer": l, "kind": "head", "label": f"blocks.{l}.attn.head{h}"} for l in range(3) for h in range(3)]
    nodes += [{"id": f"m{l}", "layer": l, "kind": "mlp", "label": f"blocks.{l}.mlp"} for l in range(3)]
    nodes.append({"id": "logits", "layer": 3, "kind": "logits", "label": "logits"})
    edges = [{"source": "tok", "target": "a0.1", "receiver": "v", "score": 0.5},
             {"source": "a0.1", "target": "a2.2", "receiver": "q", "score": -0.7},
             {"source": "a2.2", "target": "m2", "score": 0.25},
             {"source": "m2", "target": "logits", "score": 1.0}]
    page = tab.open(views.circuit_graph(nodes, edges), "circuit-long-labels")
    boxes = page.evaluate(NODE_BOXES)
    assert_no_overlaps(boxes)
    by_id = {box["id"]: box for box in boxes}
    assert by_id["a1.0"]["x"] < by_id["a1.1"]["x"] < by_id["a1.2"]["x"] < by_id["m1"]["x"]
    assert by_id["a0.2"]["x"] == by_id["a2.2"]["x"]
    # Cut in the middle, so heads of one row (same prefix) still differ.
    start, end = by_id["a1.2"]["text"].split("…")
    assert "blocks.1.attn.head2".startswith(start) and "blocks.1.attn.head2".endswith(end) and end.endswith("head2")
    assert len({by_id[f"a1.{h}"]["text"] for h in range(3)}) == 3
    assert by_id["tok"]["text"] == "token embedding"
    page.hover('g.node[data-id="a1.2"]')
    assert text(page, ".tooltip .label") == "blocks.1.attn.head2"
    tab.screenshot("circuit-long-labels")
    tab.assert_clean()
