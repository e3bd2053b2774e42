"""The hard-region mask drawn over its image: a heatmap per statistic, switchable, with an opacity slider."""
from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go

from ..calibrate import CATEGORIES
from ..labels.store import LabelStore
from .colors import CATEGORY_COLORS, CATEGORY_LABELS, category_colorscale
from .crops import IMAGE_FIGURE_HEIGHT, category_box_trace, crop_hover_text, image_title
from .images import image_axes, image_trace
from .inputs import image_categories, image_size, image_thresholds, image_y_s
from .masks import hard_region_mask

MASK_STATISTICS = {
    "local_y_s": "local y_s (small crops weigh most)",
    "local_hard_share": "local share of hard crops",
    "mean_y_s": "mean y_s of covering crops",
    "min_y_s": "min y_s of covering crops",
    "majority": "majority category",
    "hard_share": "share of hard + discarded-hard crops",
    "coverage": "crops covering the pixel",
}
Y_S_COLORSCALE = "RdYlGn"


def image_mask(image, store: LabelStore, index: int, calibration=None, grid: int | None = 256,
               min_grid: int = 128) -> dict:
    """:func:`~softlab.viz.masks.hard_region_mask` for image ``index`` of a store under a calibration."""
    height, width = image_size(image)
    return hard_region_mask(np.asarray(store.coords[index], dtype=np.float32), image_y_s(store, index),
                            image_categories(store, index, calibration), height, width, grid=grid, min_grid=min_grid)


def display_cells(mask: dict, values: np.ndarray, max_display: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every k-th cell of a mask map so the longer side shows at most ``max_display`` cells → (z, x, y).

    x and y are the cells' centre pixels on the image's pixel-edge axes (pixel c spans [c, c + 1]).
    """
    step = max(1, math.ceil(max(values.shape) / max(int(max_display), 1)))
    return values[::step, ::step], mask["cols"][::step] + 0.5, mask["rows"][::step] + 0.5


def mask_heatmap(mask: dict, statistic: str, opacity: float, thresholds=None, max_display: int = 256,
                 y_s_range=None) -> dict:
    """One statistic of a mask as a heatmap placed on the image's pixel-edge axes (NaN = transparent).

    y_s statistics use ``y_s_range`` (default: the map's own 2nd–98th percentiles, so the image's variation
    uses the whole colour scale; pass ``(0, 1)`` for absolute colours), with T_L/T_M/T_T ticks inside it.
    """
    values = mask[statistic].astype(np.float32)
    if statistic == "majority":
        values = np.where(values < 0, np.nan, values)
    z, x, y = display_cells(mask, values, max_display)
    style = _heatmap_style(statistic, values, thresholds, y_s_range)
    return dict(type="heatmap", z=z, x=x, y=y, opacity=opacity, name=MASK_STATISTICS[statistic], **style,
                hovertemplate="x %{x:.0f}, y %{y:.0f}<br>" + MASK_STATISTICS[statistic] + ": %{z:.3f}<extra></extra>")


def spread_range(values: np.ndarray, low: float = 2, high: float = 98) -> tuple[float, float]:
    """The ``low``–``high`` percentile range of the finite values (a tiny range around a constant map)."""
    finite = values[np.isfinite(values)]
    if not finite.size:
        return 0.0, 1.0
    bottom, top = (float(v) for v in np.percentile(finite, [low, high]))
    return (bottom, top) if top > bottom else (bottom - 1e-3, top + 1e-3)


def _heatmap_style(statistic: str, values: np.ndarray, thresholds, y_s_range=None) -> dict:
    if statistic == "majority":
        return dict(colorscale=category_colorscale(), zmin=-0.5, zmax=len(CATEGORIES) - 0.5,
                    colorbar=dict(title="category", tickvals=list(range(len(CATEGORIES))),
                                  ticktext=[CATEGORY_LABELS[c] for c in CATEGORIES]))
    if statistic == "coverage":
        return dict(colorscale="Viridis", zmin=0, zmax=float(np.nanmax(values)) if values.size else 1,
                    colorbar=dict(title="crops"))
    if statistic in ("hard_share", "local_hard_share"):
        return dict(colorscale="Oranges", zmin=0, zmax=1, colorbar=dict(title="hard share"))
    zmin, zmax = y_s_range if y_s_range is not None else spread_range(values)
    return dict(colorscale=Y_S_COLORSCALE, zmin=zmin, zmax=zmax, colorbar=y_s_colorbar(zmin, zmax, thresholds))


def y_s_colorbar(zmin: float, zmax: float, thresholds) -> dict:
    """A y_s colour bar: the range's ends plus the thresholds that fall inside it."""
    inset = 1e-6 * (zmax - zmin)
    ticks = {zmin + inset: f"{zmin:.2f}", zmax - inset: f"{zmax:.2f}"}
    for name, value in zip(("T_L", "T_M", "T_T"), () if thresholds is None else thresholds):
        if zmin <= value <= zmax:
            ticks[float(value)] = f"{name} {value:.2f}"
    return dict(title="y_s", tickvals=list(ticks), ticktext=list(ticks.values()))


def hard_region_figure(image, store: LabelStore, index: int, calibration=None, statistics=None,
                       opacity: float = 0.55, mask: dict | None = None, max_display: int = 128,
                       crops=None, y_s_range=None) -> go.Figure:
    """The image with its hard-region mask on top: one heatmap per statistic (first shown), a menu, a slider.

    ``statistics`` are keys of :data:`MASK_STATISTICS` (default: local_y_s, local_hard_share, majority, mean_y_s,
    min_y_s); the local ones follow the object (local_y_s: red = hard region, green = object). ``mask`` reuses
    an already computed :func:`image_mask` (default: one on a grid of ``max_display`` cells). ``crops`` outlines
    those crops on top, coloured by category. y_s maps are coloured over their own spread unless ``y_s_range``
    (e.g. ``(0, 1)``) is given. The heatmaps are traces 1.. in the order given, so a widget can switch them or
    restyle their ``opacity`` without rebuilding the figure.
    """
    statistics = list(statistics or ("local_y_s", "local_hard_share", "majority", "mean_y_s", "min_y_s"))
    mask = mask if mask is not None else image_mask(image, store, index, calibration, grid=max_display)
    thresholds = image_thresholds(store, index, calibration)
    height, width = image_size(image)
    heatmaps = [dict(mask_heatmap(mask, statistic, opacity, thresholds, max_display, y_s_range),
                     visible=position == 0)
                for position, statistic in enumerate(statistics)]
    outlines = [] if crops is None else crop_outline_traces(store, index, calibration, crops, mask["boxes"])
    layout = dict(**image_axes(height, width), title=f"{image_title(store, index)}: hard-region mask",
                  margin=dict(l=10, r=10, t=90, b=40), height=IMAGE_FIGURE_HEIGHT + 80,
                  updatemenus=[_statistic_menu(statistics)],
                  sliders=[_opacity_slider(len(statistics), opacity)])
    return go.Figure(data=[image_trace(image)] + heatmaps + outlines, layout=layout)


def crop_outline_traces(store: LabelStore, index: int, calibration, crops, boxes: np.ndarray) -> list[dict]:
    """Outlines of some crops, one trace per category present among them."""
    crops = np.asarray(crops, dtype=np.int64)
    categories = image_categories(store, index, calibration)[crops]
    hover = np.asarray(crop_hover_text(store, index, crops), dtype=str)
    return [dict(category_box_trace(boxes[crops[categories == code]], hover[categories == code], name,
                                    int((categories == code).sum())), line=dict(color=CATEGORY_COLORS[name], width=3))
            for code, name in enumerate(CATEGORIES) if (categories == code).any()]


def _statistic_menu(statistics: list[str]) -> dict:
    buttons = [dict(label=MASK_STATISTICS[name], method="restyle",
                    args=[{"visible": [k == position for k in range(len(statistics))]},
                          list(range(1, len(statistics) + 1))])
               for position, name in enumerate(statistics)]
    return dict(buttons=buttons, direction="down", x=0, xanchor="left", y=1.0, yanchor="bottom", showactive=True)


def _opacity_slider(heatmaps: int, opacity: float) -> dict:
    levels = np.round(np.linspace(0, 1, 11), 2)
    steps = [dict(label=f"{level:g}", method="restyle", args=[{"opacity": float(level)}, list(range(1, heatmaps + 1))])
             for level in levels]
    return dict(steps=steps, active=int(np.argmin(np.abs(levels - opacity))), currentvalue=dict(prefix="opacity "),
                pad=dict(t=10), len=0.5, x=0.5, xanchor="left", y=0, yanchor="top")
