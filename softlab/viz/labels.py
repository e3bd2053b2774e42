"""Figures of y_s and of soft labels: y_s and entropy histograms, top-k bars, non-target mass heatmap."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from ..calibrate import CATEGORIES
from ..labels.store import LabelStore
from .colors import CATEGORY_COLORS, category_legend
from .crops import image_title
from .images import short_name
from .inputs import calibration_of, check_has_labels, store_categories
from .stats import histogram_data, non_target_mass, topk_label_data

THRESHOLD_NAMES = ("T_L", "T_M", "T_T")


def _selection(store: LabelStore, index) -> np.ndarray:
    """Image indices of one image, or of every finished image of the store that has labels (images skipped at
    generation, being undecodable, have none)."""
    if index is not None:
        check_has_labels(store, int(index))
        return np.array([int(index)])
    done = store.image_done()
    if hasattr(store, "skipped_mask"):
        done &= ~store.skipped_mask()
    return np.flatnonzero(done)


def category_bar_traces(hist: dict) -> list[dict]:
    """One bar trace per category from :func:`histogram_data` (stack them), legend ``"hard / context (n)"``."""
    return [dict(type="bar", x=hist["centres"], y=hist["counts"][code], width=hist["widths"],
                 marker=dict(color=CATEGORY_COLORS[name], line=dict(width=0)), legendgroup=name,
                 name=category_legend(name, int(hist["counts"][code].sum())),
                 hovertemplate="%{x:.3f}: %{y}<extra>" + category_legend(name) + "</extra>")
            for code, name in enumerate(CATEGORIES)]


def threshold_lines(thresholds, label_prefix: str = "") -> tuple[list[dict], list[dict]]:
    """Vertical dashed lines (shapes) and their labels (annotations) at (T_L, T_M, T_T)."""
    shapes, annotations = [], []
    for name, value in zip(THRESHOLD_NAMES, thresholds):
        shapes.append(dict(type="line", x0=float(value), x1=float(value), y0=0, y1=1, yref="paper",
                           line=dict(color="black", width=1.5, dash="dash")))
        annotations.append(dict(x=float(value), y=1, yref="paper", yanchor="bottom", showarrow=False,
                                text=f"{label_prefix}{name} {value:.3f}", font=dict(size=11)))
    return shapes, annotations


def figure_thresholds(y_s: np.ndarray, calibration) -> tuple[np.ndarray, str]:
    """Thresholds to draw over images' y_s: exact for absolute mode or one image, else the median over images."""
    calibration = calibration_of(calibration)
    levels = np.array([calibration.t_low, calibration.t_mid, calibration.t_top])
    if calibration.mode == "absolute":
        return levels, ""
    per_image = np.quantile(y_s, levels, axis=1).T
    return np.median(per_image, axis=0), ("" if len(y_s) == 1 else "median ")


def ys_histogram_figure(store: LabelStore, calibration=None, index: int | None = None, bins: int = 50) -> go.Figure:
    """Histogram of y_s (one image, or the whole store) with bars stacked by category and T_L/T_M/T_T lines.

    Traces are the four categories in CATEGORIES order; in quantile mode over many images the lines are the
    medians of the per-image thresholds.
    """
    images = _selection(store, index)
    y_s = np.asarray(store.y_s[images], dtype=np.float32)
    categories = store_categories(store, calibration, images)
    hist = histogram_data(y_s, categories, bins=bins)
    shapes, annotations = threshold_lines(*figure_thresholds(y_s, calibration))
    title = f"{image_title(store, index)}: y_s" if index is not None else f"y_s over {len(images)} images"
    layout = dict(barmode="stack", bargap=0, title=title, shapes=shapes, annotations=annotations,
                  xaxis=dict(title="y_s (teacher probability of the ground-truth class)", range=[0, 1]),
                  yaxis=dict(title="crops"), legend=dict(title="FerKD category"), margin=dict(l=60, r=10, t=70, b=50))
    return go.Figure(data=category_bar_traces(hist), layout=layout)


def entropy_histogram_figure(store: LabelStore, calibration=None, index: int | None = None,
                             bins: int = 40) -> go.Figure:
    """Histogram of the teacher's entropy per crop (nats), stacked by category; one image or the whole store."""
    images = _selection(store, index)
    entropy = np.asarray(store.entropy[images], dtype=np.float64)
    upper = max(float(np.nanmax(entropy)) if entropy.size else 1.0, 1e-6)
    hist = histogram_data(entropy, store_categories(store, calibration, images), bins=bins, value_range=(0.0, upper))
    title = f"{image_title(store, index)}: entropy" if index is not None else f"entropy over {len(images)} images"
    layout = dict(barmode="stack", bargap=0, title=title, xaxis=dict(title="entropy of the teacher label (nats)"),
                  yaxis=dict(title="crops"), legend=dict(title="FerKD category"), margin=dict(l=60, r=10, t=60, b=50))
    return go.Figure(data=category_bar_traces(hist), layout=layout)


def topk_bars_figure(store: LabelStore, index: int, crop: int, calibration=None, k: int = 10) -> go.Figure:
    """One crop's top-k classes: the raw teacher label beside the calibrated label (ground truth marked ★).

    Trace 0 is the raw label, trace 1 the calibrated one (empty when the calibration discards the crop).
    """
    data = topk_label_data(store, index, crop, calibration, k)
    names = [("★ " if c == data["target"] else "") + short_name(n, 28) + f" [{c}]"
             for c, n in zip(data["classes"], data["names"])]
    calibrated = data["calibrated"] if data["calibrated"] is not None else np.zeros(0)
    color = CATEGORY_COLORS[data["category"]]
    figure = go.Figure([
        go.Bar(y=names, x=data["raw"], orientation="h", name="teacher (stored)", marker_color="#9e9e9e",
               hovertemplate="%{y}: %{x:.4f}<extra>teacher</extra>"),
        go.Bar(y=names[:len(calibrated)], x=calibrated, orientation="h", name="calibrated", marker_color=color,
               hovertemplate="%{y}: %{x:.4f}<extra>calibrated</extra>"),
    ])
    note = "" if data["calibrated"] is not None else " — discarded by this calibration"
    figure.update_layout(barmode="group", title=f"{image_title(store, index)}, crop {crop}: "
                                                f"{category_legend(data['category'])}, y_s {data['y_s']:.3f}{note}",
                         yaxis=dict(autorange="reversed"), xaxis=dict(title="probability", range=[0, 1]),
                         height=max(300, 28 * len(names) + 120), margin=dict(l=10, r=10, t=60, b=50))
    return figure


def non_target_mass_figure(store: LabelStore, calibration=None, categories=None, images=None,
                           columns: int = 20) -> go.Figure:
    """Which non-ground-truth classes carry the stored label mass: ground-truth class × class heatmap.

    Cell = mean stored probability per crop on that class, over the crops of images of that ground-truth class
    (``categories``, e.g. ``("important",)``, keeps only crops of those categories under ``calibration``).
    Columns are the ``columns`` classes with the most mass in total.
    """
    images = np.arange(store.num_images) if images is None else np.asarray(images, dtype=np.int64)
    keep = None
    if categories is not None:
        codes = [CATEGORIES.index(name) for name in categories]
        keep = np.isin(store_categories(store, calibration, images), codes)
    data = non_target_mass(store, images, keep)
    mean = data["matrix"] / np.maximum(data["crops"], 1)[:, None]
    top = np.argsort(-mean.sum(axis=0), kind="stable")[:columns]
    labels = [f"{short_name(store.class_names[c])} [{c}]" for c in top]
    rows = [f"{short_name(store.class_names[r])} [{r}]" for r in data["rows"]]
    figure = go.Figure(go.Heatmap(z=mean[:, top], x=labels, y=rows, colorscale="Blues", colorbar=dict(title="mean p"),
                                  hovertemplate="GT %{y}<br>class %{x}<br>mean p %{z:.4f}<extra></extra>"))
    kept = "all crops" if categories is None else "crops: " + ", ".join(categories)
    figure.update_layout(title=f"Non-ground-truth mass of the stored labels ({kept})",
                         xaxis=dict(title="class", tickangle=-45), yaxis=dict(title="ground-truth class",
                                                                              autorange="reversed"),
                         height=max(320, 26 * len(rows) + 220), margin=dict(l=10, r=10, t=60, b=10))
    return figure
