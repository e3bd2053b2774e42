"""RandomResizedCrop regions as data: sampled from a seed, stored in FKD's convention, cut with transforms.v2.

A region is stored as FKD stores it: normalised ``(i/H, j/W, h/H, w/W)`` (top, left, height, width) plus a
horizontal-flip flag. Sampling follows ``torchvision.transforms.v2.RandomResizedCrop``'s algorithm (ten tries of
area × log-uniform aspect ratio, then the central-crop fallback), vectorised over crops and seeded per image so
that any image's crops can be regenerated alone.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

FKD_SCALE = (0.08, 0.936)


@dataclass(frozen=True)
class CropParams:
    """RandomResizedCrop settings (FKD's defaults) and the flip probability."""

    scale: tuple[float, float] = FKD_SCALE
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    interpolation: str = "bicubic"

    def __post_init__(self):
        low, high = self.scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"crop scale must satisfy 0 < low <= high <= 1, got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"crop ratio must satisfy 0 < low <= high, got {self.ratio}")
        if not 0 <= self.flip_p <= 1:
            raise ValueError(f"flip_p must lie in [0, 1], got {self.flip_p}")
        if self.interpolation not in ("bicubic", "bilinear", "nearest"):
            raise ValueError(f"interpolation must be bicubic, bilinear or nearest, got {self.interpolation!r}")

    def to_dict(self) -> dict:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "CropParams":
        return cls(scale=tuple(data["scale"]), ratio=tuple(data["ratio"]), flip_p=data["flip_p"],
                   interpolation=data["interpolation"])


def crop_rng(seed: int, image_index: int) -> np.random.Generator:
    """The generator for one image's crops: depends only on (seed, image index)."""
    return np.random.default_rng([int(seed), int(image_index)])


def sample_crop_boxes(height: int, width: int, num_crops: int, params: CropParams, rng: np.random.Generator):
    """Sample ``num_crops`` boxes → (pixel boxes int64 ``[n, 4]`` as (i, j, h, w), flips bool ``[n]``)."""
    tries = 10
    area = height * width
    target_area = area * rng.uniform(params.scale[0], params.scale[1], size=(num_crops, tries))
    log_ratio = np.log(params.ratio)
    aspect = np.exp(rng.uniform(log_ratio[0], log_ratio[1], size=(num_crops, tries)))
    w = np.round(np.sqrt(target_area * aspect)).astype(np.int64)
    h = np.round(np.sqrt(target_area / aspect)).astype(np.int64)
    valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = valid.argmax(axis=1)
    rows = np.arange(num_crops)
    h, w, found = h[rows, first], w[rows, first], valid[rows, first]
    fallback_h, fallback_w = _central_fallback(height, width, params.ratio)
    h, w = np.where(found, h, fallback_h), np.where(found, w, fallback_w)
    offsets = rng.uniform(size=(num_crops, 2))
    i = np.where(found, np.floor(offsets[:, 0] * (height - h + 1)), (height - h) // 2).astype(np.int64)
    j = np.where(found, np.floor(offsets[:, 1] * (width - w + 1)), (width - w) // 2).astype(np.int64)
    flips = rng.uniform(size=num_crops) < params.flip_p
    return np.stack([i, j, h, w], axis=1), flips


def _central_fallback(height: int, width: int, ratio) -> tuple[int, int]:
    in_ratio = width / height
    if in_ratio < min(ratio):
        return int(round(width / min(ratio))), width
    if in_ratio > max(ratio):
        return height, int(round(height * max(ratio)))
    return height, width


def sample_crops(height: int, width: int, num_crops: int, params: CropParams, seed: int, image_index: int):
    """One image's crops → (normalised coords float32 ``[n, 4]`` = (i/H, j/W, h/H, w/W), flips bool ``[n]``)."""
    boxes, flips = sample_crop_boxes(height, width, num_crops, params, crop_rng(seed, image_index))
    return normalise_boxes(boxes, height, width), flips


def normalise_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    scale = np.array([height, width, height, width], dtype=np.float64)
    return (np.asarray(boxes, dtype=np.float64) / scale).astype(np.float32)


def pixel_boxes(coords, height: int, width: int) -> np.ndarray:
    """Normalised FKD coords (any float dtype, fp16 included) → integer pixel boxes (i, j, h, w), clipped."""
    coords = np.asarray(coords, dtype=np.float64)
    boxes = np.rint(coords * np.array([height, width, height, width])).astype(np.int64)
    boxes[:, 2] = np.clip(boxes[:, 2], 1, height)
    boxes[:, 3] = np.clip(boxes[:, 3], 1, width)
    boxes[:, 0] = np.clip(boxes[:, 0], 0, height - boxes[:, 2])
    boxes[:, 1] = np.clip(boxes[:, 1], 0, width - boxes[:, 3])
    return boxes


def to_bounding_boxes(coords, height: int, width: int) -> tv_tensors.BoundingBoxes:
    """Normalised FKD coords → ``tv_tensors.BoundingBoxes`` (XYXY pixels) on an image of ``(height, width)``."""
    i, j, h, w = pixel_boxes(coords, height, width).T
    xyxy = np.stack([j, i, j + w, i + h], axis=1)
    return tv_tensors.BoundingBoxes(torch.from_numpy(xyxy), format="XYXY", canvas_size=(height, width))


def cut_crops(image: torch.Tensor, coords, flips, size, interpolation: str = "bicubic") -> torch.Tensor:
    """Cut every region of one decoded image → float crops ``[n, C, size, size]`` in [0, 1].

    ``image`` is a uint8 or float ``[C, H, W]`` tensor (on any device); each crop is
    ``transforms.v2.functional.resized_crop`` of it, flipped where ``flips`` says so.
    """
    size = [size, size] if isinstance(size, int) else list(size)
    height, width = image.shape[-2:]
    source = F.to_dtype(image, torch.float32, scale=True) if image.dtype == torch.uint8 else image
    mode = InterpolationMode(interpolation)
    crops = torch.stack([
        F.resized_crop(source, int(i), int(j), int(h), int(w), size, interpolation=mode, antialias=True)
        for i, j, h, w in pixel_boxes(coords, height, width)
    ])
    flips = torch.tensor(np.asarray(flips, dtype=bool), device=crops.device)
    if flips.any():
        crops[flips] = F.horizontal_flip(crops[flips])
    return crops.clamp_(0, 1)


def crop_area_fraction(coords) -> np.ndarray:
    coords = np.asarray(coords, dtype=np.float64)
    return coords[..., 2] * coords[..., 3]

