"""A report: several results on one offline HTML page (what `hookgpt demo` and `--out` write).

    page = report_page("Head scans", [("induction", figure), ("top heads", dataframe)])
    save_report("report.html", "Head scans", sections)

Each section is a heading and one item: a plotly figure, a rendered view (anything with
`_repr_html_`, e.g. `attention(model, text, layer)`), a pandas DataFrame, or text (shown
preformatted). plotly.js is inlined once, with the first figure; each view carries the bundle,
which the page evaluates once. Nothing is loaded from the network.
"""

import html
import os
from pathlib import Path
from typing import Any, Sequence, Union

from hookgpt.atomic import write_text_atomic

STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:24px auto;padding:0 16px;color:#1f2328}"
    "h1{font-size:1.6em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #d0d7de}"
    "pre{background:#f6f8fa;padding:12px;white-space:pre-wrap}.table{border-collapse:collapse}"
    ".table td,.table th{padding:4px 10px;border-bottom:1px solid #eee;text-align:right}"
)

Section = tuple[str, Any]  # (heading, figure / view / DataFrame / text)


def section_html(item: Any, include_plotlyjs: bool) -> str:
    """One section's body as HTML."""
    import pandas as pd
    import plotly.graph_objects as go

    if isinstance(item, go.Figure):
        return item.to_html(full_html=False, include_plotlyjs=include_plotlyjs)
    if isinstance(item, pd.DataFrame):
        return item.to_html(index=False, float_format=lambda x: f"{x:.3f}", border=0, classes="table")
    if hasattr(item, "_repr_html_"):
        return item._repr_html_()
    return f"<pre>{html.escape(str(item))}</pre>"


def report_page(title: str, sections: Sequence[Section]) -> str:
    """The whole page: a title, then each section's heading and item."""
    import plotly.graph_objects as go

    parts, plotly_included = [], False
    for heading, item in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts.append(section_html(item, include_plotlyjs=not plotly_included))
        plotly_included = plotly_included or isinstance(item, go.Figure)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>\n" + "\n".join(parts) + "\n</body></html>\n"
    )


def save_report(path: Union[str, os.PathLike], title: str, sections: Sequence[Section]) -> Path:
    """Write `report_page(title, sections)` to `path` atomically; returns the path."""
    return write_text_atomic(Path(path), report_page(title, sections))
