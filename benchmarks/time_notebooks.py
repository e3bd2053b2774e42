"""Wall time of the notebook series, run top to bottom as a course would, one notebook after another.

    python benchmarks/time_notebooks.py --mode full            # the whole series, a fresh $SOFTLAB_HOME
    python benchmarks/time_notebooks.py --mode small 00 03     # some notebooks only

Each notebook is copied into one temporary folder (so its ``runs/`` start empty, as on a fresh clone) and executed
in a fresh ``python3`` kernel of this interpreter with ``SOFTLAB_NOTEBOOK_MODE`` set. ``$SOFTLAB_HOME`` is a new
temporary folder unless ``--home`` is given, so the time includes training the in-project teacher and generating
the label stores the first time a notebook needs them — what a course pays on a new laptop. Prints one row per
notebook and the total; a failing cell stops the series and is named.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_notebook(path: Path, workdir: Path, env: dict) -> float:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    copy = workdir / path.name
    shutil.copy(path, copy)
    notebook = nbformat.read(copy, as_version=4)
    client = NotebookClient(notebook, kernel_name="python3", timeout=None, allow_errors=False,
                            store_widget_state=False, resources={"metadata": {"path": str(workdir)}})
    start = time.perf_counter()
    try:
        client.execute(env=env)
    except CellExecutionError as error:
        raise SystemExit(f"{path.name}: a cell raised {error.ename}: {error.evalue}") from None
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prefixes", nargs="*", help="notebook numbers to run (default: all)")
    parser.add_argument("--mode", choices=("small", "full"), default="full")
    parser.add_argument("--home", type=Path, help="$SOFTLAB_HOME to use (default: a new temporary folder)")
    args = parser.parse_args(argv)

    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if args.prefixes:
        notebooks = [path for path in notebooks if path.name[:2] in args.prefixes]
        if not notebooks:
            raise SystemExit(f"no notebook matches {args.prefixes}; numbers are 00, 01, …")
    with tempfile.TemporaryDirectory(prefix="softlab-notebooks-") as scratch:
        scratch = Path(scratch)
        home = args.home or scratch / "softlab-home"
        workdir = scratch / "notebooks"
        workdir.mkdir()
        env = {**os.environ, "SOFTLAB_NOTEBOOK_MODE": args.mode, "SOFTLAB_HOME": str(home),
               "PYTHONUNBUFFERED": "1"}
        print(f"mode {args.mode}, {os.cpu_count()} CPUs, torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}"
              f", SOFTLAB_HOME {'given' if args.home else 'fresh'}", flush=True)
        total = 0.0
        for path in notebooks:
            seconds = run_notebook(path, workdir, env)
            total += seconds
            print(f"{path.name:36s} {seconds:7.1f} s", flush=True)
        print(f"{'total':36s} {total:7.1f} s ({total / 60:.1f} min)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
