"""End to end on real data with a real pretrained teacher (EfficientNet-Lite0, offline weights package)."""
import json

import numpy as np
import pytest
import torch

from softlab.calibrate import calibrate
from softlab.cli import main
from softlab.data import load_dataset
from softlab.data.crops import cut_crops
from softlab.labels import LabelStore
from tiny import clear_argmax

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def photo_store(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e") / "photos"
    # on the CPU: fp32, the precision of the direct teacher pass it is compared with (CUDA would use bf16)
    code = main(["labels", "generate", "--data", "photos", "--limit", "3", "--teacher", "efficientnet_lite0",
                 "--crops", "12", "--label-type", "marginal_smoothing_k5", "--chunk-size", "2", "--device", "cpu",
                 "--out", str(out)])
    assert code == 0
    return LabelStore.open(out)


def test_real_teacher_store_is_complete_and_consistent(photo_store):
    photo_store.verify()
    manifest = photo_store.manifest
    assert manifest["teacher"]["spec"] == "efficientnet_lite0" and manifest["teacher"]["input_size"] == [3, 224, 224]
    generation = manifest["generation"]
    assert generation["crops"] == 36 and generation["device"] == "cpu"
    # the rate is the crop count over the measured time, rounded to 0.1, and the time is recorded rounded to
    # 1 ms: the rate recomputed from the recorded time may differ by 0.05 plus 36 · 0.0005 / seconds²
    seconds = generation["seconds"]
    assert abs(generation["crops_per_s"] - 36 / seconds) <= 0.05 + 36 * 0.0005 / (seconds - 0.0005) ** 2 + 1e-9
    assert photo_store.num_classes == 1000 and photo_store.topk_idx.shape == (3, 12, 5)
    labels = photo_store.labels(np.repeat(np.arange(3), 12), np.tile(np.arange(12), 3))
    torch.testing.assert_close(labels.sum(1), torch.ones(36), atol=2e-3, rtol=0)


def test_stored_labels_equal_a_direct_teacher_pass(photo_store):
    from softlab.teachers import create_teacher

    teacher = create_teacher("efficientnet_lite0")
    image, target = load_dataset("photos")[1]
    coords, flips = photo_store.crops(1)
    with torch.no_grad():
        probs = torch.softmax(teacher(cut_crops(image, coords, flips, (224, 224))), dim=1)
    # coords were stored as fp16; the boxes they round to are the sampled ones, so the crops are identical.
    # The store ran these 12 crops within a 24-crop batch, this pass as a 12-crop batch: the fp32 results differ
    # by rounding that grows through the network's many layers (~1e-5 relative on the probabilities here;
    # other kernels, thread counts or instruction sets give other noise), hence rtol 5e-4, plus half a float16
    # step (2^-11 relative) for the y_s the compact store keeps in float16.
    np.testing.assert_allclose(photo_store.y_s[1], probs[:, target].numpy(), rtol=5e-4 + 2.0 ** -11, atol=1e-6)
    # argmax only where the top two probabilities lie clearly further apart than that noise
    predicted, clear = clear_argmax(probs, 1e-3)
    assert clear.sum() >= 10, f"only {int(clear.sum())} of 12 crops have a clear top class"
    np.testing.assert_array_equal(photo_store.topk_idx[1, :, 0][clear.numpy()], predicted[clear].numpy())


def test_whole_image_crops_are_mostly_right_and_calibration_runs(photo_store, capsys):
    # the lite0 teacher recognises these photos: the median crop gives the true class a large share
    assert float(np.median(photo_store.y_s)) > 0.3
    stats = calibrate(photo_store, t_low=0.05, t_mid=0.3, t_top=0.99).stats()
    assert sum(stats["counts"].values()) == 36
    assert main(["calibrate", str(photo_store.path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["crops"] == 36
