"""Notebooks in a real browser: JupyterLab + Debian Chromium (Playwright), widgets rendered and live.

Skipped, with the reason, where ``/usr/bin/chromium`` is missing. The helpers live in ``tests/browser.py``.
"""
import nbformat
import pytest

from browser import (assert_no_errors, chromium_page, jupyterlab, lab_env, open_notebook,  # noqa: F401 (fixtures)
                     plotly_bar_paths, press_slider, run_all, screenshot, slider_readouts, wait_for_cells_done,
                     wait_until)

SLIDER_NOTEBOOK = [
    ("markdown", "# A slider and a plotly FigureWidget\n\nThe kernel recomputes the bars when the slider moves."),
    ("code", "import ipywidgets as W\nimport plotly.graph_objects as go\n\nbase = [1, 2, 3]"),
    ("code", "figure = go.FigureWidget(go.Bar(x=['a', 'b', 'c'], y=base))\n"
             "figure.update_layout(yaxis=dict(range=[0, 40]), height=320, width=480)\n"
             "scale = W.IntSlider(value=1, min=1, max=10, description='scale')\n"
             "total = W.Label()\n\n"
             "def redraw(change=None):\n"
             "    values = [v * scale.value for v in base]\n"
             "    figure.data[0].y = values\n"
             "    total.value = f'kernel sum = {sum(values)}'\n\n"
             "scale.observe(redraw, 'value')\n"
             "redraw()\n"
             "W.VBox([scale, total, figure])"),
]


@pytest.fixture
def lab_notebooks(tmp_path):
    folder = tmp_path / "served"
    folder.mkdir()
    notebook = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                 "language": "python"}})
    notebook.cells = [nbformat.v4.new_markdown_cell(text) if kind == "markdown" else nbformat.v4.new_code_cell(text)
                      for kind, text in SLIDER_NOTEBOOK]
    nbformat.write(notebook, folder / "slider.ipynb")
    return folder


def kernel_sum(page) -> str:
    labels = page.locator(".widget-label").filter(has_text="kernel sum =")
    return labels.first.inner_text() if labels.count() else ""


def test_slider_moves_a_kernel_value_and_the_plotly_bars(jupyterlab, chromium_page, tmp_path):
    page = chromium_page
    open_notebook(page, jupyterlab, "slider.ipynb")
    run_all(page)
    wait_for_cells_done(page)
    assert_no_errors(page)
    wait_until(page, lambda: kernel_sum(page) == "kernel sum = 6", what="the first redraw (sum 6)")
    before = wait_until(page, lambda: plotly_bar_paths(page), what="the plotly bars")
    assert len(before) == 3 and slider_readouts(page) == ["1"]
    screenshot(page, tmp_path / "slider-before.png")

    press_slider(page, "ArrowRight")

    # The kernel saw the new value (1 → 2) and computed from it; the figure in the DOM was redrawn from it.
    wait_until(page, lambda: kernel_sum(page) == "kernel sum = 12", what="the kernel's sum after the key press")
    after = wait_until(page, lambda: (paths := plotly_bar_paths(page)) != before and paths,
                       what="the bars to change")
    assert len(after) == 3 and slider_readouts(page) == ["2"]
    assert page.get_by_text("Loading widget").count() == 0
    path = screenshot(page, tmp_path / "slider-after.png")
    assert path.stat().st_size > 0
