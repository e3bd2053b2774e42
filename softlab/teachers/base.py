"""The :class:`Teacher` wrapper, checkpoint helpers and a top-1 evaluator shared by every teacher source."""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

CHECKPOINT_FORMAT = "softlab-teacher"
_INTERPOLATIONS = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR,
                   "nearest": InterpolationMode.NEAREST}


class TeacherUnavailableError(RuntimeError):
    """A teacher cannot be built on this machine (weights missing, offline, package absent); the message says how."""


class Teacher(nn.Module):
    """A frozen classifier plus everything needed to feed it.

    ``forward`` takes float images in ``[0, 1]`` (uint8 is accepted and scaled), shaped ``[B, C, H, W]`` and already
    resized to ``input_size[1:]``. It converts channels (1 → C by repeating, 3 → 1 by averaging), normalises with
    ``mean``/``std`` and returns the model's logits ``[B, num_classes]``. The teacher stays in eval mode and its
    parameters never require grad; move it with ``.to(device)`` and use it under ``torch.autocast`` as any module.

    Attributes: ``spec`` (the canonical spec string that :func:`~softlab.teachers.create_teacher` rebuilds it
    from), ``model``, ``input_size`` ``(C, H, W)``, ``mean``, ``std``, ``interpolation`` (what resizing to
    ``input_size`` should use), ``class_names``, ``weights_path`` (or None) and ``accuracy`` (or None).
    """

    def __init__(self, model: nn.Module, *, spec: str, input_size, mean, std, class_names,
                 interpolation: str = "bicubic", weights_path=None, accuracy: float | None = None):
        super().__init__()
        self.spec = spec
        self.model = model
        self.input_size = _check_input_size(input_size)
        self.mean, self.std = _check_stats(mean, std, self.input_size[0])
        if interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(_INTERPOLATIONS)}, not {interpolation!r}")
        self.interpolation = interpolation
        self.class_names = [str(name) for name in class_names]
        if not self.class_names:
            raise ValueError("a teacher needs at least one class name")
        self.weights_path = str(weights_path) if weights_path is not None else None
        self.accuracy = None if accuracy is None else float(accuracy)
        self._sha256: str | None = None
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, -1, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def train(self, mode: bool = True) -> "Teacher":
        """Teachers are frozen: this always leaves the module (batch-norm statistics included) in eval mode."""
        return super().train(False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``[0, 1]`` images with any of 1 or 3 channels → the model's normalised input."""
        images = match_channels(to_float_images(images), self.input_size[0])
        return (images - self._mean.to(images.dtype)) / self._std.to(images.dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(images))

    def weights_sha256(self) -> str | None:
        """sha256 of the weights file (computed once), or None when the weights came from elsewhere."""
        if self._sha256 is None and self.weights_path is not None:
            self._sha256 = file_sha256(self.weights_path)
        return self._sha256

    def describe(self) -> dict:
        """A JSON-able summary: spec, input_size, mean, std, interpolation, num_classes, weights_sha256[, accuracy]."""
        info = {"spec": self.spec, "input_size": list(self.input_size), "mean": list(self.mean),
                "std": list(self.std), "interpolation": self.interpolation, "num_classes": self.num_classes,
                "weights_sha256": self.weights_sha256()}
        if self.accuracy is not None:
            info["accuracy"] = self.accuracy
        return info

    def extra_repr(self) -> str:
        return f"spec={self.spec!r}, input_size={self.input_size}, num_classes={self.num_classes}"


def _check_input_size(input_size) -> tuple[int, int, int]:
    size = tuple(int(v) for v in input_size)
    if len(size) != 3 or min(size) <= 0:
        raise ValueError(f"input_size must be (C, H, W) with positive entries, got {input_size!r}")
    return size


def _check_stats(mean, std, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean {mean} and std {std} need one value per input channel ({channels})")
    if min(std) <= 0:
        raise ValueError(f"std must be positive, got {std}")
    return mean, std


def fit_stats(values, channels: int) -> tuple[float, ...]:
    """Adapt per-channel statistics to ``channels`` (3 → 1 averages them, 1 → C repeats)."""
    values = tuple(float(v) for v in values)
    if len(values) == channels:
        return values
    if len(values) == 1:
        return values * channels
    if channels == 1:
        return (sum(values) / len(values),)
    raise ValueError(f"cannot adapt {len(values)}-channel statistics {values} to {channels} channels")


def to_float_images(images: torch.Tensor) -> torch.Tensor:
    """A batch ``[B, C, H, W]`` as a plain float tensor in ``[0, 1]`` (uint8 input is scaled by 1/255)."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"teacher input must be a [B, C, H, W] tensor, got {shape}")
    images = images.as_subclass(torch.Tensor)
    if images.dtype == torch.uint8:
        return images.float().div_(255)
    if not images.is_floating_point():
        raise TypeError(f"teacher input must be float in [0, 1] or uint8, got {images.dtype}")
    return images


def match_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Grey → colour by repeating the channel, colour → grey by averaging, otherwise unchanged."""
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1:
        return images.expand(-1, channels, -1, -1)
    if channels == 1:
        return images.mean(dim=1, keepdim=True)
    raise ValueError(f"cannot feed {have}-channel images to a teacher expecting {channels} channels")


def resize_images(images: torch.Tensor, size, interpolation: str = "bicubic") -> torch.Tensor:
    """Resize a float ``[0, 1]`` batch to ``size`` (H, W) with antialiasing; bicubic overshoot is clamped."""
    size = [int(size[0]), int(size[1])]
    if list(images.shape[-2:]) == size:
        return images
    out = F.resize(images, size, interpolation=_INTERPOLATIONS[interpolation], antialias=True)
    return out.clamp_(0, 1) if interpolation == "bicubic" else out


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_checkpoint(path) -> tuple[dict, dict]:
    """Read a checkpoint safely (``weights_only=True``) → ``(state_dict, metadata)``.

    Accepts a bare state dict, a dict holding it under ``"state_dict"`` or ``"model"`` (other entries become
    metadata, e.g. a softlab teacher checkpoint's num_classes/input_size/mean/std/class_names/accuracy), or a
    ``.safetensors`` file. ``module.`` and ``_orig_mod.`` prefixes (DataParallel, torch.compile) are removed.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"teacher weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return _clean_keys(load_file(str(path))), {}
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a {type(data).__name__}, not a state dict")
    for key in ("state_dict", "model"):
        if isinstance(data.get(key), dict):
            meta = {k: v for k, v in data.items() if k != key}
            return _clean_keys(data[key]), meta
    return _clean_keys(data), {}


def _clean_keys(state: dict) -> dict:
    cleaned = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            key = key[len(prefix):] if key.startswith(prefix) else key
        cleaned[key] = value
    return cleaned


def save_checkpoint(path, model: nn.Module, **meta) -> Path:
    """Write ``{"format": "softlab-teacher", "state_dict": ..., **meta}``; meta must be plain JSON-like values."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": CHECKPOINT_FORMAT, "state_dict": state, **meta}, tmp)
    tmp.replace(path)
    return path


DEFAULT_CROP_PCT = 0.875  # timm's, for a pretrained_cfg that gives none
EVAL_MODES = ("center", "squash", "border", "resize")


@dataclass(frozen=True)
class EvalTransform:
    """How a classifier sees a whole image at evaluation: timm's ``transforms_imagenet_eval`` on tensors.

    ``mode`` "center" (timm's default): resize keeping the aspect ratio until the image covers ``resize``
    (H, W) (for a square ``resize``: the short side to ``resize[0]``), then centre crop ``size``. "squash":
    resize both sides to ``resize``, then centre crop. "border": resize keeping the aspect ratio until the image
    fits in ``resize``, then centre crop or pad with ``fill`` to ``size``. "resize": the whole image resized to
    ``size``, aspect ratio not kept (teachers without an evaluation recipe, e.g. trained on whole small images;
    an image already at ``size`` is unchanged). timm's ``resize`` is ``floor(size / crop_pct)``.
    Resizing is antialiased, with the teacher's interpolation; bicubic overshoot is clamped to [0, 1].
    """

    size: tuple[int, int]
    resize: tuple[int, int] | None = None
    mode: str = "resize"
    interpolation: str = "bicubic"
    fill: tuple[float, ...] = (0.0,)
    source: str = ""

    def __post_init__(self):
        if self.mode not in EVAL_MODES:
            raise ValueError(f"evaluation mode must be one of {', '.join(EVAL_MODES)}, not {self.mode!r}")
        if self.mode != "resize" and self.resize is None:
            raise ValueError(f"evaluation mode {self.mode!r} needs a resize size")

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """``[C, H, W]`` or ``[B, C, H, W]`` images (uint8, or float in [0, 1]) → float ``[..., C, *size]``."""
        single = images.ndim == 3
        images = to_float_images(images[None] if single else images)
        out = self._apply(images)
        return out[0] if single else out

    def _apply(self, images: torch.Tensor) -> torch.Tensor:
        size = list(self.size)
        if self.mode == "resize":
            return resize_images(images, size, self.interpolation)
        height, width = images.shape[-2:]
        if self.mode == "squash":
            images = resize_images(images, self.resize, self.interpolation)
        elif self.mode == "center" and self.resize[0] == self.resize[1]:
            images = self._resize(images, [self.resize[0]])  # torchvision's short-side resize
        else:  # timm's ResizeKeepRatio: cover ("center") or fit in ("border") the resize box
            ratios = (height / self.resize[0], width / self.resize[1])
            ratio = max(ratios) if self.mode == "border" else min(ratios)
            images = self._resize(images, [round(height / ratio), round(width / ratio)])
        if self.mode == "border":
            images = _pad_to(images, size, self.fill)
        return F.center_crop(images, size)

    def _resize(self, images: torch.Tensor, size: list[int]) -> torch.Tensor:
        out = F.resize(images, size, interpolation=_INTERPOLATIONS[self.interpolation], antialias=True)
        return out.clamp_(0, 1) if self.interpolation == "bicubic" else out

    def describe(self) -> str:
        crop = f"{self.size[0]}×{self.size[1]}"
        if self.mode == "resize":
            text = f"whole image resized to {crop}"
        elif self.mode == "center" and self.resize[0] == self.resize[1]:
            text = f"short side resized to {self.resize[0]}, centre crop {crop}"
        else:
            text = f"{self.mode} resize to {self.resize[0]}×{self.resize[1]}, centre crop {crop}"
        return f"{text}, {self.interpolation}" + (f"; {self.source}" if self.source else "")


def _pad_to(images: torch.Tensor, size, fill) -> torch.Tensor:
    """Centre ``images`` on a canvas of at least ``size`` filled with ``fill`` (one value or one per channel)."""
    height, width = images.shape[-2:]
    out_h, out_w = max(height, size[0]), max(width, size[1])
    if (out_h, out_w) == (height, width):
        return images
    fill = torch.as_tensor(fill, dtype=images.dtype, device=images.device).reshape(-1)
    canvas = fill.view(1, -1, 1, 1).expand(images.shape[0], images.shape[1], out_h, out_w).clone()
    top, left = (out_h - height) // 2, (out_w - width) // 2
    canvas[..., top:top + height, left:left + width] = images
    return canvas


def eval_transform(teacher) -> EvalTransform:
    """The teacher's own whole-image evaluation transform.

    A timm model whose ``pretrained_cfg`` describes the teacher's input (same input size) uses timm's recipe:
    ``crop_pct`` (default 0.875) and ``crop_mode`` from the cfg, e.g. EfficientNet-Lite0: short side to
    ``floor(224 / 0.875) = 256``, centre crop 224. A ``torchvision:`` teacher uses its weights' preset (short
    side to ``resize_size``, centre crop). An ensemble uses that of its member with the ensemble's input size.
    Any other teacher (e.g. the Fashion-MNIST CNN, trained on whole 28×28 images) gets the whole image resized
    to its input size.
    """
    size = tuple(int(v) for v in teacher.input_size[1:])
    interpolation = getattr(teacher, "interpolation", "bicubic")
    members = [m for m in getattr(teacher, "members", None) or [] if tuple(m.input_size[1:]) == size]
    if members:
        return eval_transform(members[0])
    cfg = getattr(teacher, "pretrained_cfg", None) or getattr(getattr(teacher, "model", None), "pretrained_cfg", None)
    if isinstance(cfg, dict) and tuple(cfg.get("input_size") or ())[-2:] == size:
        crop_pct = float(cfg.get("crop_pct") or DEFAULT_CROP_PCT)
        mode = cfg.get("crop_mode") or "center"
        mean = cfg.get("mean") or getattr(teacher, "mean", (0.0,))
        return EvalTransform(size, tuple(math.floor(s / crop_pct) for s in size), mode, interpolation,
                             tuple(round(255 * m) / 255 for m in mean), source=f"timm crop_pct {crop_pct}")
    preset = _torchvision_preset(getattr(teacher, "spec", ""))
    if preset is not None and list(preset.crop_size) == [size[0]] and size[0] == size[1]:
        resize = int(preset.resize_size[0])
        return EvalTransform(size, (resize, resize), "center", interpolation, source="torchvision weights preset")
    return EvalTransform(size, None, "resize", interpolation)


def _torchvision_preset(spec: str):
    if not isinstance(spec, str) or not spec.startswith("torchvision:"):
        return None
    from torchvision import models

    try:
        preset = models.get_model_weights(spec.split(":", 1)[1]).DEFAULT.transforms()
    except (ValueError, KeyError):
        return None
    return preset if hasattr(preset, "crop_size") and hasattr(preset, "resize_size") else None


@torch.no_grad()
def evaluate_classifier(teacher: Teacher, dataset, batch_size: int = 512, progress: bool = True) -> float:
    """Top-1 accuracy of ``teacher`` on the labelled images of ``dataset`` (targets ``-1`` are skipped).

    Each image goes through the teacher's own evaluation transform (:func:`eval_transform`): for timm ImageNet
    teachers a resize to ``input_size / crop_pct`` and a centre crop, for teachers without one (Fashion-MNIST)
    a plain resize to the input size, a no-op for images already at that size.
    """
    from tqdm.auto import tqdm

    indices = [i for i, target in enumerate(dataset.targets) if target >= 0]
    if not indices:
        raise ValueError(f"{getattr(dataset, 'name', 'dataset')} has no labelled images to evaluate on")
    device = next((b.device for b in teacher.buffers()), torch.device("cpu"))
    transform = eval_transform(teacher)
    correct = 0
    batches = range(0, len(indices), batch_size)
    for start in tqdm(batches, desc="evaluating", unit="batch", disable=not progress, leave=False):
        chunk = indices[start:start + batch_size]
        images = torch.stack([transform(dataset[i][0]) for i in chunk]).to(device)
        targets = torch.as_tensor([int(dataset.targets[i]) for i in chunk], device=device)
        correct += int((teacher(images).argmax(dim=1) == targets).sum())
    return correct / len(indices)
