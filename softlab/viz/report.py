"""A single self-contained HTML report: plotly.js inline once, then every figure, readable offline."""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from PIL import Image
from plotly.offline import get_plotlyjs

JPEG_QUALITY = 90

_STYLE = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;
padding:0 1em;color:#222}h1{font-size:1.6em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
.figure{margin-bottom:1.5em}"""


def _figure_items(figures) -> list[tuple[str, object]]:
    items = list(figures.items()) if isinstance(figures, dict) else list(figures)
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise TypeError("figures must be a dict {title: figure} or a list of (title, figure) pairs")
    return items


def jpeg_data_uri(pixels: np.ndarray, quality: int = JPEG_QUALITY) -> str:
    """uint8 ``[H, W, 3]`` pixels → a ``data:image/jpeg;base64,…`` URI."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def compact_images(figure) -> go.Figure:
    """A copy of ``figure`` whose RGB image traces carry JPEG data URIs instead of raw pixel arrays.

    A 512×512 photo shrinks from about 1 MB of base64 pixels to well under 100 kB; placement (x0, dx, …) is kept.
    """
    figure = go.Figure(figure)
    for trace in figure.data:
        if trace.type == "image" and trace.z is not None and np.ndim(trace.z) == 3 and np.shape(trace.z)[2] == 3:
            trace.update(source=jpeg_data_uri(np.asarray(trace.z)), z=None)
    return figure


def figure_section(title: str, figure, number: int) -> str:
    """One ``<section>``: a heading and the figure's div (plotly.js not included, images as JPEG)."""
    body = pio.to_html(compact_images(figure), full_html=False, include_plotlyjs=False, div_id=f"figure-{number}",
                       config={"displaylogo": False, "responsive": True})
    return f'<section class="figure"><h2>{html.escape(str(title))}</h2>\n{body}\n</section>'


def report_html(figures, title: str, intro_html: str = "") -> str:
    """The report as one HTML string (see :func:`write_report`)."""
    sections = "\n".join(figure_section(name, figure, number)
                         for number, (name, figure) in enumerate(_figure_items(figures)))
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f'<style>{_STYLE}</style>\n<script type="text/javascript">{get_plotlyjs()}</script>\n</head>\n<body>\n'
            f'<h1>{html.escape(title)}</h1>\n{intro_html}\n{sections}\n</body>\n</html>\n')


def write_report(path, figures, title: str = "softlab report", intro_html: str = "") -> Path:
    """Write one self-contained offline HTML file with every figure and return its path.

    ``figures`` is a list of ``(title, figure)`` pairs or a dict ``{title: figure}`` (kept in order); plotly.js is
    embedded once in the page head, so the file needs no network, and photos are embedded as JPEG.
    ``intro_html`` is inserted as given under the page title (escape any untrusted text yourself).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report_html(figures, title, intro_html), encoding="utf-8")
    return path
