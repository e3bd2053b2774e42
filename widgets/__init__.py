"""softlab.widgets: the notebook layer (ipywidgets + plotly FigureWidget) over the softlab library.

Installed as ``softlab.widgets`` from the top-level ``widgets/`` folder. The library (``softlab`` proper) never
imports this package, so ``import softlab`` works without ipywidgets. Every widget shows itself as a cell's last
expression and exposes the plain config object it edits:

- :class:`AugmentationPicker` → ``.crop_params`` (CropParams) and ``.mixing`` (Mixing)
- :class:`TeacherPicker` → ``.teacher_spec`` (str) and ``.teacher``
- :class:`CalibrationExplorer` → ``.calibration`` (Calibration)
- :class:`SoftLabelInspector` → the picked ``.image`` / ``.crop``
- :class:`TrainingLauncher` → ``.config`` (TrainConfig); follows linked widgets
- :class:`Lab` → all of them in tabs, on a :class:`softlab.workspace.Workspace`

Widgets are imported lazily (``from softlab.widgets import Lab`` loads only what Lab needs).
"""
from importlib import import_module

_EXPORTS = {
    "AugmentationPicker": "augmentation",
    "TeacherPicker": "teacher",
    "CalibrationExplorer": "calibration",
    "SoftLabelInspector": "inspector",
    "TrainingLauncher": "launcher",
    "Lab": "lab",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'softlab.widgets' has no attribute {name!r}")
