"""Interactive views of a model's internals, as HTML that works offline.

The views are Svelte components (sources in `web/src/`, one folder per
component) compiled into one JavaScript bundle shipped in `static/`. This
package turns tensors into their props and the props into HTML:

    >>> from analyses.render import attention_heads, colored_tokens
    >>> view = attention_heads(tokens, cache["pattern", 0][0])   # [n_heads, query_pos, key_pos]
    >>> view                        # in Jupyter / VS Code: the interactive view
    >>> view.save("layer0.html")    # one standalone file, no network needed
    >>> view.show()                 # open it in a browser

Views: `attention_heads`, `attention_pattern`, `circuit_graph`, `colored_tokens`,
`logit_lens_grid`, `top_k_tokens`, `feature_dashboard`, `feature_browser` (SAE features); `attention(model, text, layer)` goes from
a model straight to the heads of one layer; `render(name, **props)` mounts any
component with props of your own. `report_page(title, sections)` / `save_report(path, ...)`
put several figures, tables and views on one offline page.

Rebuilding the bundle (after changing `web/src`): `cd web && npm ci && npm run build`.
`python -m analyses.render.bundle_hash` checks that the committed bundle
matches the sources.
"""

from .circuit import circuit_graph
from .html import COMPONENTS, RenderedHTML, render
from .report import report_page, save_report
from .sae_views import feature_browser, feature_dashboard
from .views import (
    attention,
    attention_heads,
    attention_pattern,
    colored_tokens,
    logit_lens_grid,
    top_k_tokens,
)

__all__ = [
    "COMPONENTS",
    "RenderedHTML",
    "attention",
    "attention_heads",
    "attention_pattern",
    "circuit_graph",
    "colored_tokens",
    "feature_browser",
    "feature_dashboard",
    "logit_lens_grid",
    "render",
    "report_page",
    "save_report",
    "top_k_tokens",
]
