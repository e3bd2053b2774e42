"""TrainingLauncher driven from Python on tiny runs: config from controls and linked widgets, a run to its end,
pause/resume, stop and continue, errors in the widget, the runs table and overlaid curves."""
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from softlab.calibrate import Calibration
from softlab.data.crops import CropParams
from softlab.labels import generate_labels
from softlab.train import Mixing, TrainConfig, load_history, metrics_without_timing, train
from softlab.widgets.base import ConfigSource
from softlab.widgets.launcher import TrainingLauncher
from softlab.workspace import Workspace
from tiny import LinearTeacher, NoiseImages

BASE = TrainConfig(student="tiny_cnn", student_kwargs={"width": 4}, epochs=2, batch_images=6, num_crops=2, lr=0.05,
                   seed=3, device="cpu")  # 24 images: 4 steps per epoch, 8 in all


# ----- stand-ins for the linked widgets (same attributes, same ConfigSource)
class Explorer(ConfigSource):
    def __init__(self, calibration):
        self.calibration = calibration

    def set(self, calibration):
        self.calibration = calibration
        self._config_changed()


class Picker(ConfigSource):
    def __init__(self, crop_params, mixing):
        self.crop_params, self.mixing = crop_params, mixing

    def set(self, **changes):
        self.__dict__.update(changes)
        self._config_changed()


class TeacherChoice(ConfigSource):
    def __init__(self, spec, teacher=None):
        self.teacher_spec, self.teacher = spec, teacher


class Gate:
    """Holds the training thread after one step until the test releases it."""

    def __init__(self, step):
        self.step, self.reached, self._go = step, threading.Event(), threading.Event()

    def __call__(self, event):
        if event.kind == "step" and event.step == self.step:
            self.reached.set()
            self._go.wait()

    def release(self):
        self._go.set()


def wait_at(gate, launcher):
    while not gate.reached.wait(0.05):
        assert not launcher.handle.done, launcher.message.text


@pytest.fixture(scope="module")
def data():
    return NoiseImages(count=24)


@pytest.fixture(scope="module")
def store(data, tmp_path_factory):
    return generate_labels(data, LinearTeacher(), tmp_path_factory.mktemp("launcher") / "store", num_crops=8,
                           label_type="marginal_smoothing_k2", progress=False)


@pytest.fixture
def workspace(data, store, tmp_path):
    return Workspace("tiny", data, store, LinearTeacher(), NoiseImages(count=10, seed=1), tmp_path / "runs")


def trace(figure, name):
    return next(t for t in figure.data if t.name == name)


# ----- the config
def test_config_reflects_the_controls(workspace):
    launcher = TrainingLauncher(workspace, config=BASE)
    launcher.recipe.value, launcher.epochs.value, launcher.batch_images.value = "hard", 3, 4
    launcher.num_crops.value, launcher.lr.value, launcher.name.value = 3, 0.2, "mine"
    config = launcher.config
    assert (config.recipe, config.name, config.epochs, config.batch_images, config.num_crops, config.lr) == \
        ("hard", "mine", 3, 4, 3, 0.2)
    assert (config.out, config.device, config.progress) == (str(workspace.runs), "cpu", False)
    assert (config.data, config.eval_data, config.input_size, config.store) == ("noise24", "noise10", 12, None)
    assert config.crop == {k: workspace.store.manifest["crops"][k] for k in ("scale", "ratio", "flip_p",
                                                                             "interpolation")}
    assert (config.student, config.student_kwargs, config.seed) == ("tiny_cnn", {"width": 4}, 3)
    launcher.recipe.value, launcher.name.value = "fkd", ""
    config = launcher.config
    assert (config.name, config.store, config.crop, config.calibration) == ("fkd", str(workspace.store.path), None,
                                                                           None)
    (workspace.runs / "fkd").mkdir(parents=True)
    assert launcher.config.name == "fkd-2"
    launcher.student.value = "resnet10t_narrow"
    assert launcher.config.student_kwargs == {}
    assert "L = −Σ_c q_c log softmax(z)_c" in launcher.recipe_doc.value
    launcher.recipe.value = "kd"
    assert "α·CE(z, y) + (1 − α)·T²·KL" in launcher.recipe_doc.value
    assert "runs the teacher at every step: test:linear" in launcher.recipe_doc.value
    assert launcher.config.teacher == "test:linear"


def test_config_follows_linked_widgets(workspace):
    explorer = Explorer(Calibration(t_low=0.02, t_mid=0.2, t_top=0.98))
    picker = Picker(CropParams(scale=(0.3, 0.9)), Mixing(mode="selfmix", prob=0.7))
    teacher = TeacherChoice("timm:resnet18")
    launcher = TrainingLauncher(workspace, calibration=explorer, augmentation=picker, teacher=teacher, config=BASE)
    launcher.recipe.value = "ferkd"
    config = launcher.config
    assert config.calibration == {"t_low": 0.02, "t_mid": 0.2, "t_top": 0.98, "epsilon": 0.1, "mode": "absolute"}
    assert config.mixing == Mixing(mode="selfmix", prob=0.7).to_dict() and config.crop is None
    explorer.set(Calibration(t_low=0.1, t_mid=0.4, t_top=0.9, epsilon=0.2, mode="quantile"))
    assert launcher.config.calibration == {"t_low": 0.1, "t_mid": 0.4, "t_top": 0.9, "epsilon": 0.2,
                                           "mode": "quantile"}
    assert "calibration (quantile): T_L 0.1 · T_M 0.4 · T_T 0.9 · ε 0.2" in launcher.settings.value
    picker.set(mixing=Mixing(mode="cross", mixup_alpha=0.2, cutmix_alpha=0.0))
    assert "mixing: cross (mixup α 0.2, cutmix α 0, p 1)" in launcher.settings.value
    launcher.recipe.value = "hard"
    config = launcher.config
    assert (config.calibration, config.teacher, config.mixing["mode"]) == (None, None, "cross")
    assert config.crop == {"scale": [0.3, 0.9], "ratio": [0.75, 4 / 3], "flip_p": 0.5, "interpolation": "bicubic"}
    launcher.recipe.value = "kd"
    assert launcher.config.teacher == "timm:resnet18"


def test_plain_objects_instead_of_widgets(workspace):
    launcher = TrainingLauncher(workspace, calibration=Calibration(t_low=0.01, t_mid=0.1, t_top=0.99),
                                augmentation=CropParams(scale=(0.5, 1.0)), mixing=Mixing(mode="selfmix"),
                                teacher="fashion_mnist_cnn", config=BASE)
    launcher.recipe.value = "ferkd"
    assert launcher.config.calibration["t_top"] == 0.99 and launcher.config.mixing["mode"] == "selfmix"
    launcher.recipe.value = "meal_v2"
    assert launcher.config.crop["scale"] == [0.5, 1.0] and launcher.config.teacher == "fashion_mnist_cnn"


# ----- runs
def test_a_run_to_its_end_shows_its_metrics_and_lists_it(workspace):
    launcher = TrainingLauncher(workspace, config=BASE)
    assert launcher.runs_table.value == "<i>no runs yet</i>"
    launcher.start()
    assert launcher.buttons["start"].disabled and not launcher.buttons["stop"].disabled
    assert launcher.wait() == "finished"
    run_dir = workspace.runs / "fkd"
    history = load_history(run_dir)
    final = json.loads((run_dir / "eval.json").read_text())
    assert [m["epoch"] for m in history] == [1, 2]
    assert list(trace(launcher.curves, "train loss").y) == [m["train_loss"] for m in history]
    assert list(trace(launcher.curves, "train top-1").y) == [m["train_top1"] for m in history]
    assert list(trace(launcher.curves, "test top-1").y) == [m["test_top1"] for m in history]
    assert list(trace(launcher.curves, "train loss (steps)").x) == [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]
    assert (launcher.progress.value, launcher.progress.max, launcher.progress.bar_style) == (8, 8, "success")
    assert launcher.progress_text.value.startswith("step 8/8 · epoch 2/2")
    [run] = launcher.runs
    assert (run.name, run.status, run.top1, run.ece) == ("fkd", "finished", final["top1"], final["ece"])
    assert f"<td>fkd</td><td>fkd</td><td>tiny_cnn</td><td>finished</td><td>2/2</td><td>{final['top1']:.4f}</td>" \
           f"<td>{final['ece']:.4f}</td>" in launcher.runs_table.value
    assert launcher.message.kind == "ok" and f"test top-1 {final['top1']:.4f}" in launcher.message.text
    assert not launcher.buttons["start"].disabled
    assert all(launcher.buttons[key].disabled for key in ("pause", "resume", "stop", "continue"))
    assert launcher.poll() is False
    assert launcher.config.name == "fkd-2" and f"run: {workspace.runs}/fkd-2" in launcher.settings.value


def test_pause_then_resume_and_throttled_curves(workspace):
    gate = Gate(2)
    launcher = TrainingLauncher(workspace, config=BASE, callbacks=[gate], redraw_interval=3600)
    launcher.start()
    assert launcher.redraws == 1
    wait_at(gate, launcher)
    launcher.pause()
    gate.release()
    launcher.handle.thread.join(0.3)
    assert launcher.poll() is True
    assert (launcher.tracker.status, launcher.tracker.step, launcher.progress.value) == ("paused", 2, 2)
    assert launcher.progress_text.value.endswith("paused")
    assert [key for key, button in launcher.buttons.items() if not button.disabled] == ["resume", "stop"]
    # the progress line follows every poll; the curves wait for the redraw interval
    assert launcher.redraws == 1 and list(trace(launcher.curves, "train loss (steps)").y) == []
    launcher.resume()
    assert [key for key, button in launcher.buttons.items() if not button.disabled] == ["pause", "stop"]
    assert launcher.wait() == "finished"
    assert launcher.redraws == 2 and launcher.tracker.step == 8
    assert len(trace(launcher.curves, "train loss (steps)").y) == 8


def test_stop_leaves_a_checkpoint_and_continue_finishes_the_run(workspace, tmp_path):
    gate = Gate(3)
    launcher = TrainingLauncher(workspace, config=BASE, callbacks=[gate])
    launcher.start()
    wait_at(gate, launcher)
    launcher.stop()
    assert all(button.disabled for button in launcher.buttons.values())
    gate.release()
    assert launcher.wait() == "stopped"
    checkpoint = Path(launcher.tracker.checkpoint)
    assert checkpoint == workspace.runs / "fkd" / "checkpoints" / "last.pt"
    state = torch.load(checkpoint, weights_only=True)
    assert (state["epoch"], state["step"]) == (0, 3)
    assert launcher.message.kind == "warning" and "stopped at step 3" in launcher.message.text
    assert launcher.runs[0].status == "stopped" and "<td>stopped</td><td>0/2</td>" in launcher.runs_table.value
    assert not launcher.buttons["continue"].disabled and launcher.progress.bar_style == "warning"
    launcher.recipe.value = "hard"           # changed controls do not change the run being continued
    launcher.start(resume=True)
    assert launcher.wait() == "finished"
    assert (launcher.tracker.start_step, launcher.tracker.step) == (3, 8)
    history = load_history(workspace.runs / "fkd")
    assert launcher.tracker.history == history
    assert list(trace(launcher.curves, "test top-1").y) == [m["test_top1"] for m in history]
    uninterrupted = train(launcher.last_config.replace(out=str(tmp_path / "reference")), dataset=workspace.dataset,
                          store=workspace.store, eval_data=workspace.test)
    assert metrics_without_timing(history) == metrics_without_timing(uninterrupted.history)


def test_an_invalid_setting_is_reported_without_starting(workspace):
    launcher = TrainingLauncher(workspace, config=BASE)
    launcher.lr.value = 0.0
    assert launcher.start() is None and launcher.handle is None
    assert (launcher.message.kind, launcher.message.text) == ("error", "lr and label_temperature must be positive")
    assert launcher.settings.value == "<i>invalid setting: lr and label_temperature must be positive</i>"


def test_an_error_in_the_run_shows_its_message(store, tmp_path):
    launcher = TrainingLauncher(dataset=NoiseImages(count=24, seed=5), store=store, runs=tmp_path / "runs",
                                config=BASE.replace(eval_data=None))
    launcher.start()
    assert launcher.wait() == "error"
    assert launcher.message.kind == "error"
    assert launcher.message.text.startswith(f"ValueError: label store {store.path} was made for noise24 (24 images)")
    assert "Traceback" not in launcher.message.text and "Traceback" in launcher.tracker.traceback
    assert launcher.progress.bar_style == "danger" and not launcher.buttons["start"].disabled


def test_runs_table_and_overlay(workspace):
    objects = dict(dataset=workspace.dataset, store=workspace.store, eval_data=workspace.test)
    for name, recipe in (("a", "fkd"), ("b", "hard")):
        train(BASE.replace(recipe=recipe, name=name, out=str(workspace.runs), input_size=12, progress=False),
              **objects)
    launcher = TrainingLauncher(workspace, config=BASE)
    assert [run.name for run in launcher.runs] == ["a", "b"]
    assert launcher.overlay_select.options == ("a", "b")
    launcher.overlay(["b", "a"])
    histories = {name: load_history(workspace.runs / name) for name in ("b", "a")}
    test_top1 = [t for t in launcher.overlay_figure.data if t.yaxis == "y"]
    assert [t.name for t in test_top1] == ["b", "a"]
    assert [list(t.y) for t in test_top1] == [[m["test_top1"] for m in histories[n]] for n in ("b", "a")]
    assert len(launcher.overlay_figure.data) == 8  # test top-1, train loss, ECE, train top-1 × 2 runs
    launcher.overlay(["a", "zzz"])
    assert launcher.message.kind == "warning" and "zzz" in launcher.message.text


def test_the_runs_notes_are_shown_and_kept_with_its_end_message(workspace, store):
    # T_L between the 3rd and 4th smallest per-image max y_s (T_T = 1): exactly 3 images keep no crop
    highest = np.sort(np.nanmax(np.asarray(store.y_s), axis=1))
    t_low = float(highest[2] + highest[3]) / 2
    explorer = Explorer(Calibration(t_low, max(t_low, 0.5), 1.0))
    launcher = TrainingLauncher(workspace, calibration=explorer, config=BASE.replace(epochs=1))
    launcher.recipe.value = "ferkd"
    launcher.start()
    assert launcher.wait() == "finished"
    resolved = json.loads((workspace.runs / launcher.last_config.run_name / "config.json").read_text())["resolved"]
    assert launcher.notes == resolved["notes"] and len(launcher.notes) >= 1
    assert "3 of 24 training images" in launcher.notes[0]
    assert launcher.message.kind == "warning"
    final = json.loads((workspace.runs / launcher.last_config.run_name / "eval.json").read_text())
    assert launcher.message.text.startswith(f"{launcher.last_config.run_name} finished: test top-1 {final['top1']:.4f}")
    assert launcher.message.text.endswith(" · ".join(f"note: {note}" for note in launcher.notes))
