"""From props to HTML: the `RenderedHTML` object every view returns.

The components are Svelte, compiled once (see `web/`) into a single
JavaScript file shipped in `static/hookgpt-views.js`. That file defines
`window.hookgptViews`, whose `mount(name, element, props)` draws a component
into an element. Turning a view into HTML therefore takes three pieces:

    <div id="hookgpt-view-…"></div>                    where the view goes
    <script> …the bundle, inlined… </script>            the components
    <script type="application/json">{…props…}</script>  the data
    <script> hookgptViews.mount("Name", div, props) </script>

In a notebook (`_repr_html_`) every output gets a fresh element id, and the
bundle is evaluated only if the page does not already hold this version of
it. A saved file (`save`) is a whole HTML page with everything inlined: no
CDN, no URL of any kind, so it opens the same on a plane. A
Content-Security-Policy in the page makes the browser refuse any network
request, should a future component try one.
"""

import difflib
import functools
import html
import json
import os
import tempfile
import uuid
import webbrowser
from pathlib import Path
from typing import Any

from hookgpt.atomic import write_bytes_atomic

from .props import jsonable

STATIC_DIR = Path(__file__).resolve().parent / "static"
BUNDLE_PATH = STATIC_DIR / "hookgpt-views.js"
MANIFEST_PATH = STATIC_DIR / "bundle.json"

#: The components the bundle exports (web/src/index.js), by mount name.
COMPONENTS = ("AttentionHeads", "AttentionPattern", "CircuitGraph", "ColoredTokens", "FeatureBrowser", "FeatureDashboard", "LogitLensGrid", "TopKTokens")

# Offline by construction: inline scripts and styles, data: images, nothing else.
CONTENT_SECURITY_POLICY = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:"


@functools.cache
def bundle_source() -> str:
    """The compiled components (one IIFE defining `window.hookgptViews`)."""
    source = BUNDLE_PATH.read_text(encoding="utf-8")
    if "</script" in source.lower():  # would end the inline <script> early
        raise RuntimeError(f"{BUNDLE_PATH} contains '</script' and cannot be inlined")
    return source


@functools.cache
def bundle_version() -> str:
    """Fingerprint of the sources the bundle was built from (also `hookgptViews.version`)."""
    return json.loads(MANIFEST_PATH.read_text(encoding="utf-8"))["sources_sha256"]


def props_to_json(props: dict[str, Any]) -> str:
    """Compact JSON of the props, safe to put inside a <script> element.

    `<`, `>` and `&` are written as \\u escapes, so a token such as
    "</script>" cannot end the element; JSON.parse reads them back unchanged.
    """
    text = json.dumps(props, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=jsonable)
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


class RenderedHTML:
    """An interactive view: shows itself in Jupyter / VS Code, saves as one offline HTML file.

    Made by `render(component, **props)` or by the view functions
    (`attention_heads`, `colored_tokens`, ...). `props` are the component's
    props exactly as the Svelte component receives them (camelCase names).
    """

    def __init__(self, component: str, props: dict[str, Any]):
        if component not in COMPONENTS:
            close = difflib.get_close_matches(component, COMPONENTS, n=3)
            suggestion = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"unknown component {component!r}; known: {', '.join(COMPONENTS)}{suggestion}")
        self.component = component
        self.props = props
        try:
            self.props_json = props_to_json(props)  # serialise now: bad props fail here, not in the browser
        except ValueError as error:  # allow_nan=False
            raise ValueError(f"props of {component} must be finite JSON values: {error}") from None

    def __repr__(self) -> str:
        return f"<RenderedHTML {self.component}: {len(self.props_json):,} bytes of props>"

    def fragment(self, element_id: str | None = None) -> str:
        """The view as an HTML fragment: element, bundle (evaluated once per page), props, mount call."""
        element_id = element_id or f"hookgpt-view-{uuid.uuid4().hex}"
        version = json.dumps(bundle_version())
        return (
            f'<div id="{element_id}" class="hookgpt-view-root"></div>\n'
            f"<script>\n"
            f"if (!window.hookgptViews || window.hookgptViews.version !== {version}) {{\n"
            f"{bundle_source()}\n"
            f"window.hookgptViews = hookgptViews;\n"
            f"}}\n"
            f"</script>\n"
            f'<script type="application/json" id="{element_id}-props">{self.props_json}</script>\n'
            f"<script>\n"
            f"(function () {{\n"
            f'  var element = document.getElementById("{element_id}");\n'
            f'  var props = JSON.parse(document.getElementById("{element_id}-props").textContent);\n'
            f"  window.hookgptViews.mount({json.dumps(self.component)}, element, props);\n"
            f"}})();\n"
            f"</script>\n"
        )

    def _repr_html_(self) -> str:
        """Notebook display; a new element id on every call, so two outputs never collide."""
        return self.fragment()

    def to_html(self, title: str | None = None) -> str:
        """A complete, standalone HTML page holding the view, the bundle and the data."""
        title = title or self.props.get("title") or f"hookgpt: {self.component}"
        return (
            "<!DOCTYPE html>\n"
            '<html lang="en">\n'
            "<head>\n"
            '<meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(str(title))}</title>\n"
            "<style>body { margin: 16px; background: #f6f8fa; }</style>\n"
            "</head>\n"
            "<body>\n"
            f"{self.fragment()}"
            "</body>\n"
            "</html>\n"
        )

    def save(self, path: str | os.PathLike, title: str | None = None) -> Path:
        """Write the standalone page to `path` atomically (temporary file, then `os.replace`)."""
        return write_bytes_atomic(path, self.to_html(title).encode("utf-8"))

    def show(self) -> Path:
        """Save to a temporary file and open it in the default web browser; returns the file."""
        directory = Path(tempfile.mkdtemp(prefix="hookgpt-view-"))
        path = self.save(directory / f"{self.component}.html")
        webbrowser.open(path.as_uri())
        return path


def render(component_name: str, **props: Any) -> RenderedHTML:
    """Render any bundled component by name with the given props (camelCase, as in the .svelte file).

    The view functions (`attention_heads`, ...) validate and convert their
    inputs and then call this; use it directly for props they do not expose.
    Arrays and tensors among `props` are converted to lists unrounded.
    """
    return RenderedHTML(component_name, props)
