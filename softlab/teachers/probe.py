"""What a teacher picker offers, and a quick look at a chosen teacher.

:func:`teacher_choices` lists the registered teachers (bundled, in-project, others) followed by the spec forms that
need an argument (a timm or torchvision name, a checkpoint file, an ensemble, any spec). :func:`probe_teacher`
measures a teacher's top-1 on a small held-out subset and keeps its top-k predictions on a few images.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..data import FASHION_MNIST_CLASSES, load_dataset
from .base import TeacherUnavailableError
from . import registry
from .registry import SCHEMES, TeacherSpecError, list_teachers

ANY_SPEC = "<spec>"  # the key of the free-form choice; "<" cannot start a registered name
HUB_EXAMPLE = "resnet18"

# registered teachers are grouped by the module that registered them
_GROUP_OF_MODULE = {"softlab.teachers.bundled": "bundled", "softlab.teachers.fashion_mnist": "in-project"}
GROUP_DESCRIPTIONS = {
    "bundled": "ImageNet weights from an installed package (offline)",
    "in-project": "trained in this project on Fashion-MNIST",
    "registered": "a registered teacher",
    "hub": "pretrained weights from the hub (online)",
    "file": "a local checkpoint for an architecture",
    "ensemble": "the mean of several teachers' softmaxes (MEAL V2)",
    "spec": "any spec that create_teacher accepts",
}
# spec forms that take an argument: key -> (label, group, example argument)
_FORMS = {
    "timm:": ("timm:<name>", "hub", HUB_EXAMPLE),
    "torchvision:": ("torchvision:<name>", "hub", HUB_EXAMPLE),
    "file:": ("file:<path>@<arch>", "file", f"/path/model.pth@timm:{HUB_EXAMPLE}"),
    "ensemble:": ("ensemble:<a>+<b>", "ensemble", "efficientnet_lite0+efficientnet_lite1"),
    ANY_SPEC: ("any spec", "spec", f"file:/path/model.pth@torchvision:{HUB_EXAMPLE}"),
}
_TEXT_FORMS = ("timm:", "torchvision:", "file:", ANY_SPEC)


@dataclass(frozen=True)
class TeacherChoice:
    """One entry of a teacher picker: a registered teacher (``key`` is its name) or a spec form (``key`` is
    ``"timm:"``, ``"torchvision:"``, ``"file:"``, ``"ensemble:"`` or :data:`ANY_SPEC`).

    ``ready`` says it loads without more input and without a long wait; ``note`` says why not, or where its
    weights come from; ``example`` is an argument that fits the form.
    """

    key: str
    label: str
    group: str
    ready: bool = True
    note: str = ""
    example: str = ""

    @property
    def needs_text(self) -> bool:
        return self.key in _TEXT_FORMS

    @property
    def needs_members(self) -> bool:
        return self.key == "ensemble:"

    def spec(self, text: str = "", members=()) -> str:
        """The spec string for this choice with the typed ``text`` or the chosen ensemble ``members``."""
        if self.needs_members:
            return ensemble_spec(members)
        if not self.needs_text:
            return self.key
        text = str(text).strip()
        if self.key != ANY_SPEC:
            text = text.removeprefix(self.key).strip()
        if not text:
            raise TeacherSpecError(f"type {_FORMS[self.key][0]} (for example {self.example}) to load a teacher")
        return text if self.key == ANY_SPEC else self.key + text


def teacher_choices() -> list[TeacherChoice]:
    """Registered teachers (bundled, in-project, other), then the spec forms (hub, file, ensemble, any spec)."""
    order = list(GROUP_DESCRIPTIONS)
    registered = sorted((_registered_choice(name) for name in list_teachers()),
                        key=lambda choice: (order.index(choice.group), choice.key))
    forms = [TeacherChoice(key, f"{label} — {GROUP_DESCRIPTIONS[group]}", group, ready=False,
                           note=GROUP_DESCRIPTIONS[group], example=example)
             for key, (label, group, example) in _FORMS.items() if _scheme_known(key)]
    return registered + forms


def _scheme_known(key: str) -> bool:
    return key == ANY_SPEC or key.rstrip(":") in SCHEMES


def teacher_group(name: str) -> str:
    """``"bundled"``, ``"in-project"`` or ``"registered"``: where the registered teacher ``name`` comes from."""
    return _GROUP_OF_MODULE.get(registry._FACTORIES[name].__module__, "registered")


def _registered_choice(name: str) -> TeacherChoice:
    group = teacher_group(name)
    ready, note = _availability(name, group)
    return TeacherChoice(name, f"{name} — {GROUP_DESCRIPTIONS[group]}", group, ready=ready, note=note)


def _availability(name: str, group: str) -> tuple[bool, str]:
    """Whether ``name`` loads at once, and a line saying where it comes from or what loading it will do."""
    if group == "bundled":
        from .bundled import bundled_weights_path

        try:
            return True, f"ImageNet-1k weights from {bundled_weights_path(name).name}, offline"
        except TeacherUnavailableError as error:
            return False, str(error)
    if group == "in-project":
        from .fashion_mnist import APPROX_MINUTES, default_checkpoint_path

        path = default_checkpoint_path()
        if path.is_file():
            return True, f"cached at {path}"
        return False, (f"{name} is not trained yet: loading it first trains it (about {APPROX_MINUTES} minutes "
                       f"on 2 CPU cores, with a progress bar) and caches it at {path}")
    return True, GROUP_DESCRIPTIONS[group]


def ensemble_spec(names) -> str:
    """``"ensemble:a+b[+…]"`` from two or more member specs (order kept)."""
    names = [str(name).strip() for name in names]
    if len(names) < 2 or not all(names):
        raise TeacherSpecError(f"an ensemble needs two or more members, got {len(names)}")
    bad = [name for name in names if "+" in name or name.startswith("ensemble:")]
    if bad:
        raise TeacherSpecError(f"ensemble members are single teachers (no '+', no nested ensembles): {bad}")
    return "ensemble:" + "+".join(names)


def choice_for_spec(spec: str) -> tuple[str, str, tuple[str, ...]]:
    """``(choice key, text, members)`` that make a picker show ``spec`` (unknown names go to :data:`ANY_SPEC`)."""
    spec = str(spec).strip()
    scheme, colon, rest = spec.partition(":")
    if not colon:
        return (spec, "", ()) if spec in registry._FACTORIES else (ANY_SPEC, spec, ())
    if scheme == "ensemble":
        members = tuple(member.strip() for member in rest.split("+"))
        if len(members) >= 2 and all(member in registry._FACTORIES for member in members):
            return "ensemble:", "", members
        return ANY_SPEC, spec, ()
    if scheme in ("timm", "torchvision", "file"):
        return scheme + ":", rest.strip(), ()
    return ANY_SPEC, spec, ()


@dataclass(frozen=True)
class ProbeExample:
    """A teacher's top-k on one image: ``image`` is uint8 ``[C, H, W]`` as the teacher saw it (its input size)."""

    index: int
    image: torch.Tensor
    target: int
    target_name: str
    classes: tuple[int, ...]
    probs: tuple[float, ...]
    names: tuple[str, ...]

    @property
    def correct(self) -> bool:
        return self.classes[0] == self.target


@dataclass(frozen=True)
class TeacherProbe:
    """Top-1 of teacher ``spec`` on ``count`` held-out images of ``data`` and its top-k on a few of them."""

    spec: str
    data: str
    count: int
    correct: int
    seconds: float
    examples: tuple[ProbeExample, ...]

    @property
    def top1(self) -> float:
        return self.correct / self.count

    def summary(self) -> str:
        return (f"top-1 {100 * self.top1:.1f}% ({self.correct} of the first {self.count} labelled images of "
                f"{self.data}), in {self.seconds:.1f} s")


def probe_dataset(teacher, limit: int | None = None):
    """Held-out images for ``teacher``'s classes: Fashion-MNIST's test set or the labelled ImageNet photos
    (the first ``limit`` of them), else None."""
    names = list(teacher.class_names)
    if names == list(FASHION_MNIST_CLASSES):
        return load_dataset("fashion-mnist:test", limit=limit)
    if len(names) == 1000:
        from ..data import imagenet_class_names

        if names == imagenet_class_names():
            return load_dataset("photos", limit=limit)
    return None


def probe_teacher(teacher, dataset, limit: int | None = 64, show: int = 4, k: int = 3,
                  batch_size: int = 256) -> TeacherProbe:
    """Top-1 of ``teacher`` on the first ``limit`` labelled images of ``dataset`` (a data set or its spec), and
    its top-``k`` classes and probabilities on ``show`` of them, spread evenly over the subset.

    Images go through the teacher's own evaluation transform (:meth:`~softlab.evaluate.EvalImages.for_classifier`).
    """
    from ..evaluate import EvalImages, predict

    started = time.perf_counter()
    dataset = load_dataset(dataset)
    _check_classes(teacher, dataset)
    indices = np.flatnonzero(np.asarray(dataset.targets) >= 0)[:limit]
    if not len(indices):
        raise ValueError(f"{dataset.name} has no labelled images to probe the teacher on")
    images = EvalImages.for_classifier(dataset.subset(indices), teacher)
    logits = predict(teacher, images, batch_size, device=_device_of(teacher))
    correct = int((logits.argmax(dim=-1) == images.targets).sum())
    probs = torch.softmax(logits.double(), dim=-1)  # an ensemble returns log-probabilities: softmax keeps them
    examples = tuple(_example(teacher, images, probs, int(indices[p]), p, k) for p in _spread(len(indices), show))
    return TeacherProbe(teacher.spec, dataset.name, len(indices), correct, time.perf_counter() - started, examples)


def _check_classes(teacher, dataset) -> None:
    if dataset.classes and len(dataset.classes) != teacher.num_classes:
        raise ValueError(f"{teacher.spec} predicts {teacher.num_classes} classes but {dataset.name} has "
                         f"{len(dataset.classes)}; probe it on images of its own classes")


def _spread(count: int, show: int) -> list[int]:
    """Up to ``show`` positions spread evenly over ``range(count)`` (first and last included)."""
    if show <= 0:
        return []
    return sorted(set(np.linspace(0, count - 1, min(show, count)).round().astype(int).tolist()))


def _example(teacher, images, probs: torch.Tensor, index: int, position: int, k: int) -> ProbeExample:
    top = probs[position].topk(min(k, probs.shape[-1]))
    classes = tuple(int(c) for c in top.indices)
    target = int(images.targets[position])
    return ProbeExample(index, images.images[position], target, teacher.class_names[target], classes,
                        tuple(float(p) for p in top.values), tuple(teacher.class_names[c] for c in classes))


def _device_of(teacher) -> torch.device:
    tensor = next(iter(teacher.parameters()), None)
    if tensor is None:
        tensor = next(iter(teacher.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")
