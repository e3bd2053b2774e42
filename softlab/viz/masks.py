"""The hard-region mask: per-pixel statistics of the crops covering each pixel (pure numpy, no figures).

Statistics are evaluated at the centre pixels of a grid of square cells (``stride`` pixels a side, chosen so the
longer side has at most ``grid`` cells; ``stride`` is 1, i.e. every pixel, when the image fits). Each crop covers
a contiguous range of cell rows and of cell columns (found with ``searchsorted``); its values are added over that
range through a 2-D difference array (four signed corners, one ``bincount`` for all crops and all statistics) and
two cumulative sums, so the cost is O(n + cells) per statistic, whatever the crops' sizes. The minimum is not a
sum: it is taken on a grid of at most ``min_grid`` cells a side by testing every crop against every cell centre
at once (the first covering crop in y_s order).
"""
from __future__ import annotations

import math

import numpy as np

from ..calibrate import CATEGORIES
from ..data.crops import pixel_boxes

_CORNER_SIGNS = np.array([1.0, -1.0, -1.0, 1.0])


def grid_stride(height: int, width: int, grid: int | None) -> int:
    """Pixels per cell so that the longer side has at most ``grid`` cells (1 when ``grid`` is None)."""
    return 1 if grid is None else max(1, math.ceil(max(height, width) / max(int(grid), 1)))


def cell_centres(size: int, stride: int) -> np.ndarray:
    """Pixel index of the centre of each cell along one side (the last one kept inside the image)."""
    return np.minimum(np.arange(0, size, stride) + stride // 2, size - 1)


def covered_cells(starts, lengths, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For pixel intervals ``[start, start + length)``: the half-open range of cells whose centre they contain."""
    starts = np.asarray(starts, dtype=np.int64)
    return (np.searchsorted(centres, starts, side="left"),
            np.searchsorted(centres, starts + np.asarray(lengths, dtype=np.int64), side="left"))


def range_sums(rows: tuple, cols: tuple, weights: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """float64 ``[k, *shape]``: per cell, the sum of ``weights [k, n]`` over the boxes covering it.

    ``rows`` and ``cols`` are each a pair of int arrays ``[n]`` (first covered index, one past the last).
    """
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    (top, bottom), (left, right) = rows, cols
    height, width = shape
    plane = (height + 1) * (width + 1)
    corners = np.concatenate([top, bottom, top, bottom]) * (width + 1) + np.concatenate([left, left, right, right])
    index = (np.arange(len(weights))[:, None] * plane + corners[None, :]).ravel()
    values = (weights[:, None, :] * _CORNER_SIGNS[None, :, None]).ravel()
    diff = np.bincount(index, values, minlength=len(weights) * plane).reshape(len(weights), height + 1, width + 1)
    return diff.cumsum(axis=1).cumsum(axis=2)[:, :height, :width]


def box_sums(boxes: np.ndarray, weights: np.ndarray, height: int, width: int, stride: int = 1) -> np.ndarray:
    """float64 ``[k, H', W']``: sums of ``weights [k, n]`` over the pixel boxes ``(i, j, h, w)`` covering each cell
    centre (every pixel when ``stride`` is 1)."""
    i, j, h, w = np.asarray(boxes, dtype=np.int64).reshape(-1, 4).T
    row_centres, col_centres = cell_centres(height, stride), cell_centres(width, stride)
    return range_sums(covered_cells(i, h, row_centres), covered_cells(j, w, col_centres), weights,
                      (len(row_centres), len(col_centres)))


def box_min(boxes: np.ndarray, values, height: int, width: int, stride: int = 1) -> np.ndarray:
    """float32 ``[H', W']``: the smallest value among the boxes covering each cell centre (NaN where none)."""
    order = np.argsort(np.asarray(values, dtype=np.float64), kind="stable")
    i, j, h, w = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)[order].T
    rows, cols = cell_centres(height, stride), cell_centres(width, stride)
    row_in = (i[None, :] <= rows[:, None]) & (rows[:, None] < (i + h)[None, :])
    col_in = (j[None, :] <= cols[:, None]) & (cols[:, None] < (j + w)[None, :])
    covered = row_in[:, None, :] & col_in[None, :, :]
    first = covered.argmax(axis=2)
    sorted_values = np.asarray(values, dtype=np.float32)[order]
    return np.where(covered.any(axis=2), sorted_values[first], np.float32(np.nan))


def hard_region_mask(coords, y_s, categories, height: int, width: int, grid: int | None = 256,
                     min_grid: int = 128, locality: float = 2.0) -> dict:
    """Per-pixel crop statistics of one image → dict of arrays on a grid of cells (see the module docstring).

    ``coords`` are the stored normalised boxes ``[n, 4]`` (a flipped crop covers the same region: flipping
    happens after cutting), ``y_s`` ``[n]`` and ``categories`` ``[n]`` (indices into CATEGORIES). ``grid=None``
    evaluates every pixel.

    Keys, arrays ``[H', W']`` unless noted: ``coverage`` (int32, crops covering the cell centre),
    ``category_coverage`` (int32 ``[4, H', W']``), ``mean_y_s`` and ``min_y_s`` (float32, NaN where no crop
    covers; ``min_y_s`` is read from its own grid of at most ``min_grid`` cells), ``majority`` (int8 category
    with the most covering crops, ties to the lower index, −1 where none), ``hard_share`` (float32 share of
    covering crops that are hard or discarded-hard), ``local_y_s`` and ``local_hard_share`` (the same mean and
    share with each crop weighted by its area fraction^−``locality``); ``rows`` / ``cols`` (pixel index of each
    cell centre), ``stride``, ``size`` ``(H, W)`` and ``boxes`` (int64 pixel boxes ``[n, 4]``).

    FKD crops are large (8 %–94 % of the image), so every pixel is covered by crops that also contain the object,
    and ``mean_y_s`` varies little across an image (most at its borders, which only large crops reach).
    The ``local_`` statistics let the small crops, which localise, dominate: they follow the object and mark
    the hard region.
    """
    boxes = pixel_boxes(coords, height, width)
    stride = grid_stride(height, width, grid)
    y_s = np.asarray(y_s, dtype=np.float64)
    one_hot = np.asarray(categories)[None, :] == np.arange(len(CATEGORIES))[:, None]
    weight = (boxes[:, 2] * boxes[:, 3] / (height * width)) ** -float(locality)
    hard = one_hot[:2].any(axis=0)
    sums = box_sums(boxes, np.vstack([one_hot, y_s[None], weight * y_s, weight * hard, weight]), height, width, stride)
    category_coverage = np.rint(sums[:len(CATEGORIES)]).astype(np.int32)
    coverage = category_coverage.sum(axis=0)
    covered = coverage > 0
    safe = np.maximum(coverage, 1)
    rows, cols = cell_centres(height, stride), cell_centres(width, stride)
    min_stride = max(stride, grid_stride(height, width, min_grid))
    return {
        "coverage": coverage,
        "category_coverage": category_coverage,
        "mean_y_s": np.where(covered, sums[-4] / safe, np.nan).astype(np.float32),
        "local_y_s": _weighted_mean(sums[-3], sums[-1], covered),
        "local_hard_share": _weighted_mean(sums[-2], sums[-1], covered),
        "min_y_s": _min_on_cells(boxes, y_s, height, width, rows, cols, min_stride),
        "majority": np.where(covered, category_coverage.argmax(axis=0), -1).astype(np.int8),
        "hard_share": np.where(covered, category_coverage[:2].sum(axis=0) / safe, np.nan).astype(np.float32),
        "rows": rows, "cols": cols, "stride": stride, "size": (int(height), int(width)), "boxes": boxes,
    }


def _weighted_mean(weighted_sum: np.ndarray, weight_sum: np.ndarray, covered: np.ndarray) -> np.ndarray:
    return np.where(covered, weighted_sum / np.where(covered, weight_sum, 1.0), np.nan).astype(np.float32)


def _min_on_cells(boxes, y_s, height, width, rows, cols, min_stride: int) -> np.ndarray:
    """The box minimum on a coarser grid, read back at the mask's cell centres (the coarse cell holding each)."""
    coarse = box_min(boxes, y_s, height, width, min_stride)
    return coarse[np.minimum(rows // min_stride, coarse.shape[0] - 1)][:, np.minimum(cols // min_stride,
                                                                                     coarse.shape[1] - 1)]


def pixel_map(mask: dict, key: str) -> np.ndarray:
    """One mask statistic spread back to every pixel ``[H, W]`` (each pixel takes its cell's value)."""
    height, width = mask["size"]
    stride = mask["stride"]
    values = mask[key]
    rows = np.minimum(np.arange(height) // stride, values.shape[-2] - 1)
    cols = np.minimum(np.arange(width) // stride, values.shape[-1] - 1)
    return values[..., rows[:, None], cols[None, :]]
