import subprocess
import sys
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _normalise(requirements):
    return {Requirement(text).name.lower().replace("_", "-"): str(Requirement(text).specifier)
            for text in requirements}


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in ("dev", "widgets", "teachers"):
        wanted += project["optional-dependencies"][extra]
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(item["pip"] for item in environment["dependencies"] if isinstance(item, dict))
    assert _normalise(pip_section) == _normalise(wanted)
    python = next(item for item in environment["dependencies"] if isinstance(item, str) and item.startswith("python"))
    assert python.startswith("python=3.1")


IMPORT_ALL = """
import importlib, pkgutil, socket, sys
def refuse(*args, **kwargs):
    raise AssertionError("network access at import time")
socket.socket.connect = refuse
socket.create_connection = refuse
import softlab
names = [m.name for m in pkgutil.walk_packages(softlab.__path__, "softlab.") if not m.name.startswith("softlab.widgets")]
for name in names:
    importlib.import_module(name)
bad = [m for m in sys.modules if m.split(".")[0] in ("ipywidgets", "anywidget")]
assert not bad, bad
print(len(names))
"""


def test_library_imports_without_ipywidgets_or_network():
    result = subprocess.run([sys.executable, "-c", IMPORT_ALL], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) >= 10


def test_library_source_never_imports_the_widget_layer():
    offenders = [str(path.relative_to(ROOT)) for path in (ROOT / "softlab").rglob("*.py")
                 if any(word in path.read_text() for word in ("import ipywidgets", "from ipywidgets",
                                                               "softlab.widgets", "from ..widgets"))]
    assert offenders == []


def test_widgets_install_as_softlab_widgets():
    import softlab.widgets

    assert Path(softlab.widgets.__file__).parent == ROOT / "widgets"


def test_readme_starts_with_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    blocks = readme.split("```")
    first_commands = [line.split("#")[0].strip() for line in blocks[1].splitlines()[1:] if line.strip()]
    assert first_commands[:2] == ["make lab", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()
