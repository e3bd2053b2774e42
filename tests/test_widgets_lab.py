"""The Lab dashboard: its tabs share one workspace, and what is set in one tab reaches the run started in another."""
import json

import pytest
import torch

from softlab.calibrate import Calibration
from softlab.labels import generate_labels
from softlab.teachers.base import Teacher
from softlab.train import Mixing
from softlab.widgets import Lab
from softlab.workspace import Workspace
from test_widgets_inspector import TinyConvNet
from tiny import NoiseImages


@pytest.fixture
def lab(tmp_path):
    torch.manual_seed(0)
    teacher = Teacher(TinyConvNet(), spec="test:tinyconv", input_size=(3, 16, 16), mean=(0.5,) * 3, std=(0.25,) * 3,
                      class_names=["c0", "c1", "c2", "c3"])
    data = NoiseImages(count=16, num_classes=4, channels=3)
    store = generate_labels(data, teacher, tmp_path / "store", num_crops=12, label_type="marginal_smoothing_k2",
                            progress=False)
    return Lab(Workspace("tiny", data, store, teacher, data, tmp_path / "runs"))


def test_the_tabs_are_the_five_widgets_and_open_on_calibration(lab):
    assert lab.tabs.titles == ("Teacher", "Augmentation", "Calibration", "Inspect labels", "Train")
    assert list(lab.tabs.children) == [lab.teacher_picker, lab.augmentation, lab.explorer, lab.inspector, lab.launcher]
    assert lab.tabs.selected_index == 2
    assert "16 images × 12 stored regions" in lab.children[0].value


def test_settings_made_in_one_tab_reach_the_launchers_config(lab):
    lab.launcher.recipe.value = "ferkd"
    lab.explorer.calibration = Calibration(0.1, 0.2, 0.9, epsilon=0.3)
    assert lab.launcher.config.calibration == Calibration(0.1, 0.2, 0.9, epsilon=0.3).to_dict()
    lab.augmentation.mixing = Mixing(mode="selfmix", mixup_alpha=0.4, cutmix_alpha=0.0)
    assert lab.launcher.config.mixing == Mixing(mode="selfmix", mixup_alpha=0.4, cutmix_alpha=0.0).to_dict()
    lab.launcher.recipe.value = "kd"
    assert lab.launcher.config.teacher == "test:tinyconv"
    lab.explorer.image = 5
    assert lab.inspector.image == 5


def test_choosing_a_recipe_shows_its_own_mixing_on_the_augmentation_tab(lab):
    assert lab.augmentation.mixing == Mixing()  # fkd, the launcher's first recipe, mixes nothing
    lab.launcher.recipe.value = "ferkd"
    selfmix = Mixing(mode="selfmix", mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.5, switch_prob=0.5)  # FerKD's
    assert lab.augmentation.mixing == selfmix
    assert lab.launcher.config.mixing == selfmix.to_dict()
    lab.augmentation.mixing = Mixing(mode="cross", mixup_alpha=0.2, cutmix_alpha=0.0)  # the user's choice wins
    assert lab.launcher.config.mixing["mode"] == "cross"


def test_a_ferkd_run_started_in_the_lab_trains_with_the_explorers_calibration(lab):
    lab.launcher.recipe.value = "ferkd"
    lab.launcher.student.value = "tiny_cnn"
    lab.launcher.epochs.value, lab.launcher.batch_images.value = 1, 8
    lab.explorer.calibration = Calibration(0.0, 0.3, 1.0, epsilon=0.2)
    lab.launcher.start()
    assert lab.launcher.wait(timeout=300) == "finished"
    run = lab.workspace.runs / lab.launcher.last_config.run_name
    saved = json.loads((run / "config.json").read_text())["config"]
    assert saved["calibration"] == Calibration(0.0, 0.3, 1.0, epsilon=0.2).to_dict()
    assert [row.name for row in lab.launcher.runs] == [lab.launcher.last_config.run_name]
