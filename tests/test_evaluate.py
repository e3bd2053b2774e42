"""Evaluation metrics against hand-computed values, and evaluating a model on a data set."""
import math

import pytest
import torch

from softlab.evaluate import (EvalImages, classification_metrics, evaluate, negative_log_likelihood,
                              per_class_accuracy, reliability, topk_accuracy)
from tiny import LinearTeacher, NoiseImages, correct_count_bounds

LN = math.log


def test_topk_accuracy():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0], [0.0, 3.0, 1.0, 2.0]])
    targets = torch.tensor([0, 2, 0])
    assert topk_accuracy(logits, targets, ks=(1, 2)) == {"top1": pytest.approx(1 / 3), "top2": pytest.approx(2 / 3)}
    assert topk_accuracy(logits, targets, ks=(1, 5))["top5"] == 1.0  # k capped at C


def test_nll():
    logits = torch.tensor([[0.0, LN(3)], [0.0, 0.0]])
    assert negative_log_likelihood(logits, torch.tensor([1, 0])) == pytest.approx((-LN(0.75) + LN(2)) / 2)


def test_ece_and_reliability_bins_by_hand():
    # confidences 0.75 (correct), 0.75 (wrong), 0.85 (correct), 0.5 (correct: ties → class 0)
    logits = torch.tensor([[0.0, LN(3)], [0.0, LN(3)], [LN(17 / 3), 0.0], [0.0, 0.0]])
    targets = torch.tensor([1, 0, 0, 0])
    data = reliability(logits, targets, bins=10)
    # bins (0.7, 0.8]: 2 samples, acc 0.5, conf 0.75; (0.8, 0.9]: 1, acc 1, conf 0.85; (0.4, 0.5]: 1, acc 1, conf 0.5
    assert data["bin_count"] == [0, 0, 0, 0, 1, 0, 0, 2, 1, 0]
    assert data["bin_accuracy"][7] == pytest.approx(0.5) and data["bin_confidence"][7] == pytest.approx(0.75)
    expected = (2 / 4) * 0.25 + (1 / 4) * 0.15 + (1 / 4) * 0.5
    assert data["ece"] == pytest.approx(expected)
    assert data["bin_confidence"][0] == pytest.approx(0.05) and data["bin_accuracy"][0] == 0.0  # empty bin


def test_fifteen_bins_by_default_and_perfect_calibration():
    data = reliability(torch.tensor([[0.0, 0.0], [0.0, 0.0]]), torch.tensor([0, 1]))
    assert len(data["bin_count"]) == 15 and len(data["bin_edges"]) == 16
    assert data["ece"] == pytest.approx(0.0)  # confidence 0.5, accuracy 0.5


def test_per_class_accuracy_and_agreement():
    predicted, targets = torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2])
    assert per_class_accuracy(predicted, targets, 4) == [1.0, 1.0, 0.5, None]
    logits = torch.nn.functional.one_hot(predicted, 4).float()
    out = classification_metrics(logits, targets, reference=torch.tensor([0, 1, 2, 0]), class_names="abcd")
    assert out["agreement"] == 0.5 and out["per_class_accuracy"] == {"a": 1.0, "b": 1.0, "c": 0.5, "d": None}
    assert out["top1"] == 0.75 and out["count"] == 4


def test_evaluate_a_teacher_and_agreement_with_itself():
    data = NoiseImages(count=20)
    teacher = LinearTeacher()
    images = EvalImages(data, teacher.input_size[1:])
    assert images.images.shape == (20, 1, 12, 12) and images.images.dtype == torch.uint8
    result = evaluate(teacher, images, reference=teacher)
    assert result["agreement"] == 1.0 and result["count"] == 20
    # top-1 recomputed from the teacher's logits on the [0, 1] images (near-ties may count either way)
    with torch.no_grad():
        logits = teacher(images.images.float() / 255)
    fewest, most = correct_count_bounds(logits, images.targets, margin=1e-4)
    assert most - fewest <= 2 and fewest <= round(result["top1"] * 20) <= most
    assert (images.targets == torch.arange(20) % 6).all()
    assert set(result["reliability"]) == {"bin_edges", "bin_confidence", "bin_accuracy", "bin_count"}


def test_a_timm_teacher_is_evaluated_on_its_own_centre_crop_of_each_photo():
    from torchvision.transforms import v2

    from softlab.data import load_dataset
    from softlab.teachers import TeacherUnavailableError, create_teacher

    try:
        teacher = create_teacher("efficientnet_lite0")
    except TeacherUnavailableError as error:
        pytest.skip(str(error))
    photos = load_dataset("photos", limit=3)
    images = EvalImages.for_classifier(photos, teacher)
    # timm's recipe for tf_efficientnet_lite0 (224 px, crop_pct 0.875), written with torchvision: short side to
    # floor(224 / 0.875) = 256, bicubic antialiased, centre crop 224
    reference = v2.Compose([v2.ToDtype(torch.float32, scale=True),
                            v2.Resize(256, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
                            v2.CenterCrop(224)])
    for index in range(3):
        expected = (reference(photos[index][0]).clamp(0, 1) * 255).round().to(torch.uint8)
        # ≤ 1 grey level apart: rounding float results that may differ in the last bit
        assert (images.images[index].int() - expected.int()).abs().max() <= 1
    squashed = EvalImages(photos, (224, 224))
    assert not torch.equal(images.images, squashed.images)  # the whole photo resized is another picture
