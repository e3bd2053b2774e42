"""A teacher's top-k predictions on a few images: each image beside its top-k bars (from a TeacherProbe)."""
from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..teachers.base import resize_images, to_float_images
from .images import image_trace, short_name, style_subplot_image_axes

CORRECT_COLOR, TRUTH_COLOR, OTHER_COLOR = "#2ca02c", "#f28e2b", "#9e9e9e"
ROW_HEIGHT = 150


def thumbnail(image, size: int = 96):
    """A uint8 ``[C, H, W]`` image shrunk so that its longer side is at most ``size`` (float in [0, 1])."""
    height, width = image.shape[-2:]
    scale = min(1.0, size / max(height, width))
    target = (max(1, round(height * scale)), max(1, round(width * scale)))
    return resize_images(to_float_images(image[None]), target, "bilinear")[0]


def prediction_bar_trace(example) -> dict:
    """Horizontal bars of one example's top-k (most probable on top): green when the top-1 is right, orange on
    the ground-truth class otherwise, grey for the rest; the ground truth is marked ★."""
    labels = [("★ " if c == example.target else "") + f"{short_name(name, 20)} [{c}]"
              for c, name in zip(example.classes, example.names)]
    colors = [OTHER_COLOR] * len(labels)
    for rank, c in enumerate(example.classes):
        if c == example.target:
            colors[rank] = CORRECT_COLOR if rank == 0 else TRUTH_COLOR
    return dict(type="bar", orientation="h", x=list(example.probs), y=labels, marker=dict(color=colors),
                text=[f"{p:.1%}" for p in example.probs], textposition="auto", name=f"image {example.index}",
                hovertemplate="%{y}: %{x:.4f}<extra></extra>")


def teacher_predictions_figure(probe, size: int = 96) -> go.Figure:
    """One row per shown image of ``probe`` (a :class:`~softlab.teachers.probe.TeacherProbe`): its thumbnail
    (``size`` px) and its top-k bars. Traces alternate image, bars, row by row."""
    examples = probe.examples
    if not examples:
        return go.Figure(layout=dict(title=f"{probe.spec}: no images to show", height=120))
    titles = []
    for example in examples:
        titles += [f"image {example.index}", f"truth: {short_name(example.target_name, 40)} [{example.target}]"]
    rows = len(examples)
    figure = make_subplots(rows=rows, cols=2, column_widths=[0.2, 0.8], subplot_titles=titles,
                           horizontal_spacing=0.14, vertical_spacing=0.25 / rows)
    for row, example in enumerate(examples, start=1):
        pixels = thumbnail(example.image, size)
        figure.add_trace(image_trace(pixels, name=f"image {example.index}"), row=row, col=1)
        style_subplot_image_axes(figure, pixels.shape[-2], pixels.shape[-1], row=row, col=1)
        figure.add_trace(prediction_bar_trace(example), row=row, col=2)
        figure.update_xaxes(range=[0, 1], tickformat=".0%", row=row, col=2)
        figure.update_yaxes(autorange="reversed", row=row, col=2)
    k = len(examples[0].classes)
    figure.update_layout(title=f"{probe.spec}: top-{k} predictions (★ ground truth)", showlegend=False,
                         height=ROW_HEIGHT * rows + 80, margin=dict(l=10, r=10, t=80, b=20))
    return figure
