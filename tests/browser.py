"""A real-browser harness for notebooks: JupyterLab served from this environment, Debian's Chromium driven by
Playwright's Python package. A helper module for test files (pytest does not collect it).

Typical use in a test module::

    from browser import chromium_page, jupyterlab, open_notebook, run_all, wait_for_cells_done, ...

    def test_my_notebook(jupyterlab, chromium_page, tmp_path):
        open_notebook(chromium_page, jupyterlab, "03_calibration.ipynb")
        run_all(chromium_page)
        wait_for_cells_done(chromium_page)
        assert_no_errors(chromium_page)
        screenshot(chromium_page, tmp_path / "03.png")

The ``jupyterlab`` fixture serves a temporary copy of ``notebooks/`` (override the ``lab_notebooks`` fixture to
serve another folder, and ``lab_env`` to add environment variables for the server and its kernels); the
``chromium_page`` fixture is a fresh page of a headless Chromium. Both skip the test, saying why, when
``/usr/bin/chromium`` is missing (``make setup`` installs Debian's ``chromium`` where it can).

What keeps these tests stable (see the design notes): JupyterLab binds 127.0.0.1 with a random token; every
Jupyter, IPython and browser folder (and HOME) is temporary; the "Jupyter news" popup is off; notebook windowing
is off, so off-screen cells are rendered; Run All is clicked only after the status bar reports the kernel as
``(ipykernel) | Idle`` (clicking earlier loses cells).
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# JupyterLab settings written into the temporary settings folder: (plugin id, settings).
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
}
KERNEL_IDLE = re.compile(r"\(ipykernel\) \| Idle")

# Waits (milliseconds). They only stop a broken run from hanging; none of them measures speed.
SERVER_START_MS = 120_000
KERNEL_START_MS = 180_000
RUN_ALL_MS = 900_000
WIDGET_UPDATE_MS = 60_000


def chromium_missing_reason() -> str | None:
    """Why the browser tests cannot run here (None when they can)."""
    if not CHROMIUM.is_file():
        return (f"no Chromium at {CHROMIUM}: install Debian's `chromium` (`make setup` tries "
                "`apt-get install -y chromium`) to run the real-browser notebook tests")
    return None


def skip_without_chromium() -> None:
    reason = chromium_missing_reason()
    if reason:
        pytest.skip(reason)


# ----- JupyterLab
@dataclass
class JupyterLab:
    """A running JupyterLab: its base URL, token, served folder, process and log file."""

    url: str
    token: str
    root: Path
    process: subprocess.Popen
    log: Path

    def tree_url(self, path: str = "") -> str:
        """The URL that opens ``path`` (relative to ``root``) in JupyterLab, token included."""
        return f"{self.url}/lab/tree/{path}?token={self.token}"

    def api(self, endpoint: str) -> dict:
        """GET ``/api/<endpoint>`` with the token → the decoded JSON."""
        separator = "&" if "?" in endpoint else "?"
        with urllib.request.urlopen(f"{self.url}/api/{endpoint}{separator}token={self.token}", timeout=10) as reply:
            return json.loads(reply.read())

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.is_file() else ""
        return "\n".join(text.splitlines()[-lines:])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_lab_settings(settings_dir: Path, settings: dict | None = None) -> None:
    """Write ``{plugin id: settings}`` as JupyterLab user settings (``<plugin id>.jupyterlab-settings``)."""
    for plugin, values in (LAB_SETTINGS if settings is None else settings).items():
        package, _, name = plugin.rpartition("/")
        path = settings_dir / package / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values, indent=1))


def private_dirs(base: Path) -> dict[str, str]:
    """Environment variables pointing every Jupyter/IPython folder and HOME under ``base`` (created)."""
    names = {"HOME": "home", "JUPYTER_CONFIG_DIR": "jupyter/config", "JUPYTER_DATA_DIR": "jupyter/data",
             "JUPYTER_RUNTIME_DIR": "jupyter/runtime", "IPYTHONDIR": "ipython",
             "JUPYTERLAB_SETTINGS_DIR": "jupyter/lab-settings", "JUPYTERLAB_WORKSPACES_DIR": "jupyter/lab-workspaces"}
    env = {}
    for variable, folder in names.items():
        path = base / folder
        path.mkdir(parents=True, exist_ok=True)
        env[variable] = str(path)
    return env


@contextmanager
def running_jupyterlab(root: Path, workdir: Path, env: dict | None = None):
    """Serve ``root`` with JupyterLab on a free 127.0.0.1 port with a random token → :class:`JupyterLab`.

    Jupyter, IPython and HOME folders live under ``workdir`` (so nothing is written to the user's home); ``env``
    adds variables for the server and the kernels it starts (e.g. ``SOFTLAB_NOTEBOOK_MODE=small``). Waits for
    ``GET /api/status`` while checking that the process is alive; stops the server (and its kernels) on exit.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    dirs = private_dirs(workdir)
    write_lab_settings(Path(dirs["JUPYTERLAB_SETTINGS_DIR"]))
    token, port = secrets.token_hex(24), free_port()
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
               "--ServerApp.open_browser=False"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")
    server_env = {**os.environ, **dirs, "PYTHONUNBUFFERED": "1", **(env or {})}
    log = workdir / "jupyterlab.log"
    with open(log, "wb") as handle:
        process = subprocess.Popen(command, cwd=root, env=server_env, stdout=handle, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    lab = JupyterLab(f"http://127.0.0.1:{port}", token, Path(root), process, log)
    try:
        _wait_for_server(lab)
        yield lab
    finally:
        stop_process_group(process)


def _wait_for_server(lab: JupyterLab) -> None:
    deadline = time.monotonic() + SERVER_START_MS / 1000
    while True:
        if lab.process.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with code {lab.process.returncode} before serving:\n"
                               f"{lab.log_tail()}")
        try:
            lab.api("status")
            return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"JupyterLab did not answer /api/status at {lab.url}:\n{lab.log_tail()}")
        time.sleep(0.25)


def stop_process_group(process: subprocess.Popen, grace_s: float = 30) -> None:
    """SIGTERM a process started with ``start_new_session=True``, wait, then SIGKILL what is left of its group."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    try:
        os.killpg(process.pid, signal.SIGKILL)  # leftover kernels of this server only (its own session)
    except (ProcessLookupError, PermissionError):
        pass


# ----- Chromium
@contextmanager
def chromium(workdir: Path, viewport=(1400, 1000)):
    """A fresh page of a headless Debian Chromium (HOME under ``workdir``) → Playwright ``Page``."""
    from playwright.sync_api import sync_playwright

    skip_without_chromium()
    home = workdir / "chromium-home"
    home.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                             env={**os.environ, "HOME": str(home)})
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            yield page
        finally:
            browser.close()


# ----- driving a notebook
def open_notebook(page, lab: JupyterLab, path: str, timeout_ms: int = KERNEL_START_MS) -> None:
    """Open ``path`` (relative to the served folder) and wait until its kernel reports ``(ipykernel) | Idle``."""
    page.goto(lab.tree_url(path))
    page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab.lm-mod-current").filter(
        has_text=Path(path).name).first.wait_for(state="visible", timeout=timeout_ms)
    current_notebook(page).wait_for(state="visible", timeout=timeout_ms)
    wait_for_kernel_idle(page, timeout_ms)


def current_notebook(page):
    """The notebook of the current (visible) notebook panel, as a Playwright locator."""
    return page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook").first


def wait_for_kernel_idle(page, timeout_ms: int = KERNEL_START_MS) -> None:
    """Wait for the status bar's ``(ipykernel) | Idle``: a kernel exists and is idle (the notebook's own
    indicator says idle before any kernel has started, and Run All then loses cells)."""
    page.locator(".jp-StatusBar-TextItem, #jp-main-statusbar span").filter(has_text=KERNEL_IDLE).first.wait_for(
        state="visible", timeout=timeout_ms)


def run_all(page) -> None:
    """Run → Run All Cells, through the menu bar."""
    page.locator(".lm-MenuBar-item", has_text="Run").first.click()
    page.locator(".lm-Menu-item[data-command='runmenu:run-all']").click()


_CELL_STATE_JS = """() => {
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)') || document;
  const prompts = [...panel.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')].map(p => p.textContent.trim());
  return {prompts,
          status: [...document.querySelectorAll('#jp-main-statusbar span')].map(s => s.textContent).join(' ')};
}"""


def cell_prompts(page) -> list[str]:
    """The input prompts of the open notebook's code cells (``[3]:``, ``[*]:``, ``[ ]:``)."""
    return page.evaluate(_CELL_STATE_JS)["prompts"]


def wait_for_cells_done(page, timeout_ms: int = RUN_ALL_MS, poll_s: float = 0.5) -> list[str]:
    """Wait until a Run All has finished: no cell pending (``[*]``), some cell executed and the kernel idle, seen
    on two polls in a row. Returns the prompts. A failing cell also ends the wait (Run All stops there); check
    with :func:`assert_no_errors`."""
    deadline, calm = time.monotonic() + timeout_ms / 1000, 0
    while True:
        state = page.evaluate(_CELL_STATE_JS)
        prompts = state["prompts"]
        done = (not any("*" in p for p in prompts) and any(re.search(r"\d", p) for p in prompts)
                and KERNEL_IDLE.search(state["status"]) is not None)
        calm = calm + 1 if done else 0
        if calm >= 2:
            return prompts
        if time.monotonic() > deadline:
            raise AssertionError(f"the notebook's cells did not finish; prompts {prompts}, status {state['status']!r}")
        time.sleep(poll_s)


_ERRORS_JS = """() => {
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)') || document;
  const cells = [...panel.querySelectorAll('.jp-Notebook .jp-Cell')];
  const found = [];
  cells.forEach((cell, index) => {
    if (!cell.classList.contains('jp-CodeCell')) return;
    for (const out of cell.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')) {
      const text = out.textContent || '';
      if (text.includes('Traceback') || /^\\s*-{10,}/.test(text)) {
        const line = cell.querySelector('.jp-InputArea-editor .cm-line');
        found.push({index, first_line: line ? line.textContent : '', error: text.trim().split('\\n').slice(-3).join('\\n')});
        break;
      }
    }
  });
  return found;
}"""


def notebook_errors(page) -> list[dict]:
    """Error outputs (tracebacks) of the open notebook: ``[{"index", "first_line", "error"}]`` (cell index
    among all cells, the cell's first source line, the end of the traceback)."""
    return page.evaluate(_ERRORS_JS)


def assert_no_errors(page) -> None:
    """No cell shows a traceback, every code cell ran, and no widget is stuck on "Loading widget"."""
    errors = notebook_errors(page)
    assert not errors, "cells failed in the browser:\n" + "\n".join(
        f"cell {e['index']} ({e['first_line']!r}): {e['error']}" for e in errors)
    prompts = cell_prompts(page)
    unrun = [k for k, p in enumerate(prompts) if not re.search(r"\d", p)]
    assert not unrun, f"code cells {unrun} did not run (prompts {prompts})"
    assert page.get_by_text("Loading widget").count() == 0, "a widget never rendered ('Loading widget…' shown)"


def screenshot(page, path, full_page: bool = True) -> Path:
    """Save a PNG of the page to ``path`` (folders created) → the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=full_page)
    return path


# ----- widgets and plotly figures in the page
def press_slider(page, key: str = "ArrowRight", index: int = 0, times: int = 1) -> None:
    """Focus the ``index``-th ipywidgets slider handle (``.widget-slider .noUi-handle``) and press ``key``."""
    handle = page.locator(".widget-slider .noUi-handle").nth(index)
    handle.scroll_into_view_if_needed()
    handle.focus()
    for _ in range(times):
        handle.press(key)


def slider_readouts(page) -> list[str]:
    """The text readouts of the page's ipywidgets sliders, in page order."""
    return page.locator(".widget-slider .widget-readout").all_inner_texts()


def plotly_bar_paths(page, figure: int = 0) -> list[str]:
    """The ``d`` attributes of the bars (``g.trace.bars g.point path``) of the ``figure``-th plotly plot."""
    plot = page.locator(".js-plotly-plot").nth(figure)
    plot.locator("svg.main-svg").first.wait_for(state="visible", timeout=WIDGET_UPDATE_MS)
    return plot.locator("g.trace.bars g.point path").evaluate_all("paths => paths.map(p => p.getAttribute('d'))")


def wait_until(page, predicate, timeout_ms: int = WIDGET_UPDATE_MS, poll_s: float = 0.2, what: str = "condition"):
    """Poll ``predicate()`` (a Python callable reading the page) until it returns a truthy value → that value."""
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(poll_s)


# ----- fixtures (import them into a test module: `from browser import jupyterlab, chromium_page, ...`)
@pytest.fixture
def lab_notebooks(tmp_path) -> Path:
    """The folder JupyterLab serves: a temporary copy of ``notebooks/`` (override to serve another folder)."""
    target = tmp_path / "notebooks"
    shutil.copytree(ROOT / "notebooks", target, ignore=shutil.ignore_patterns("runs", ".ipynb_checkpoints"))
    return target


def shared_softlab_home(tmp_path_factory) -> Path:
    """One ``$SOFTLAB_HOME`` for the whole test session (teacher and label stores are made once, not in the
    user's cache): the same folder for every test module that asks."""
    path = tmp_path_factory.getbasetemp() / "softlab-home"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def lab_env(tmp_path_factory) -> dict:
    """Extra environment for the server and its kernels (override to change): the notebooks' small mode and
    the session's ``$SOFTLAB_HOME``."""
    return {"SOFTLAB_NOTEBOOK_MODE": "small", "SOFTLAB_HOME": str(shared_softlab_home(tmp_path_factory))}


@pytest.fixture
def jupyterlab(lab_notebooks, lab_env, tmp_path):
    """A running :class:`JupyterLab` serving ``lab_notebooks``; skips without Chromium (nothing to drive it)."""
    skip_without_chromium()
    with running_jupyterlab(lab_notebooks, tmp_path / "lab", lab_env) as lab:
        yield lab


@pytest.fixture
def chromium_page(tmp_path):
    """A Playwright page of a headless Debian Chromium; skips when ``/usr/bin/chromium`` is missing."""
    skip_without_chromium()
    with chromium(tmp_path / "browser") as page:
        yield page
