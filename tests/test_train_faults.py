"""Faults users met in training, and what happens instead: divergence stops the run without touching its last
good checkpoint, class counts are checked before a run folder exists, a failed run's folder can be resumed or
replaced, demo/compare check their recipes before any work, and train says how crops are drawn."""
import json
import re

import numpy as np
import pytest
import torch
from torch import nn

from softlab.cli import main
from softlab.labels import generate_labels
from softlab.train import (NoteEvent, RunControl, TqdmProgress, TrainingDivergedError, list_recipes,
                           run_compare, run_demo, train)
from softlab.train import demo as demo_module
from tiny import LinearTeacher, NoiseImages, TINY_CALIBRATION, tiny_config

@pytest.fixture(scope="module")
def data():
    return NoiseImages(count=24)


@pytest.fixture(scope="module")
def store(data, tmp_path_factory):
    return generate_labels(data, LinearTeacher(), tmp_path_factory.mktemp("faults") / "store", num_crops=8,
                           label_type="marginal_smoothing_k2", progress=False)


class ArmableInfiniteGradient(torch.autograd.Function):
    """Identity forward; once armed, an infinite gradient backward (a finite loss with non-finite gradients)."""

    armed = False

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf") if ArmableInfiniteGradient.armed else grad


class SmallNet(nn.Module):
    """conv → batch norm → pooled linear head; ``bomb`` routes activations through ArmableInfiniteGradient."""

    def __init__(self, classes=6, bomb=False):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.norm = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.head = nn.Linear(4, classes)
        self.bomb = bomb

    def forward(self, x):
        x = self.norm(self.conv(x)).relu()
        if self.bomb:
            x = ArmableInfiniteGradient.apply(x)
        return self.head(x.mean(dim=(2, 3)))


def all_finite(path) -> bool:
    state = torch.load(path, weights_only=True)["student"]
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


def at_step(number, action):
    def callback(event):
        if event.kind == "step" and event.step == number:
            action()
    return callback


# ----- 1. divergence
def test_nan_loss_stops_with_the_step_and_a_hint_and_keeps_the_last_good_checkpoint(data, store, tmp_path):
    config = tiny_config(tmp_path, epochs=3)  # 4 steps per epoch; the checkpoint after epoch 1 is the last good one
    net, seen, saved = SmallNet(), [], {}
    last = tmp_path / "fkd" / "checkpoints" / "last.pt"

    def poison():  # after step 1 of epoch 2: weights NaN, so step 2's loss is NaN
        saved["bytes"] = last.read_bytes()
        net.head.weight.data.fill_(float("nan"))

    with pytest.raises(TrainingDivergedError) as caught:
        train(config, dataset=data, store=store, student=net, callbacks=[seen.append, at_step(5, poison)])
    error = caught.value
    assert isinstance(error, RuntimeError)
    message = str(error)
    assert "epoch 2, step 2 of 4" in message and "the loss is nan" in message
    assert "--lr 0.05" in message and "--warmup-epochs" in message
    assert (error.epoch, error.step, error.checkpoint) == (2, 2, str(last))
    assert "after epoch 1, is kept" in message and "--overwrite" in message
    assert last.read_bytes() == saved["bytes"] and all_finite(last)
    assert seen[-1].kind == "error" and "epoch 2, step 2" in seen[-1].error  # what the widgets show
    # resumable from that checkpoint (without the injected fault it runs to the end)
    events = []
    result = train(config, dataset=data, store=store, student=SmallNet(), resume=True, callbacks=[events.append])
    assert events[0].kind == "start" and events[0].start_step == 4
    assert result.status == "finished" and [m["epoch"] for m in result.history] == [1, 2, 3] and all_finite(last)


def test_a_huge_learning_rate_fails_without_writing_a_checkpoint_and_the_folder_is_replaceable(data, tmp_path):
    config = tiny_config(tmp_path, "hard", lr=1e6, warmup_epochs=0)
    seen = []
    with pytest.raises(TrainingDivergedError) as caught:
        train(config, dataset=data, callbacks=[seen.append])
    message = str(caught.value)
    step = int(re.search(r"at epoch 1, step (\d+) of 4", message).group(1))
    assert caught.value.step == step and caught.value.checkpoint is None
    assert "--lr 1e+06" in message and "No checkpoint was written" in message
    assert not [e for e in seen if e.kind == "end"]  # no "finished" any more
    run_dir = tmp_path / "hard"
    assert (run_dir / "config.json").exists() and not (run_dir / "checkpoints" / "last.pt").exists()
    with pytest.raises(FileExistsError, match="no checkpoint") as exists:
        train(config.replace(lr=0.05), dataset=data)
    assert "--resume" in str(exists.value) and "--overwrite" in str(exists.value)
    with pytest.raises(ValueError, match="differs in lr") as differs:  # a resumed run keeps its settings
        train(config.replace(lr=0.05), dataset=data, resume=True)
    assert "--overwrite" in str(differs.value)
    result = train(config.replace(lr=0.05), dataset=data, overwrite=True)
    assert result.status == "finished" and all_finite(result.checkpoint)
    assert json.loads((run_dir / "config.json").read_text())["config"]["lr"] == 0.05


def test_non_finite_gradients_are_caught_before_the_update(data, tmp_path):
    net, snapshot = SmallNet(bomb=True), {}

    def arm():  # after step 2: the next backward yields infinite gradients from a finite loss
        snapshot.update({k: v.detach().clone() for k, v in net.named_parameters()})
        ArmableInfiniteGradient.armed = True

    try:
        with pytest.raises(TrainingDivergedError, match="gradients are not finite") as caught:
            train(tiny_config(tmp_path, "hard", epochs=2), dataset=data, student=net, callbacks=[at_step(2, arm)])
    finally:
        ArmableInfiniteGradient.armed = False
    assert "epoch 1, step 3 of 4" in str(caught.value) and "(loss " in str(caught.value)
    # the optimizer never applied the step: the weights are those after step 2 (the forward updated only the
    # batch-norm statistics)
    assert all(torch.equal(v, snapshot[k]) for k, v in net.named_parameters())
    assert not (tmp_path / "hard" / "checkpoints" / "last.pt").exists()


def test_a_checkpoint_is_never_written_with_non_finite_weights(data, store, tmp_path):
    net, saved = SmallNet(), {}
    last = tmp_path / "fkd" / "checkpoints" / "last.pt"

    def corrupt_statistics():  # after the last step of epoch 2, before its checkpoint
        saved["bytes"] = last.read_bytes()
        net.norm.running_var.fill_(float("inf"))

    with pytest.raises(TrainingDivergedError, match="norm.running_var") as caught:
        train(tiny_config(tmp_path, epochs=3), dataset=data, store=store, student=net,
              callbacks=[at_step(8, corrupt_statistics)])
    assert "checkpoint after epoch 2 is not written" in str(caught.value)
    assert (caught.value.epoch, caught.value.step) == (2, 4)
    assert last.read_bytes() == saved["bytes"] and all_finite(last)
    assert torch.load(last, weights_only=True)["epoch"] == 1


# ----- 2. class counts, before the run folder exists
class OtherClassesStore:
    """A label store whose soft labels range over another number of classes (as an imported FKD store may)."""

    def __init__(self, store, num_classes):
        self._store, self.num_classes = store, num_classes

    def __getattr__(self, name):
        return getattr(self._store, name)


class BareTeacher(nn.Module):
    """A teacher without ``num_classes``: its output width is found by one forward."""

    input_size = (1, 12, 12)

    def __init__(self, classes):
        super().__init__()
        self.linear = nn.Linear(144, classes)

    def forward(self, x):
        return self.linear(x.mean(dim=1).flatten(1))


@pytest.mark.parametrize("case", ["teacher", "bare_teacher", "store", "student", "eval_data"])
def test_class_counts_are_checked_before_the_run_folder_exists(case, data, store, tmp_path):
    recipe = {"teacher": "kd", "bare_teacher": "kd", "student": "hard", "eval_data": "hard"}.get(case, "fkd")
    objects = {"teacher": {"teacher": LinearTeacher(num_classes=10)}, "bare_teacher": {"teacher": BareTeacher(10)},
               "store": {"store": OtherClassesStore(store, 10)}, "student": {"student": SmallNet(classes=10)},
               "eval_data": {"eval_data": NoiseImages(count=12, num_classes=10, seed=1)}}[case]
    if recipe == "fkd" and "store" not in objects:
        objects["store"] = store
    with pytest.raises(ValueError) as caught:
        train(tiny_config(tmp_path, recipe), dataset=data, **objects)
    message = str(caught.value)
    assert re.search(r"\b10\b", message) and re.search(r"\b6\b", message) and "noise24" in message
    assert not (tmp_path / recipe).exists()


# ----- 2b. the CLI on a failed run's folder
def test_the_cli_reports_a_failed_runs_folder_and_overwrite_replaces_it(tmp_path, capsys):
    argv = ["train", "--recipe", "hard", "--data", "fashion-mnist", "--limit", "30", "--eval-data", "none",
            "--student", "tiny_cnn", "--epochs", "1", "--batch-images", "10", "--num-crops", "1", "--warmup-epochs",
            "0", "--device", "cpu", "--no-progress", "--out", str(tmp_path), "--name", "run"]
    assert main(argv + ["--lr", "1e38"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: training diverged at epoch 1") and "Traceback" not in err
    assert main(argv + ["--lr", "1e38"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: run ") and "has no checkpoint" in err
    assert "--resume" in err and "--overwrite" in err and "Traceback" not in err
    assert main(argv + ["--lr", "0.05", "--overwrite"]) == 0
    assert "run finished" in capsys.readouterr().out
    assert all_finite(tmp_path / "run" / "checkpoints" / "last.pt")


# ----- 3. demo and compare check their recipes first
@pytest.fixture
def no_work(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the recipes were checked")
    for name in ("prepare", "demo_teacher", "train_method", "load_dataset", "generate_labels"):
        monkeypatch.setattr(demo_module, name, forbidden)


def test_demo_and_compare_reject_an_unknown_recipe_before_any_work(no_work, tmp_path, capsys):
    for run in (lambda: run_demo("small", out=tmp_path / "d", recipes=["hard", "fkdd"], progress=False),
                lambda: run_compare(["hard", "fkdd"], seeds=(0,), mode="small", out=tmp_path / "c", progress=False)):
        with pytest.raises(ValueError) as caught:
            run()
        message = str(caught.value)
        assert "'fkdd'" in message and "did you mean 'fkd'" in message
        assert all(name in message for name in list_recipes())
    assert main(["demo", "--mode", "small", "--recipes", "hard,fkdd", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown recipe 'fkdd'") and "known recipes: " in err
    assert not (tmp_path / "d").exists() and not (tmp_path / "c").exists()


# ----- 4. train says how crops are drawn
def test_notes_on_images_without_kept_crops_and_crops_drawn_with_replacement(data, store, tmp_path, capsys):
    num_crops = 4
    # independently of the calibration code: a crop is kept when T_L <= y_s <= T_T
    y_s = np.asarray(store.y_s)
    kept = ((y_s >= TINY_CALIBRATION["t_low"]) & (y_s <= TINY_CALIBRATION["t_top"])).sum(axis=1)
    without, few = int((kept == 0).sum()), int(((kept > 0) & (kept < num_crops)).sum())
    assert without > 0 and few > 0  # the case under test
    seen = []
    result = train(tiny_config(tmp_path, "ferkd", num_crops=num_crops), dataset=data, store=store,
                   callbacks=[seen.append])
    notes = {e.topic: e.text for e in seen if e.kind == "note"}
    assert [e.kind for e in seen][:3] == ["start", "note", "note"]
    assert notes["images_without_kept_crops"].startswith(f"{without} of 24 training images have no crop kept")
    assert "never trained on" in notes["images_without_kept_crops"]
    assert f"kept crops of {few} of {24 - without} trained images" in notes["images_with_crops_drawn_with_replacement"]
    assert "drawn with replacement" in notes["images_with_crops_drawn_with_replacement"]
    resolved = json.loads((tmp_path / "ferkd" / "config.json").read_text())["resolved"]
    assert resolved["images_without_kept_crops"] == without
    assert resolved["images_with_crops_drawn_with_replacement"] == few
    assert resolved["notes"] == list(notes.values()) == result.extra["notes"]
    TqdmProgress()(NoteEvent(run="ferkd", text=notes["images_without_kept_crops"]))
    assert f"ferkd note: {without} of 24 training images" in capsys.readouterr().out


def test_no_notes_when_every_image_has_enough_kept_crops(data, store, tmp_path):
    seen = []
    train(tiny_config(tmp_path, num_crops=8), dataset=data, store=store, callbacks=[seen.append])
    assert not [e for e in seen if e.kind == "note"]
    resolved = json.loads((tmp_path / "fkd" / "config.json").read_text())["resolved"]
    assert resolved["images_without_kept_crops"] == 0 and resolved["images_with_crops_drawn_with_replacement"] == 0


# ----- 4b. evaluate on a path that is no run
def test_evaluate_says_when_a_run_folder_or_checkpoint_is_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "failed").mkdir(parents=True)
    (tmp_path / "runs" / "failed" / "config.json").write_text("{}")
    expected = {"runs/nope": "error: run folder runs/nope does not exist",
                str(tmp_path / "nope"): f"error: run folder {tmp_path / 'nope'} does not exist",
                "nope.pt": "error: checkpoint nope.pt does not exist",
                "runs/failed": "error: run runs/failed has no checkpoint yet",
                "no_such_teacher": "error: unknown teacher 'no_such_teacher'"}
    for spec, start in expected.items():
        assert main(["evaluate", spec]) == 2
        err = capsys.readouterr().err
        assert err.startswith(start), (spec, err)


def test_a_truncated_config_json_before_the_first_checkpoint_starts_the_run_afresh(data, store, tmp_path):
    config = tiny_config(tmp_path, epochs=1)
    run_dir = tmp_path / "fkd"
    run_dir.mkdir()
    (run_dir / "config.json").write_text('{"config": {"recipe": "fk')  # killed while writing it
    result = train(config, dataset=data, store=store, student=SmallNet(), resume=True)
    assert result.status == "finished" and [m["epoch"] for m in result.history] == [1]
    assert json.loads((run_dir / "config.json").read_text())["config"]["recipe"] == "fkd"
    assert not list(run_dir.glob("*.tmp"))


def test_a_truncated_config_json_beside_a_checkpoint_is_named_and_nothing_is_lost(data, store, tmp_path):
    config = tiny_config(tmp_path, epochs=2)
    train(config.replace(epochs=1), dataset=data, store=store, student=SmallNet())
    run_dir = tmp_path / "fkd"
    before = (run_dir / "checkpoints" / "last.pt").read_bytes()
    (run_dir / "config.json").write_text('{"config": {"recipe": "fk')
    with pytest.raises(ValueError, match=r"config\.json is unreadable .*--overwrite"):
        train(config.replace(epochs=1), dataset=data, store=store, student=SmallNet(), resume=True)
    assert (run_dir / "checkpoints" / "last.pt").read_bytes() == before
