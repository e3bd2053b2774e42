"""The training engine on tiny data: multi-crop loading, one epoch per recipe, stop, exact resume, events."""
import json
from dataclasses import asdict

import numpy as np
import pytest
import torch

from softlab.calibrate import Calibration, calibrate
from softlab.data.crops import CropParams, cut_crops, pixel_boxes, sample_crops
from softlab.evaluate import EvalImages
from softlab.labels import generate_labels
from softlab.train import (MultiCropLoader, RandomCrops, RunControl, StoredCrops, cut_crops_grid,
                           list_recipes, load_student, metrics_without_timing, start_run, train)
from softlab.train.events import EventQueue
from tiny import LinearTeacher, NoiseImages, TINY_CALIBRATION, correct_count_bounds, tiny_config

@pytest.fixture(scope="module")
def data():
    return NoiseImages(count=24)


@pytest.fixture(scope="module")
def store(data, tmp_path_factory):
    return generate_labels(data, LinearTeacher(), tmp_path_factory.mktemp("train") / "store", num_crops=8,
                           label_type="marginal_smoothing_k2", progress=False)


class MaskedView:
    """A calibration-like view with a hand-made kept mask."""

    def __init__(self, store, kept):
        self.store, self.kept = store, kept

    def labels(self, image_idx, crop_idx):
        return self.store.labels(image_idx, crop_idx)


# ----- multi-crop loading
def test_loader_draws_only_kept_crops_and_skips_images_without_any(data, store):
    kept = np.zeros((24, 8), dtype=bool)
    kept[:, [1, 4, 6]] = True
    kept[5] = False                        # image 5: nothing kept
    kept[7] = False
    kept[7, 2] = True                      # image 7: one crop kept (drawn with replacement)
    loader = MultiCropLoader(data, StoredCrops(MaskedView(store, kept), 3, seed=0), batch_images=5, size=12, seed=0)
    assert loader.steps_per_epoch == 5 and 5 not in loader.eligible
    for epoch in range(3):
        order = loader.epoch_order(epoch)
        assert len(order) == 24 and 5 not in order
        for step in range(loader.steps_per_epoch):
            batch = loader.batch(epoch, step, order)
            assert kept[batch.image_index, batch.crop_index].all()
            assert batch.images.shape == (len(batch), 1, 12, 12) and batch.soft.shape == (len(batch), 6)
            torch.testing.assert_close(batch.soft, store.labels(batch.image_index, batch.crop_index))


def test_loader_with_a_ferkd_view(data, store):
    view = calibrate(store, Calibration(**TINY_CALIBRATION))
    loader = MultiCropLoader(data, StoredCrops(view, 2, seed=1), batch_images=6, size=12, seed=1)
    batch = loader.batch(0, 0)
    assert view.kept[batch.image_index, batch.crop_index].all()
    torch.testing.assert_close(batch.soft, view.labels(batch.image_index, batch.crop_index))
    assert set(loader.eligible) == set(np.flatnonzero(view.kept.any(axis=1)))


def test_each_image_is_loaded_once_per_step_with_its_num_crops(data, store):
    loader = MultiCropLoader(data, StoredCrops(store, 4, seed=0), batch_images=6, size=12, seed=0)
    batch = loader.batch(0, 1)
    images, counts = np.unique(batch.image_index, return_counts=True)
    assert len(images) == 6 and (counts == 4).all()
    assert len(set(zip(batch.image_index, batch.crop_index))) == 24  # without replacement within an image


def test_batches_are_a_function_of_seed_epoch_and_step(data):
    make = lambda seed: MultiCropLoader(data, RandomCrops(CropParams(), 2, seed), 6, 12, seed)  # noqa: E731
    a, b, c = make(0).batch(2, 3), make(0).batch(2, 3), make(1).batch(2, 3)
    assert torch.equal(a.images, b.images) and np.array_equal(a.image_index, b.image_index)
    assert not torch.equal(a.images, c.images)
    assert not np.array_equal(make(0).epoch_order(0), make(0).epoch_order(1))


def test_batched_grid_crops_match_resized_crop():
    image = torch.randint(0, 256, (1, 40, 40), dtype=torch.uint8)
    boxes, flips = np.array([[[5, 7, 12, 12], [0, 0, 12, 12]]]), np.array([[False, True]])
    crops = cut_crops_grid(image[None], boxes, flips, 12, "bilinear")  # same-size boxes: exact pixels
    torch.testing.assert_close(crops[0, 0], image[0, 5:17, 7:19].float() / 255)
    torch.testing.assert_close(crops[1, 0], image[0, :12, :12].flip(-1).float() / 255)
    coords, flips = sample_crops(28, 28, 16, CropParams(), seed=0, image_index=0)
    smooth = torch.nn.functional.avg_pool2d(torch.rand(1, 1, 28, 28), 5, 1, 2)[0]
    exact = cut_crops(smooth, coords, flips, 28)
    fast = cut_crops_grid(smooth[None], pixel_boxes(coords, 28, 28)[None], flips[None], 28)
    assert (exact - fast).abs().mean() < 0.01


# ----- runs
@pytest.mark.parametrize("recipe", list_recipes())
def test_one_epoch_per_recipe(recipe, data, store, tmp_path):
    eval_data = NoiseImages(count=10, seed=1)
    result = train(tiny_config(tmp_path, recipe), dataset=data, store=store, teacher=LinearTeacher(),
                   eval_data=eval_data)
    assert result.status == "finished" and len(result.history) == 1
    metrics = result.history[0]
    assert np.isfinite(metrics["train_loss"])
    # test top-1 is the saved student's accuracy on the evaluation images (near-ties may count either way)
    images = EvalImages(eval_data, (12, 12))
    with torch.no_grad():
        logits = load_student(result.checkpoint)(images.images.float() / 255)
    fewest, most = correct_count_bounds(logits, images.targets, margin=1e-5)
    assert most - fewest <= 2 and fewest <= round(metrics["test_top1"] * 10) <= most
    assert metrics["crops_seen"] == 24 * 2
    run_dir = tmp_path / recipe
    assert json.loads((run_dir / "config.json").read_text())["config"]["recipe"] == recipe
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1
    assert (run_dir / "checkpoints" / "last.pt").exists() and "ece" in result.final
    online = recipe in ("kd", "funmatch", "meal_v2", "nkd")
    assert (result.teacher_forwards == 48) if online else (result.teacher_forwards == 0)


def stop_at(control, step):
    def callback(event):
        if event.kind == "step" and event.step == step:
            control.request_stop()
    return callback


@pytest.mark.parametrize("recipe", ["ferkd", "pskd", "kd"])
def test_resume_reproduces_an_uninterrupted_run(recipe, data, store, tmp_path):
    kwargs = dict(dataset=data, store=store, teacher=LinearTeacher(), eval_data=NoiseImages(count=10, seed=1))
    # Identical batches through identical shapes give identical bits on the CPU, so the comparison is exact;
    # CUDA's convolution backward is not bitwise deterministic, hence the device.
    full = train(tiny_config(tmp_path / "a", recipe, epochs=3, device="cpu"), **kwargs)
    control = RunControl()
    config = tiny_config(tmp_path / "b", recipe, epochs=3, device="cpu")
    stopped = train(config, control=control, callbacks=[stop_at(control, 6)], **kwargs)  # mid epoch 2
    assert stopped.status == "stopped" and len(stopped.history) == 1
    resumed = train(config, resume=True, **kwargs)
    assert resumed.status == "finished"
    assert metrics_without_timing(resumed.history) == metrics_without_timing(full.history)
    a = torch.load(tmp_path / "a" / recipe / "checkpoints" / "last.pt", weights_only=True)["student"]
    b = torch.load(tmp_path / "b" / recipe / "checkpoints" / "last.pt", weights_only=True)["student"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = (tmp_path / "b" / recipe / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_stop_request_ends_cleanly_with_a_checkpoint(data, store, tmp_path):
    control, seen = RunControl(), []
    result = train(tiny_config(tmp_path, epochs=2), dataset=data, store=store, control=control,
                   callbacks=[stop_at(control, 3), seen.append])
    assert result.status == "stopped"
    kinds = [event.kind for event in seen]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("step") == 3
    end = seen[-1]
    assert end.status == "stopped" and end.step == 3
    state = torch.load(end.checkpoint, weights_only=True)
    assert (state["epoch"], state["step"]) == (0, 3)
    for event in seen:
        json.dumps(asdict(event))  # plain, JSON-able events


def test_background_run_pause_resume_and_stop(data, store, tmp_path):
    control = RunControl()
    control.pause()
    handle = start_run(tiny_config(tmp_path, epochs=50), dataset=data, store=store, control=control)
    handle.thread.join(0.5)
    assert not handle.done and not [e for e in handle.events.drain() if e.kind == "step"]
    control.resume()
    while not [e for e in handle.events.drain() if e.kind == "step"]:
        handle.thread.join(0.05)
    result = handle.stop()
    assert result.status == "stopped" and handle.done


def test_existing_runs_are_protected_and_resume_checks_the_config(data, store, tmp_path):
    config = tiny_config(tmp_path)
    train(config, dataset=data, store=store)
    with pytest.raises(FileExistsError, match="resume"):
        train(config, dataset=data, store=store)
    with pytest.raises(ValueError, match="lr"):
        train(config.replace(lr=0.2), dataset=data, store=store, resume=True)
    again = train(config, dataset=data, store=store, resume=True)  # already finished: nothing left to do
    assert again.status == "finished" and len(again.history) == 1
    assert train(config, dataset=data, store=store, overwrite=True).status == "finished"


def test_errors_are_reported_as_events(data, store, tmp_path):
    seen = []
    with pytest.raises(ValueError, match="store"):
        train(tiny_config(tmp_path, "fkd"), dataset=data, callbacks=[seen.append])
    assert seen[-1].kind == "error" and "store" in seen[-1].error


def test_store_must_match_the_training_images(store, tmp_path):
    with pytest.raises(ValueError, match="made for"):
        train(tiny_config(tmp_path), dataset=NoiseImages(count=24, seed=5), store=store)


def test_trained_student_reloads_from_its_checkpoint(data, store, tmp_path):
    result = train(tiny_config(tmp_path), dataset=data, store=store)
    student = load_student(result.checkpoint)
    images = torch.rand(3, 1, 12, 12)
    state = torch.load(result.checkpoint, weights_only=True)
    assert student(images).shape == (3, 6) and state["student_info"]["spec"] == "tiny_cnn"
