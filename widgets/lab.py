"""Lab: the one-cell dashboard — teacher, augmentation, calibration, label inspection and training in tabs.

``Lab()`` builds (or reopens) the default workspace, Fashion-MNIST with the in-project teacher, in the mode
``$SOFTLAB_NOTEBOOK_MODE`` asks for; ``Lab(Workspace.photos())`` works on the real photos. The tabs are linked:
the launcher trains with the explorer's calibration, the picker's crops and mixing (set to the recipe's own
mixing whenever a recipe is chosen), and the chosen teacher.
"""
from __future__ import annotations

import html

import ipywidgets as W

from softlab.train import get_recipe
from softlab.workspace import Workspace, notebook_mode

from .augmentation import AugmentationPicker
from .calibration import CalibrationExplorer
from .inspector import SoftLabelInspector
from .launcher import TrainingLauncher
from .teacher import TeacherPicker

TAB_TITLES = ("Teacher", "Augmentation", "Calibration", "Inspect labels", "Train")


class Lab(W.VBox):
    """Every widget on one workspace, linked: ``Lab()`` or ``Lab(workspace)``.

    The parts are attributes: ``teacher_picker``, ``augmentation``, ``explorer``, ``inspector``, ``launcher``.
    """

    def __init__(self, workspace: Workspace | None = None, mode: str | None = None, progress: bool = True):
        self.workspace = workspace if workspace is not None else Workspace.fashion_mnist(
            mode or notebook_mode(), progress=progress)
        ws = self.workspace
        self.teacher_picker = TeacherPicker(dataset=ws.test, teacher=ws.teacher)
        self.augmentation = AugmentationPicker(dataset=ws.dataset, crop_params=ws.crop_params)
        self.explorer = CalibrationExplorer(workspace=ws)
        self.inspector = SoftLabelInspector(explorer=self.explorer, teacher=ws.teacher)
        self.launcher = TrainingLauncher(ws, calibration=self.explorer, augmentation=self.augmentation,
                                         teacher=self.teacher_picker)
        self.tabs = W.Tab(children=[self.teacher_picker, self.augmentation, self.explorer, self.inspector,
                                    self.launcher], titles=TAB_TITLES, selected_index=2)
        self.launcher.recipe.observe(self._show_recipe_mixing, "value")
        self._show_recipe_mixing()
        super().__init__(children=[W.HTML(self._header()), self.tabs], layout=W.Layout(width="100%"))

    def _show_recipe_mixing(self, *_ignored) -> None:
        """Choosing a recipe puts its own mixing (FerKD: SelfMix) on the Augmentation tab, which the launcher
        trains with: what the tab shows is what is trained, and it can be changed there afterwards."""
        self.augmentation.mixing = get_recipe(self.launcher.recipe.value).default_mixing

    def _header(self) -> str:
        ws, store = self.workspace, self.workspace.store
        label = store.manifest["label"]
        return (f"<h3 style='margin:4px 0'>softlab lab — {html.escape(ws.name)}</h3>"
                f"<div>{store.num_images} images × {store.num_crops} stored regions, labels "
                f"<code>{html.escape(label['type'])}</code> (k = {label['k']}, T = {label['temperature']:g}) from "
                f"<code>{html.escape(str(store.manifest['teacher'].get('spec')))}</code>; runs go to "
                f"<code>{html.escape(str(ws.runs))}</code>. Start on the Calibration tab: move a threshold and "
                f"watch the hard regions; then Train.</div>")

