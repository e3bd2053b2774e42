"""The curated notebook series: committed clean and well-formed, and each one runs top to bottom in small mode.

Small mode (``SOFTLAB_NOTEBOOK_MODE=small`` in the kernel's environment) uses tiny subsets and one epoch. The
kernel is ``python3`` started by this interpreter (jupyter_client runs a ``python`` kernelspec with
``sys.executable``), so it is the project's environment. Jupyter and IPython folders and ``$SOFTLAB_HOME`` are
temporary: nothing is written to the home folder, and the teacher and label stores are made once per session.
"""
import os
import re
import shutil
import sys
from pathlib import Path

import nbformat
import pytest

from browser import private_dirs, shared_softlab_home

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
HEADING = re.compile(r"^(#{1,6})\s+(.*\S)\s*$", re.MULTILINE)
# "**Follows:** <paper> (<authors>, <venue> <year>)": each notebook names the paper(s) it follows, with a year;
# the statement runs to the next blank line (a sentence or a list).
FOLLOWS = re.compile(r"^\*\*Follows:?\*\*:?[ \t]*\n?((?:[^\n]+\n?)+)", re.MULTILINE)
YEAR = re.compile(r"\b(19|20)\d\d\b")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

pytestmark = pytest.mark.skipif(not NOTEBOOKS, reason="no notebooks/NN_*.ipynb yet")


def notebook_ids():
    return [path.name for path in NOTEBOOKS]


def read(path: Path):
    return nbformat.read(path, as_version=4)


def markdown_text(notebook) -> str:
    return "\n\n".join(cell.source for cell in notebook.cells if cell.cell_type == "markdown")


def first_line(cell) -> str:
    lines = [line for line in cell.source.splitlines() if line.strip()]
    return lines[0].strip() if lines else "(empty cell)"


def test_the_series_is_numbered_without_gaps_or_duplicates():
    numbers = [int(path.name[:2]) for path in NOTEBOOKS]
    assert len(numbers) == len(set(numbers)), f"two notebooks share a number: {notebook_ids()}"
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), f"a number is missing: {notebook_ids()}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=notebook_ids())
def test_notebook_is_committed_clean_and_well_formed(path):
    notebook = read(path)
    nbformat.validate(notebook)
    dirty = [(index, first_line(cell)) for index, cell in enumerate(notebook.cells)
             if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)]
    assert not dirty, f"{path.name}: commit it without outputs and execution counts; cells {dirty}"
    assert "widgets" not in notebook.metadata, f"{path.name}: saved widget state in the metadata; clear it"
    assert notebook.metadata.get("kernelspec", {}).get("name") == "python3", \
        f"{path.name}: the kernelspec must be the standard python3 kernel"

    assert notebook.cells and notebook.cells[0].cell_type == "markdown", f"{path.name}: start with a prose cell"
    title = HEADING.match(notebook.cells[0].source.strip())
    assert title and len(title.group(1)) == 1, f"{path.name}: the first cell must open with a '# Title'"

    prose = markdown_text(notebook)
    follows = FOLLOWS.findall(prose)
    assert follows and all(YEAR.search(line) for line in follows), \
        f"{path.name}: state the paper(s) it follows on a '**Follows:** … (authors, venue year)' line"

    headings = HEADING.findall(prose)
    assert headings and headings[-1][1].lower().startswith("exercises"), \
        f"{path.name}: the last section must be 'Exercises' (found {headings[-1][1] if headings else 'none'!r})"
    last = notebook.cells[-1]
    assert last.cell_type == "markdown" and re.search(r"^\s*(\d+\.|[-*])\s+\S", last.source, re.MULTILINE), \
        f"{path.name}: end with the Exercises section and its list of exercises"


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """Private Jupyter/IPython folders for this process (connection files) and the kernels' environment."""
    base = tmp_path_factory.mktemp("jupyter")
    dirs = {key: value for key, value in private_dirs(base).items() if key != "HOME"}
    saved = {key: os.environ.get(key) for key in dirs}
    os.environ.update(dirs)
    yield {**os.environ, "SOFTLAB_NOTEBOOK_MODE": "small",
           "SOFTLAB_HOME": str(shared_softlab_home(tmp_path_factory)), "PYTHONUNBUFFERED": "1"}
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def execute(path: Path, workdir: Path, env: dict):
    """Run every cell of ``path`` (copied into ``workdir``) in a fresh python3 kernel; fail naming the cell."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    copy = workdir / path.name
    shutil.copy(path, copy)
    notebook = read(copy)
    client = NotebookClient(notebook, kernel_name="python3", timeout=None, allow_errors=False,
                            store_widget_state=False, resources={"metadata": {"path": str(workdir)}})
    client.reset_execution_trackers()
    with client.setup_kernel(env=env):  # the kernel starts in workdir (resources' path)
        command = client.km.format_kernel_cmd()
        assert os.path.abspath(command[0]) == os.path.abspath(sys.executable), \
            f"the python3 kernel runs {command[0]}, not this environment's {sys.executable}"
        for index, cell in enumerate(notebook.cells):
            try:
                client.execute_cell(cell, index)
            except CellExecutionError as error:
                pytest.fail(f"{path.name}: cell {index} ({first_line(cell)!r}) raised {error.ename}: {error.evalue}"
                            f"\n{traceback_tail(cell, error)}", pytrace=False)
    return notebook


def traceback_tail(cell, error, lines: int = 15) -> str:
    """The end of the failing cell's traceback, without terminal colours."""
    tracebacks = [output.get("traceback", []) for output in cell.outputs if output.output_type == "error"]
    text = "\n".join(tracebacks[-1]) if tracebacks else str(error)
    return "\n".join(ANSI.sub("", text).splitlines()[-lines:])


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=notebook_ids())
def test_notebook_runs_in_small_mode(path, kernel_env, tmp_path):
    notebook = execute(path, tmp_path, kernel_env)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in code if cell.source.strip()), f"{path.name}: cells were skipped"
    errors = [(index, output.get("ename")) for index, cell in enumerate(notebook.cells) if cell.cell_type == "code"
              for output in cell.outputs if output.output_type == "error"]
    assert not errors, f"{path.name}: error outputs in cells {errors}"
