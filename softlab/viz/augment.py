"""Figures of an augmentation preview (:mod:`softlab.train.preview`): an image's crops and its mixed samples."""
from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass, field

import numpy as np
import plotly.graph_objects as go
from PIL import Image

from .crops import box_outlines
from .images import image_axes, short_name
from .inputs import image_size, rgb_array

BOX_COLOR = "#ff7f0e"
CUTMIX_COLOR = "#d62728"
TILE_HEIGHT = 210


def png_data_uri(rgb: np.ndarray) -> str:
    """uint8 ``[H, W, 3]`` → a lossless PNG ``data:`` URI."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def png_image_trace(image, name: str = "image") -> dict:
    """Like :func:`~softlab.viz.images.image_trace` (pixel edges on integer coordinates), but the pixels travel as
    one PNG string instead of nested lists of numbers, which is what keeps a live preview's redraws fast."""
    return dict(type="image", source=png_data_uri(rgb_array(image)), x0=0.5, y0=0.5, dx=1, dy=1, name=name,
                hoverinfo="skip")


def crop_title(crops, n: int) -> str:
    """``"crop 3 · 42% · w/h 1.05 · flipped"``: number, area share, aspect ratio of the region, flip."""
    x0, y0, x1, y1 = crops.boxes[n].tolist()
    area = float(crops.coords[n, 2]) * float(crops.coords[n, 3])
    flipped = " · flipped" if crops.flips[n] else ""
    return f"crop {n} · {area:.0%} · w/h {(x1 - x0) / (y1 - y0):.2f}{flipped}"


def label_mix_text(mixed, n: int) -> str:
    """``"0.62 × a1 + 0.38 × a2 (CutMix)"``: sample n's label weights over the crops it is made of."""
    terms = " + ".join(f"{weight:.2f} × {name}" for weight, name in mixed.terms(n))
    return f"{terms} ({mixed.kind(n)})"


def class_mix_text(mixed, n: int, class_names=None, top: int = 2) -> str:
    """The ``top`` largest classes of sample n's mixed label, ``"tabby 0.62 · goose 0.38"`` ("" if unlabelled)."""
    if mixed.class_mix is None:
        return ""
    row = mixed.class_mix[n].double().numpy()
    order = np.argsort(-row, kind="stable")[:top]
    names = class_names if class_names is not None else [f"class {c}" for c in range(len(row))]
    return " · ".join(f"{short_name(names[c], 14)} {row[c]:.2f}" for c in order if row[c] > 0)


@dataclass
class Tile:
    """One cell of a tile grid: its title, traces and shapes (in pixel coordinates) and the pixel size shown."""

    title: str
    traces: list
    height: int
    width: int
    shapes: list = field(default_factory=list)


def tile_grid_figure(tiles: list[Tile], columns: int, title: str, tile_height: int = TILE_HEIGHT) -> go.Figure:
    """Tiles on a grid of image subplots (pixel axes as :func:`~softlab.viz.images.image_axes`, equal scale),
    built as one figure in one call: a live preview redraws it on every change."""
    rows = max(1, math.ceil(len(tiles) / columns))
    col_gap, row_gap = 0.015, 0.14 / rows
    width, height = (1 - col_gap * (columns - 1)) / columns, (1 - row_gap * (rows - 1)) / rows
    data, shapes, annotations = [], [], []
    layout = dict(title=title, height=tile_height * rows + 80, margin=dict(l=10, r=10, t=80, b=10),
                  showlegend=False, hovermode="closest")
    for k, tile in enumerate(tiles):
        row, col = divmod(k, columns)
        left, top = col * (width + col_gap), 1 - row * (height + row_gap)
        suffix = str(k + 1) if k else ""
        axes = image_axes(tile.height, tile.width)
        layout[f"xaxis{suffix}"] = {**axes["xaxis"], "domain": [left, left + width], "anchor": f"y{suffix}"}
        layout[f"yaxis{suffix}"] = {**axes["yaxis"], "domain": [top - height, top], "anchor": f"x{suffix}",
                                    "scaleanchor": f"x{suffix}"}
        data += [{**trace, "xaxis": f"x{suffix}", "yaxis": f"y{suffix}"} for trace in tile.traces]
        shapes += [{**shape, "xref": f"x{suffix}", "yref": f"y{suffix}"} for shape in tile.shapes]
        annotations.append(dict(text=tile.title, x=left + width / 2, y=top, xref="paper", yref="paper",
                                xanchor="center", yanchor="bottom", showarrow=False, font=dict(size=10)))
    return go.Figure(data=data, layout={**layout, "shapes": shapes, "annotations": annotations})


def crop_preview_figure(image, crops, columns: int = 5, title: str | None = None) -> go.Figure:
    """The image with its crop boxes (numbered), then each crop as training cuts it.

    Traces: the image, the box outlines (one scatter), the box numbers (one scatter), then one image trace per
    crop; tile titles from :func:`crop_title`.
    """
    height, width = image_size(image)
    size = crops.pixels.shape[-1]
    x0, y0, x1, y1 = np.asarray(crops.boxes, dtype=np.float64).reshape(-1, 4).T
    x, y = box_outlines(np.stack([y0, x0, y1 - y0, x1 - x0], axis=1))
    outlines = dict(type="scatter", x=x, y=y, mode="lines", line=dict(color=BOX_COLOR, width=1.5), name="crop boxes",
                    hoverinfo="skip")
    numbers = dict(type="scatter", x=x0 + 1, y=y0 + 1, mode="text", text=[str(n) for n in range(len(crops))],
                   textposition="bottom right", textfont=dict(color=BOX_COLOR, size=11), name="crop numbers",
                   hoverinfo="skip")
    tiles = [Tile("image", [png_image_trace(image), outlines, numbers], height, width)]
    tiles += [Tile(crop_title(crops, n), [png_image_trace(pixels, name=f"crop {n}")], size, size)
              for n, pixels in enumerate(crops.pixels)]
    return tile_grid_figure(tiles, columns, title or f"{len(crops)} crops")


def mixed_preview_figure(mixed, class_names=None, columns: int = 4, title: str | None = None) -> go.Figure:
    """One tile per mixed sample, titled with its label mix over crops and over classes; a CutMix tile outlines
    the pasted box. Traces: one image trace per sample (hover: the label mix)."""
    size = mixed.pixels.shape[-1]
    tiles = []
    for n, pixels in enumerate(mixed.pixels):
        trace = {**png_image_trace(pixels, name=f"sample {n}"), "hoverinfo": None,
                 "hovertemplate": f"{label_mix_text(mixed, n)}<extra>sample {n}</extra>"}
        tile_title = f"{label_mix_text(mixed, n)}<br>{class_mix_text(mixed, n, class_names)}"
        tiles.append(Tile(tile_title, [trace], size, size, _cutmix_outline(mixed, n)))
    return tile_grid_figure(tiles, columns, title or f"{mixed.mixing.mode} mixing", tile_height=TILE_HEIGHT + 20)


def _cutmix_outline(mixed, n: int) -> list[dict]:
    if not mixed.plan.cutmix[n]:
        return []
    i, j, h, w = (int(v) for v in mixed.plan.boxes[n])
    return [dict(type="rect", x0=j, y0=i, x1=j + w, y1=i + h, line=dict(color=CUTMIX_COLOR, width=2, dash="dot"))]
