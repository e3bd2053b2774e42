"""Figures of one image's crops: boxes coloured by FerKD category, and a grid of the crops' pixels."""
from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from ..calibrate import CATEGORIES
from ..data.crops import cut_crops, pixel_boxes
from ..labels.store import LabelStore
from .colors import CATEGORY_COLORS, category_legend
from .images import image_axes, image_trace, short_name, style_subplot_image_axes
from .inputs import image_categories, image_size, image_y_s
from .stats import category_counts, top_classes

_POINTS_PER_BOX = 6  # four corners, back to the first, then a gap
IMAGE_FIGURE_HEIGHT = 620


def box_outlines(boxes) -> tuple[np.ndarray, np.ndarray]:
    """Closed outlines of pixel boxes ``(i, j, h, w)`` as one polyline: x, y ``[6 n]``, NaN between boxes."""
    i, j, h, w = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).T
    gap = np.full_like(i, np.nan)
    x = np.stack([j, j + w, j + w, j, j, gap], axis=1).ravel()
    y = np.stack([i, i, i + h, i + h, i, gap], axis=1).ravel()
    return x, y


def crop_hover_text(store: LabelStore, index: int, crops, top: int = 3) -> list[str]:
    """One hover text per crop: crop number, flip, y_s and its ``top`` most probable classes."""
    crops = np.asarray(crops, dtype=np.int64)
    classes, probs = top_classes(store, index, crops, top)
    y_s = image_y_s(store, index)[crops]
    flips = np.asarray(store.flip[index])[crops]
    names = store.class_names
    return [
        f"crop {crop}{' (flipped)' if flip else ''}<br>y_s = {ys:.3f}<br>"
        + "<br>".join(f"{names[c]} {p:.3f}" for c, p in zip(row_classes, row_probs))
        for crop, flip, ys, row_classes, row_probs in zip(crops, flips, y_s, classes, probs)
    ]


def category_box_trace(boxes, hover, category: str, count: int, crops=None) -> dict:
    """All boxes of one category as a single closed-outline scatter trace (legend: name and count).

    With ``crops`` (the crop index of each box), every point carries its crop index as ``customdata``, so a
    click on an outline tells which crop it belongs to.
    """
    x, y = box_outlines(boxes) if len(boxes) else (np.array([np.nan]), np.array([np.nan]))
    hover = hover if len(boxes) else [""]
    points = _POINTS_PER_BOX if len(boxes) else 1
    trace = dict(type="scatter", x=x, y=y, mode="lines", name=category_legend(category, count), legendgroup=category,
                 line=dict(color=CATEGORY_COLORS[category], width=1.2), opacity=0.85,
                 text=np.repeat(np.asarray(hover, dtype=str), points),
                 hovertemplate="%{text}<extra>" + category_legend(category) + "</extra>")
    if crops is not None:
        trace["customdata"] = np.repeat(np.asarray(crops, dtype=np.int64), points) if len(boxes) else [-1]
    return trace


def crop_boxes_figure(image, store: LabelStore, index: int, calibration=None, crops=None, max_boxes: int | None = 50,
                      title: str | None = None) -> go.Figure:
    """The image with its crop boxes, one trace per FerKD category (always four, in CATEGORIES order).

    ``image`` is the dataset image (``[C, H, W]`` tensor); ``calibration`` a Calibration or CalibratedStore.
    ``crops`` picks the boxes drawn; by default all of them, thinned to ``max_boxes`` spread evenly over the
    y_s ranking (so each category keeps its share) since hundreds of outlines hide the image. Legend counts
    are over all of the image's crops. Boxes are the stored coords in pixels; a flipped crop covers the same
    region (the flip follows the cut). Trace 0 is the image, traces 1–4 the categories, so a widget can restyle
    them in place.
    """
    height, width = image_size(image)
    categories = image_categories(store, index, calibration)
    counts = category_counts(categories)
    boxes = pixel_boxes(np.asarray(store.coords[index], dtype=np.float32), height, width)
    shown = np.arange(len(boxes)) if crops is None else np.asarray(crops, dtype=np.int64)
    if crops is None and max_boxes is not None and len(shown) > max_boxes:
        shown = np.sort(spread_by_y_s(image_y_s(store, index), max_boxes))
        title = title or f"{image_title(store, index)} ({max_boxes} of {len(boxes)} crops drawn)"
    hover = np.asarray(crop_hover_text(store, index, shown), dtype=str)
    traces = [image_trace(image)]
    for code, category in enumerate(CATEGORIES):
        pick = categories[shown] == code
        traces.append(category_box_trace(boxes[shown[pick]], hover[pick], category, counts[category], shown[pick]))
    layout = dict(**image_axes(height, width), title=title or image_title(store, index), hovermode="closest",
                  legend=dict(title="FerKD category"), margin=dict(l=10, r=10, t=50, b=10), height=IMAGE_FIGURE_HEIGHT)
    return go.Figure(data=traces, layout=layout)


def image_title(store: LabelStore, index: int) -> str:
    """``"image 3: tabby"``: an image of a store and its ground-truth class."""
    target = int(store.targets[index])
    label = short_name(store.class_names[target], 40) if target >= 0 else "unlabelled"
    return f"image {index}: {label}"


def spread_by_y_s(y_s, count: int) -> np.ndarray:
    """``count`` crop indices spread evenly over the crops sorted by y_s (lowest first)."""
    order = np.argsort(np.asarray(y_s, dtype=np.float64), kind="stable")
    picks = np.unique(np.linspace(0, len(order) - 1, num=min(count, len(order))).round().astype(np.int64))
    return order[picks]


def crop_pixels(image, store: LabelStore, index: int, crops, size: int) -> np.ndarray:
    """uint8 ``[m, size, size, 3]``: the crops cut exactly as training cuts them (flip included)."""
    coords, flips = store.crops(index)
    crops = np.asarray(crops, dtype=np.int64)
    interpolation = store.manifest["crops"].get("interpolation", "bicubic")
    cut = cut_crops(image, coords[crops], np.array(flips[crops]), size, interpolation)
    pixels = (cut * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return np.repeat(pixels, 3, axis=3) if pixels.shape[3] == 1 else pixels


def crop_grid_figure(image, store: LabelStore, index: int, calibration=None, crops=None, count: int = 12,
                     columns: int = 6, size: int = 112) -> go.Figure:
    """A grid of crops as the student sees them, each titled with its category, y_s and top class.

    ``crops`` picks the crops (default: ``count`` crops spread over the y_s range, lowest first); each tile has a
    border in its category's colour, and its image trace's ``meta`` is its crop index.
    """
    y_s = image_y_s(store, index)
    crops = spread_by_y_s(y_s, count) if crops is None else np.asarray(crops, dtype=np.int64)
    categories = image_categories(store, index, calibration)[crops]
    classes, probs = top_classes(store, index, crops, 1)
    rows = max(1, math.ceil(len(crops) / columns))
    titles = [f"{CATEGORIES[c].replace('_', '-')} · y_s {y_s[k]:.2f}<br>{short_name(store.class_names[t[0]], 16)} "
              f"{p[0]:.2f}" for k, c, t, p in zip(crops, categories, classes, probs)]
    figure = make_subplots(rows=rows, cols=columns, subplot_titles=titles, horizontal_spacing=0.01,
                           vertical_spacing=0.12 / rows)
    for tile, (pixels, category) in enumerate(zip(crop_pixels(image, store, index, crops, size), categories)):
        row, col = tile // columns + 1, tile % columns + 1
        figure.add_trace(dict(image_trace(pixels, name=f"crop {crops[tile]}"), meta=int(crops[tile])), row=row, col=col)
        style_subplot_image_axes(figure, size, size, row=row, col=col)
        figure.add_shape(type="rect", x0=0, y0=0, x1=size, y1=size, row=row, col=col,
                         line=dict(color=CATEGORY_COLORS[CATEGORIES[category]], width=4))
    _colour_titles(figure, categories)
    figure.update_layout(title=f"{image_title(store, index)}: crops by y_s", height=220 * rows + 60,
                         margin=dict(l=10, r=10, t=80, b=10), showlegend=False)
    return figure


def _colour_titles(figure: go.Figure, categories) -> None:
    for annotation, category in zip(figure.layout.annotations, categories):
        annotation.font = dict(size=11, color=CATEGORY_COLORS[CATEGORIES[category]])
