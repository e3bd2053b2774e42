"""Training figures from plain data: metric curves per method, a reliability diagram, method comparison bars.

Methods get colours by their order in the given dict, so the same dict order gives the same colours everywhere.
"""
from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .colors import method_color

METRIC_TITLES = {"train_loss": "train loss", "test_loss": "test loss", "train_top1": "train top-1",
                 "test_top1": "test top-1", "test_top5": "test top-5", "test_ece": "test ECE"}


def history_metrics(histories: dict) -> list[str]:
    """Numeric per-epoch keys found in the histories (``epoch`` excluded), in first-seen order."""
    keys: dict[str, None] = {}
    for records in histories.values():
        for record in records:
            for key, value in record.items():
                if key != "epoch" and isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
                    keys.setdefault(key)
    return list(keys)


def accuracy_curves(histories: dict, metrics=None, title: str = "Training curves") -> go.Figure:
    """Metric-vs-epoch curves per method: one subplot per metric, one line per method.

    ``histories`` maps a method name to its per-epoch records, each a dict with ``epoch`` and metric values
    (e.g. ``train_loss``, ``test_top1``); ``metrics`` picks and orders the subplots (default: every numeric key).
    Trace order: for each metric, one trace per method in the dict's order (``name`` = method).
    """
    metrics = list(metrics or history_metrics(histories))
    columns = min(2, max(1, len(metrics)))
    rows = max(1, math.ceil(len(metrics) / columns))
    figure = make_subplots(rows=rows, cols=columns, subplot_titles=[METRIC_TITLES.get(m, m) for m in metrics])
    for position, metric in enumerate(metrics):
        row, col = position // columns + 1, position % columns + 1
        for order, (method, records) in enumerate(histories.items()):
            trace = metric_trace(method, records, metric, method_color(order))
            figure.add_trace(trace.update(showlegend=position == 0), row=row, col=col)
        figure.update_xaxes(title_text="epoch", row=row, col=col)
    figure.update_layout(title=title, height=320 * rows + 80, legend=dict(title="method"))
    return figure


def metric_trace(method: str, records: list, metric: str, color: str) -> go.Scatter:
    """One method's ``metric`` against ``epoch`` (records without the metric are skipped)."""
    points = [(record["epoch"], record[metric]) for record in records if metric in record]
    epochs, values = (list(axis) for axis in zip(*points)) if points else ([], [])
    hover = f"{method}<br>epoch %{{x}}<br>{metric} %{{y:.4f}}<extra></extra>"
    return go.Scatter(x=epochs, y=values, mode="lines+markers", name=method, legendgroup=method,
                      line=dict(color=color), hovertemplate=hover)


def expected_calibration_error(bin_confidence, bin_accuracy, bin_count) -> float:
    """ECE = Σ_b (n_b / N) · |accuracy_b − confidence_b| over non-empty bins."""
    confidence, accuracy, count = _as_arrays(bin_confidence, bin_accuracy, bin_count)
    filled = count > 0
    total = count[filled].sum()
    return float((count[filled] * np.abs(accuracy[filled] - confidence[filled])).sum() / total) if total else 0.0


def _as_arrays(*sequences) -> tuple[np.ndarray, ...]:
    return tuple(np.asarray(sequence, dtype=np.float64) for sequence in sequences)


def reliability_diagram(bin_confidence, bin_accuracy=None, bin_count=None,
                        title: str = "Reliability diagram") -> go.Figure:
    """Accuracy per confidence bin against the diagonal, with ECE in the title.

    Takes three equal-length sequences (mean confidence, accuracy and sample count per bin; usually 15 equal bins
    over [0, 1]) or one dict with keys ``bin_confidence``, ``bin_accuracy``, ``bin_count``. Traces: 0 = accuracy
    bars, 1 = mean confidence per bin, 2 = the diagonal.
    """
    if isinstance(bin_confidence, dict):
        data = bin_confidence
        bin_confidence, bin_accuracy, bin_count = data["bin_confidence"], data["bin_accuracy"], data["bin_count"]
    confidence, accuracy, count = _as_arrays(bin_confidence, bin_accuracy, bin_count)
    bins = len(confidence)
    centres = (np.arange(bins) + 0.5) / bins
    empty = count <= 0
    figure = go.Figure([
        go.Bar(x=centres, y=np.where(empty, np.nan, accuracy), width=1 / bins, name="accuracy",
               marker=dict(color="#4e79a7", line=dict(color="white", width=1)), customdata=count,
               hovertemplate="bin %{x:.3f}<br>accuracy %{y:.3f}<br>%{customdata:.0f} samples<extra></extra>"),
        go.Scatter(x=centres, y=np.where(empty, np.nan, confidence), mode="markers", name="mean confidence",
                   marker=dict(color="#e15759", symbol="line-ew-open", size=14, line=dict(width=3))),
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                   line=dict(color="black", dash="dash", width=1)),
    ])
    ece = expected_calibration_error(confidence, accuracy, count)
    figure.update_layout(title=f"{title} (ECE {ece:.4f}, {bins} bins)", bargap=0,
                         xaxis=dict(title="confidence", range=[0, 1]), yaxis=dict(title="accuracy", range=[0, 1]),
                         legend=dict(x=0.02, y=0.98, bgcolor="rgba(255,255,255,0.7)"), width=520, height=500)
    return figure


def comparison_bars(summary: dict, metric: str = "test_top1", title: str | None = None) -> go.Figure:
    """One bar per method: mean with ±std error bars.

    ``summary`` maps a method name to ``{"mean": x, "std": y}`` (``std`` may be missing or None: no bar; ``n``, if
    given, shows in the hover). One trace; bar order = the dict's order.
    """
    methods = list(summary)
    means = np.array([float(summary[m]["mean"]) for m in methods])
    stds = np.array([float(summary[m].get("std") or 0.0) for m in methods])
    runs = [summary[m].get("n", "") for m in methods]
    figure = go.Figure(go.Bar(x=methods, y=means, error_y=dict(type="data", array=stds, visible=True),
                              marker_color=[method_color(k) for k in range(len(methods))], customdata=runs,
                              hovertemplate="%{x}<br>%{y:.4f} ± %{error_y.array:.4f}<br>runs: %{customdata}"
                                            "<extra></extra>"))
    label = METRIC_TITLES.get(metric, metric)
    figure.update_layout(title=title or f"{label} by method (mean ± std)", yaxis=dict(title=label),
                         xaxis=dict(title="method"), showlegend=False)
    return figure
