"""The series' widgets in a real browser: notebook 03's CalibrationExplorer follows its T_L slider, and notebook
05's TrainingLauncher starts, draws and stops a run.

Each test opens a notebook of ``notebooks/`` in JupyterLab (small mode, the session's ``$SOFTLAB_HOME``), runs
it with Run → Run All Cells and then works the widgets with the keyboard and the mouse, as a person would.
Screenshots go to the test's temporary folder. Skipped, with the reason, where ``/usr/bin/chromium`` is missing;
the helpers live in ``tests/browser.py``.
"""
import re
from pathlib import Path

import pytest

from browser import (WIDGET_UPDATE_MS, assert_no_errors, chromium_page, jupyterlab, lab_env,  # noqa: F401 (fixtures)
                     lab_notebooks, open_notebook, press_slider, run_all, screenshot, slider_readouts,
                     wait_for_cells_done, wait_until)

CALIBRATION_NOTEBOOK = "03_hard_regions_ferkd.ipynb"
TRAINING_NOTEBOOK = "05_training_inline.ipynb"
STEPS_PER_EPOCH = 12  # notebook 05 in small mode: 600 training images, 50 per step
# Notebook 03's explorer starts at T_L 0.05, T_M 0.3, T_T 0.99 (absolute). PageUp moves a slider handle by five
# steps (0.005 here), so 20 presses take T_L to 0.15, below T_M, past crops of the photo store's y_s in between.
START = {"t_low": 0.05, "t_mid": 0.3, "t_top": 0.99}
KEY, PRESSES = "PageUp", 20
CATEGORY_COLUMNS = ("discarded_hard", "hard", "important", "discarded_easy")
HISTOGRAM, SHARES = 2, 3  # the explorer's figures: crop boxes, hard-region mask, y_s histogram, category shares


# ----- reading the page
def widget_output(page, inner):
    """The first cell output area that holds ``inner`` (a selector or a locator): one widget's whole view."""
    inner = page.locator(inner) if isinstance(inner, str) else inner
    return page.locator(".jp-OutputArea-output").filter(has=inner).first


_SUMMARY_JS = """summary => {
  const rows = [...summary.querySelectorAll('table tr')]
    .map(tr => [...tr.querySelectorAll('td')].map(td => td.textContent.trim()));
  return rows.filter(cells => cells.length && cells[0].startsWith('all '))[0] || null;
}"""


def store_counts(page) -> dict | None:
    """The explorer's store-wide row ("all N images"): {category: count} as shown in its summary table."""
    summary = page.locator(".softlab-calibration-summary").first
    if summary.count() == 0:
        return None
    cells = summary.evaluate(_SUMMARY_JS)
    if not cells:
        return None
    return dict(zip(CATEGORY_COLUMNS, (int(value) for value in cells[1:5])))


def bar_paths(output, figure: int) -> list[str]:
    """The ``d`` attributes of the bars of the ``figure``-th plotly plot inside ``output``."""
    plot = output.locator(".js-plotly-plot").nth(figure)
    return plot.locator("g.trace.bars g.point path").evaluate_all("paths => paths.map(p => p.getAttribute('d'))")


def plotted_points(output, figure: int = 0) -> list[int]:
    """Points per trace of the ``figure``-th plotly plot inside ``output``, from the data plotly.js drew."""
    plot = output.locator(".js-plotly-plot").nth(figure)
    return plot.evaluate("plot => (plot.data || []).map(trace => (trace.x || []).length)")


def photo_store(softlab_home: str):
    """The label store notebook 03 made in small mode (under the lab's ``$SOFTLAB_HOME``)."""
    from softlab.labels import LabelStore

    folders = sorted((Path(softlab_home) / "workspaces").glob("photos-efficientnet_lite0-24-*"))
    assert folders, f"notebook 03 made no photo store under {softlab_home}"
    return LabelStore.open(folders[0])


def library_counts(store, t_low: float) -> dict:
    """Store-wide category counts for the explorer's thresholds with T_L = ``t_low``, from softlab.calibrate."""
    from softlab.calibrate import Calibration, calibrate

    calibration = Calibration(t_low, max(START["t_mid"], t_low), max(START["t_top"], t_low))
    return calibrate(store, calibration).stats()["counts"]


def buttons(scope, label: str):
    """The ipywidgets buttons whose text is exactly ``label`` (their icons add no text)."""
    return scope.locator("button.jupyter-button", has_text=re.compile(rf"^\s*{label}\s*$"))


def progress_step(launcher) -> tuple[int, int] | None:
    """(step, total) from the launcher's progress line ("step 13/120 · epoch 2/10 · …"), None before a run."""
    line = launcher.locator(".widget-html", has_text=re.compile(r"step \d+/\d+")).first
    match = re.search(r"step (\d+)/(\d+)", line.inner_text()) if line.count() else None
    return (int(match.group(1)), int(match.group(2))) if match else None


def field_value(scope, description: str) -> str:
    """The value of the text or number box labelled ``description``."""
    box = scope.locator(".widget-inline-hbox").filter(
        has=scope.page.locator("label.widget-label", has_text=re.compile(rf"^{description}$"))).first
    return box.locator("input").input_value()


def button(scope, label: str):
    return buttons(scope, label).first


def widget_screenshot(page, output, path) -> None:
    """A PNG of one widget's whole view: the page is made tall enough for it first (JupyterLab scrolls the notebook
    inside the page, so a taller element than the window would be cut), then set back."""
    viewport = page.viewport_size
    height = int(output.evaluate("element => element.getBoundingClientRect().height"))
    page.set_viewport_size({"width": viewport["width"], "height": max(viewport["height"], height + 200)})
    try:
        output.scroll_into_view_if_needed()
        output.screenshot(path=str(path))
    finally:
        page.set_viewport_size(viewport)


# ----- the tests
def test_calibration_explorer_counts_follow_the_t_low_slider(jupyterlab, chromium_page, lab_env, tmp_path):
    page = chromium_page
    open_notebook(page, jupyterlab, CALIBRATION_NOTEBOOK)
    run_all(page)
    wait_for_cells_done(page)
    assert_no_errors(page)

    explorer = widget_output(page, ".softlab-calibration-summary")
    explorer.scroll_into_view_if_needed()
    wait_until(page, lambda: explorer.locator(".js-plotly-plot svg.main-svg").count() >= 4,
               what="the explorer's four plotly figures")
    before = {"counts": wait_until(page, lambda: store_counts(page), what="the explorer's summary table"),
              "histogram": wait_until(page, lambda: bar_paths(explorer, HISTOGRAM), what="the y_s histogram's bars"),
              "shares": wait_until(page, lambda: bar_paths(explorer, SHARES), what="the category share bars")}
    assert explorer.locator(".widget-slider").count() >= 4, "the explorer's threshold sliders are missing"
    assert float(slider_readouts(page)[0]) == pytest.approx(START["t_low"]), "the first slider is not T_L"
    store = photo_store(lab_env["SOFTLAB_HOME"])
    assert before["counts"] == library_counts(store, START["t_low"])
    widget_screenshot(page, explorer, tmp_path / "03-explorer-before.png")

    press_slider(page, KEY, index=0, times=PRESSES)

    t_low = wait_until(page, lambda: (value := float(slider_readouts(page)[0])) > START["t_low"] and value,
                       what="the T_L readout to move")
    expected = library_counts(store, t_low)
    assert expected != before["counts"], f"T_L {t_low} should move crops between categories"
    # The kernel recomputed the counts for the new T_L, and the browser redrew the table and the bars from them.
    wait_until(page, lambda: store_counts(page) == expected, timeout_ms=WIDGET_UPDATE_MS,
               what=f"the summary table to show the library's counts for T_L = {t_low} ({expected})")
    wait_until(page, lambda: bar_paths(explorer, HISTOGRAM) not in ([], before["histogram"]),
               what="the y_s histogram's bars to change")
    wait_until(page, lambda: bar_paths(explorer, SHARES) not in ([], before["shares"]),
               what="the category share bars to change")
    assert float(slider_readouts(page)[0]) == pytest.approx(t_low), "T_L moved on after the key presses"
    assert store_counts(page) == expected
    assert page.get_by_text("Loading widget").count() == 0
    assert_no_errors(page)
    widget_screenshot(page, explorer, tmp_path / "03-explorer-after.png")
    screenshot(page, tmp_path / "03-page-after.png")


def test_training_launcher_draws_a_run_and_stops_it(jupyterlab, chromium_page, tmp_path):
    page = chromium_page
    open_notebook(page, jupyterlab, TRAINING_NOTEBOOK)
    run_all(page)
    wait_for_cells_done(page)
    assert_no_errors(page)

    launcher = widget_output(page, buttons(page, "Start"))
    launcher.scroll_into_view_if_needed()
    start, stop = button(launcher, "Start"), button(launcher, "Stop")
    wait_until(page, lambda: start.is_enabled(), what="the Start button to be enabled")
    finished = launcher.locator("table.softlab-runs tbody tr").count()
    assert finished >= 4, "the notebook's four runs are missing from the runs table"
    total_steps = int(field_value(launcher, "epochs")) * STEPS_PER_EPOCH

    start.click()

    message = launcher.locator(".softlab-message").first
    try:
        text = wait_until(page, lambda: (t := message.inner_text()).startswith("running") and t,
                          what="the launcher to say it is running")
    except AssertionError:
        screenshot(page, tmp_path / "05-page-not-running.png")
        raise AssertionError(f"the launcher did not say it is running after Start; its message reads "
                             f"{message.inner_text()!r}, its buttons {launcher.locator('button').all_inner_texts()}"
                             ) from None
    run = re.match(r"running (\S+) ", text).group(1)
    # The new run's own progress line (its step total differs from the 1-epoch runs before it): from then on the
    # curves show this run only (start() clears them before the first progress update is sent).
    wait_until(page, lambda: (step := progress_step(launcher)) and step[0] >= 1 and step[1] == total_steps,
               what=f"the progress line of a {total_steps}-step run")
    first = wait_until(page, lambda: sum(plotted_points(launcher)), what="the first points of the curves")
    screenshot(page, tmp_path / "05-page-running.png")
    grown = wait_until(page, lambda: (n := sum(plotted_points(launcher))) > first and n,
                       what=f"the curves to grow past {first} points")
    assert stop.is_enabled() and not start.is_enabled()
    widget_screenshot(page, launcher, tmp_path / "05-launcher-running.png")

    stop.click()

    wait_until(page, lambda: "stopped" in message.inner_text(), what="the launcher to report the stop")
    row = launcher.locator("table.softlab-runs tbody tr").filter(has=page.locator(f"td:text-is('{run}')"))
    wait_until(page, lambda: row.count() == 1, what=f"run {run} in the runs table")
    cells = row.first.locator("td").all_inner_texts()
    assert cells[3] == "stopped", f"run {run} is listed as {cells[3]!r}"
    done, epochs = (int(v) for v in cells[4].split("/"))
    assert done < epochs, f"run {run} finished ({cells[4]} epochs) before it was stopped"
    assert launcher.locator("table.softlab-runs tbody tr").count() == finished + 1
    assert sum(plotted_points(launcher)) >= grown
    assert start.is_enabled() and button(launcher, "Continue").is_enabled()
    assert_no_errors(page)
    widget_screenshot(page, launcher, tmp_path / "05-launcher-stopped.png")
