"""Students: a timm name, a torchvision name, a registered in-project network, or any ``nn.Module``.

A :class:`Student` takes what a :class:`~softlab.teachers.Teacher` takes (float images in [0, 1] at
``input_size``), matches channels and normalises itself, so evaluation code treats both alike and a checkpoint
is all that is needed to use a trained student.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..teachers.base import fit_stats, match_channels, to_float_images

_FACTORIES: dict[str, Callable[..., nn.Module]] = {}


def register_student(name: str):
    """Decorator registering ``fn(num_classes, in_chans, **kwargs) -> nn.Module`` as student ``name``."""
    def decorator(fn):
        _FACTORIES[name] = fn
        return fn
    return decorator


def list_students() -> list[str]:
    return sorted(_FACTORIES)


@register_student("resnet10t_narrow")
def resnet10t_narrow(num_classes: int, in_chans: int, channels=(16, 32, 64, 128), stem_width: int = 8,
                     maxpool: bool = False, **kwargs) -> nn.Module:
    """timm ``resnet10t`` at a quarter of its width (16/32/64/128, 0.3 M parameters): the Fashion-MNIST teacher's
    slimmer sibling. Without the stem max-pool it keeps 14×14 features from a 28×28 input."""
    from ..teachers.fashion_mnist import build_model

    return build_model(num_classes, in_chans, "resnet10t", maxpool, channels=list(channels), stem_width=stem_width,
                       **kwargs)


@register_student("tiny_cnn")
def tiny_cnn(num_classes: int, in_chans: int, width: int = 8) -> nn.Module:
    """Two conv layers and a linear head (for tests and quick checks)."""
    return nn.Sequential(
        nn.Conv2d(in_chans, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes))


def build_network(spec: str, num_classes: int, in_chans: int, **kwargs) -> nn.Module:
    """``<registered name>`` | ``timm:<name>`` | ``torchvision:<name>`` | a bare timm or torchvision name."""
    scheme, colon, name = spec.partition(":")
    if not colon:
        scheme, name = _guess_scheme(spec), spec
    if scheme == "softlab":
        return _FACTORIES[name](num_classes=num_classes, in_chans=in_chans, **kwargs)
    if scheme == "timm":
        import timm

        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)
    if scheme == "torchvision":
        import torchvision

        return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    raise ValueError(f"unknown student scheme {scheme!r} in {spec!r}; use a registered name "
                     f"({', '.join(list_students())}), timm:<name> or torchvision:<name>")


def _guess_scheme(name: str) -> str:
    if name in _FACTORIES:
        return "softlab"
    import timm

    if name in timm.list_models():
        return "timm"
    import torchvision

    if name in torchvision.models.list_models():
        return "torchvision"
    raise ValueError(f"unknown student {name!r}: not a registered student ({', '.join(list_students())}), "
                     "nor a timm or torchvision model name")


def _torchvision_channels(spec: str) -> int | None:
    return 3 if spec.startswith("torchvision:") or (":" not in spec and _guess_scheme(spec) == "torchvision") else None


class Student(nn.Module):
    """A network plus its input contract: ``forward`` takes [0, 1] images ``[B, C, H, W]`` at ``input_size``.

    ``spec`` and ``kwargs`` rebuild the network (None for a user-given module); ``mean``/``std`` normalise.
    """

    def __init__(self, model: nn.Module, *, num_classes: int, input_size, mean, std, spec: str | None = None,
                 kwargs: dict | None = None):
        super().__init__()
        self.model = model
        self.spec, self.kwargs = spec, dict(kwargs or {})
        self.num_classes = int(num_classes)
        self.input_size = tuple(int(v) for v in input_size)
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = match_channels(to_float_images(images), self.input_size[0])
        return self.model((images - self._mean.to(images.dtype)) / self._std.to(images.dtype))

    def describe(self) -> dict:
        """Everything :func:`load_student` needs besides the weights (plain JSON values)."""
        return {"spec": self.spec, "kwargs": self.kwargs, "num_classes": self.num_classes,
                "input_size": list(self.input_size), "mean": list(self.mean), "std": list(self.std)}


def create_student(spec, num_classes: int, input_size, mean=(0.5,), std=(0.5,), **kwargs) -> Student:
    """Build a student from a spec string (see :func:`build_network`) or wrap an ``nn.Module``.

    ``input_size`` is (C, H, W) of the crops it is trained on; torchvision networks take 3 channels (grey
    input is repeated), others take C. ``mean``/``std`` are per input channel (one value is repeated).
    """
    if isinstance(spec, Student):
        return spec
    channels = int(input_size[0])
    if isinstance(spec, nn.Module):
        model, spec_name, in_chans = spec, None, channels
    else:
        in_chans = _torchvision_channels(spec) or channels
        model, spec_name = build_network(spec, num_classes, in_chans, **kwargs), spec
    mean, std = fit_stats(mean, in_chans), fit_stats(std, in_chans)
    return Student(model, num_classes=num_classes, input_size=(in_chans, *input_size[1:]), mean=mean, std=std,
                   spec=spec_name, kwargs=kwargs)


def load_student(path, map_location="cpu") -> Student:
    """Rebuild a trained student from a run checkpoint (``torch.load(weights_only=True)``)."""
    data = torch.load(path, map_location=map_location, weights_only=True)
    info = data.get("student_info")
    if not info or not info.get("spec"):
        raise ValueError(f"{path} holds no rebuildable student (it was trained from a user-given nn.Module: "
                         "rebuild the module and load data['student'] into it)")
    student = create_student(info["spec"], info["num_classes"], info["input_size"], info["mean"], info["std"],
                             **info["kwargs"])
    student.load_state_dict(data["student"])
    return student.eval()
