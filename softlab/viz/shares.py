"""How a calibration splits crops into FerKD categories: one stacked bar of shares per row (an image, the whole
store, each ground-truth class), from counts such as :class:`~softlab.calibrate.CategoryCounter` gives."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from ..calibrate import CATEGORIES
from .colors import CATEGORY_COLORS, category_legend


def category_shares(counts) -> np.ndarray:
    """float64 ``[rows, 4]``: each row's counts divided by its total (0 for an empty row)."""
    counts = np.asarray(counts, dtype=np.float64).reshape(-1, len(CATEGORIES))
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def category_share_figure(rows: dict, title: str = "FerKD categories", height: int | None = None) -> go.Figure:
    """Stacked horizontal bars of category shares, one bar per entry of ``rows`` (``{label: counts[4]}``, drawn
    top to bottom in the given order). Traces are the four categories in CATEGORIES order; hover gives counts."""
    labels = list(rows)
    counts = np.asarray([np.asarray(rows[label], dtype=np.int64) for label in labels]).reshape(-1, len(CATEGORIES))
    shares = category_shares(counts)
    traces = [dict(type="bar", orientation="h", y=labels, x=shares[:, code], customdata=counts[:, code],
                   name=category_legend(name), marker=dict(color=CATEGORY_COLORS[name]), legendgroup=name,
                   text=[f"{share:.0%}" if share >= 0.06 else "" for share in shares[:, code]],
                   textposition="inside", insidetextanchor="middle",
                   hovertemplate="%{y}: %{customdata} crops (%{x:.1%})<extra>" + category_legend(name) + "</extra>")
              for code, name in enumerate(CATEGORIES)]
    layout = dict(barmode="stack", title=title, xaxis=dict(title="share of crops", range=[0, 1], tickformat=".0%"),
                  yaxis=dict(autorange="reversed", automargin=True), legend=dict(orientation="h", y=-0.25),
                  height=height or max(260, 24 * len(labels) + 170), margin=dict(l=10, r=10, t=50, b=10))
    return go.Figure(data=traces, layout=layout)
