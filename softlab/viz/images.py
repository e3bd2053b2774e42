"""Images as plotly traces on pixel-edge axes: pixel (r, c) spans x ∈ [c, c + 1], y ∈ [r, r + 1].

Trace and layout helpers return plain dicts so that a figure is validated once, when it is built in one call
(``go.Figure(data=[...], layout={...})``), which is several times cheaper than adding and updating piece by piece.
"""
from __future__ import annotations

import plotly.graph_objects as go

from .inputs import rgb_array

_HIDDEN_AXIS = dict(showgrid=False, zeroline=False, showticklabels=False, ticks="", constrain="domain")


def image_trace(image, name: str = "image") -> dict:
    """The image as an image trace whose pixel edges fall on integer coordinates (boxes use the same axes)."""
    return dict(type="image", z=rgb_array(image), x0=0.5, y0=0.5, dx=1, dy=1, name=name, hoverinfo="skip")


def image_axes(height: int, width: int) -> dict:
    """Layout entries fixing the axes to an image: y downwards, equal scale, no ticks."""
    return dict(xaxis=dict(range=[0, width], **_HIDDEN_AXIS),
                yaxis=dict(range=[height, 0], scaleanchor="x", **_HIDDEN_AXIS))


def style_subplot_image_axes(figure: go.Figure, height: int, width: int, row: int, col: int) -> go.Figure:
    """:func:`image_axes` for one subplot of a grid (its axes keep the subplot's own scale anchors)."""
    figure.update_xaxes(range=[0, width], **_HIDDEN_AXIS, row=row, col=col)
    figure.update_yaxes(range=[height, 0], **_HIDDEN_AXIS, row=row, col=col)
    return figure


def short_name(name: str, limit: int = 22) -> str:
    """The first synonym of a class description, shortened to ``limit`` characters."""
    first = str(name).split(",")[0].strip()
    return first if len(first) <= limit else first[:limit - 1] + "…"
