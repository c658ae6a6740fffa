"""Plotly helpers shared by the analyses: a labelled heatmap and a bar chart.

Token labels repeat (" the" appears twice in most sentences), and plotly merges repeated
category labels into one column. So the axes here are numeric and the labels are tick text.
Signed values (attributions, metric changes) get a diverging colour scale centred on 0.
"""

from typing import Any, Optional, Sequence

import numpy as np
import plotly.graph_objects as go
from torch import Tensor


def to_numpy(values: Any) -> np.ndarray:
    if isinstance(values, Tensor):
        return values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=float)


def heatmap(
    values: Any,
    x_labels: Optional[Sequence[str]] = None,
    y_labels: Optional[Sequence[str]] = None,
    title: str = "",
    x_title: str = "",
    y_title: str = "",
    text: Optional[Sequence[Sequence[str]]] = None,
    hover: Optional[Sequence[Sequence[str]]] = None,
    signed: Optional[bool] = None,
    zmin: Optional[float] = None,
    zmax: Optional[float] = None,
    colorbar_title: str = "",
) -> go.Figure:
    """A heatmap of a `[rows, cols]` array; row 0 at the bottom.

    Args:
        values: `[rows, cols]` tensor or array (NaN cells are left blank).
        x_labels / y_labels: tick text per column / row (may repeat).
        text: `[rows][cols]` strings written in the cells.
        hover: `[rows][cols]` extra hover text.
        signed: diverging colours centred on 0 (default: when values have both signs).
    """
    z = to_numpy(values)
    if z.ndim != 2:
        raise ValueError(f"heatmap needs a 2-D [rows, cols] array, got shape {z.shape}")
    rows, cols = z.shape
    finite = z[np.isfinite(z)]
    if signed is None:
        signed = finite.size > 0 and finite.min() < 0 < finite.max()
    trace: dict[str, Any] = dict(z=z, x=list(range(cols)), y=list(range(rows)), colorbar=dict(title=colorbar_title))
    if signed:
        bound = float(np.abs(finite).max()) if finite.size else 1.0
        trace.update(colorscale="RdBu", zmid=0.0, zmin=-bound if zmin is None else zmin, zmax=bound if zmax is None else zmax)
    else:
        trace.update(colorscale="Blues", zmin=zmin, zmax=zmax)
    if text is not None:
        trace.update(text=text, texttemplate="%{text}", textfont=dict(size=9))
    x_names = list(x_labels) if x_labels is not None else [str(i) for i in range(cols)]
    y_names = list(y_labels) if y_labels is not None else [str(i) for i in range(rows)]
    cell_names = [[f"{y_names[r]} | {x_names[c]}" for c in range(cols)] for r in range(rows)]
    if hover is not None:
        cell_names = [[f"{cell_names[r][c]}<br>{hover[r][c]}" for c in range(cols)] for r in range(rows)]
    customdata = np.array(cell_names, dtype=object)
    trace.update(customdata=customdata, hovertemplate="%{customdata}<br>value=%{z:.4g}<extra></extra>")
    fig = go.Figure(go.Heatmap(**trace))
    fig.update_layout(
        title=title,
        xaxis=dict(title=x_title, tickmode="array", tickvals=list(range(cols)), ticktext=x_names),
        yaxis=dict(title=y_title, tickmode="array", tickvals=list(range(rows)), ticktext=y_names),
    )
    return fig


def bar(values: Any, labels: Sequence[str], title: str = "", x_title: str = "", y_title: str = "") -> go.Figure:
    """A bar per labelled value, in the given order."""
    y = to_numpy(values).reshape(-1)
    hovertemplate = "%{customdata}: %{y:.4g}<extra></extra>"
    fig = go.Figure(go.Bar(x=list(range(len(y))), y=y, customdata=list(labels), hovertemplate=hovertemplate))
    fig.update_layout(
        title=title,
        xaxis=dict(title=x_title, tickmode="array", tickvals=list(range(len(y))), ticktext=list(labels)),
        yaxis=dict(title=y_title),
    )
    return fig
