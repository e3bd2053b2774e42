"""One colour per FerKD category (and helpers to use them), shared by every figure."""
from __future__ import annotations

from ..calibrate import CATEGORIES

CATEGORY_COLORS = dict(zip(CATEGORIES, ("#8c2d04", "#f28e2b", "#2ca02c", "#4e79a7")))
CATEGORY_LABELS = dict(zip(CATEGORIES, ("discarded (hard)", "hard / context", "important", "discarded (easy)")))
NO_CROP_COLOR = "rgba(0,0,0,0)"
METHOD_PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
                  "#9c755f", "#bab0ac")


def category_color(category) -> str:
    """The colour of a category given by name or by index into CATEGORIES."""
    return CATEGORY_COLORS[category if isinstance(category, str) else CATEGORIES[int(category)]]


def category_legend(category, count: int | None = None) -> str:
    """Legend text such as ``"hard / context (123)"``."""
    name = CATEGORY_LABELS[category if isinstance(category, str) else CATEGORIES[int(category)]]
    return name if count is None else f"{name} ({count})"


def rgba(color: str, alpha: float) -> str:
    """``"#rrggbb"`` → ``"rgba(r,g,b,alpha)"``."""
    red, green, blue = (int(color[k:k + 2], 16) for k in (1, 3, 5))
    return f"rgba({red},{green},{blue},{alpha:g})"


def category_colorscale() -> list:
    """A stepped colour scale for a heatmap of category indices 0..3 (zmin=-0.5, zmax=3.5)."""
    steps = len(CATEGORIES)
    scale = []
    for index, name in enumerate(CATEGORIES):
        scale += [[index / steps, CATEGORY_COLORS[name]], [(index + 1) / steps, CATEGORY_COLORS[name]]]
    return scale


def method_color(index: int) -> str:
    """A stable colour for the ``index``-th method of a comparison."""
    return METHOD_PALETTE[index % len(METHOD_PALETTE)]
