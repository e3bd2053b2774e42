"""Mixup and CutMix: SelfMix (two crops of the same image, FerKD) and cross-image (timm's pairing).

Each mixed sample n takes a partner m: the next crop *of the same image* in the batch for SelfMix (FerKD, Shen
ICCV 2023), or the sample at the mirrored batch position for cross-image mixing (timm's ``batch.flip(0)``).
With probability ``prob`` a sample is mixed, by CutMix with probability ``switch_prob`` (when both are
enabled), else by Mixup, with λ ~ Beta(α, α):

- Mixup (Zhang et al. ICLR 2018): x = λ·x_n + (1 − λ)·x_m;
- CutMix (Yun et al. ICCV 2019): a box of area share ≈ 1 − λ of x_m is pasted into x_n (timm's ``rand_bbox``:
  side ratio sqrt(1 − λ), uniform centre, clipped), and λ becomes the kept area share;

and the label is λ·y_n + (1 − λ)·y_m in both cases. Randomness comes from a numpy ``Generator`` passed in
(the trainer derives one per step from the seed), and every draw is made whatever the outcome, so a plan is a
pure function of (generator state, batch layout).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

MODES = ("none", "selfmix", "cross")


@dataclass(frozen=True)
class Mixing:
    """A mixing setting: ``mode`` none | selfmix | cross, Beta parameters, probabilities."""

    mode: str = "none"
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    prob: float = 1.0
    switch_prob: float = 0.5

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mixing mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
            raise ValueError(f"mixup_alpha and cutmix_alpha must be >= 0, got {self.mixup_alpha}, {self.cutmix_alpha}")
        if self.mode != "none" and self.mixup_alpha == 0 and self.cutmix_alpha == 0:
            raise ValueError(f"mixing mode {self.mode!r} needs mixup_alpha > 0 or cutmix_alpha > 0")
        for name in ("prob", "switch_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")

    @property
    def active(self) -> bool:
        return self.mode != "none" and self.prob > 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> "Mixing":
        return cls(**(data or {}))


@dataclass
class MixPlan:
    """Per sample: ``partner`` index, label weight ``lam`` of its own content, CutMix flag and box (i, j, h, w)."""

    partner: np.ndarray
    lam: np.ndarray
    cutmix: np.ndarray
    boxes: np.ndarray


def selfmix_partners(image_of_sample) -> np.ndarray:
    """Each sample's partner: the next sample of the same image, cyclically (itself if the image has one)."""
    image_of_sample = np.asarray(image_of_sample)
    partner = np.arange(len(image_of_sample))
    for image in np.unique(image_of_sample):
        where = np.flatnonzero(image_of_sample == image)
        partner[where] = np.roll(where, -1)
    return partner


def cross_partners(count: int) -> np.ndarray:
    """timm's pairing: sample n with sample count − 1 − n (the batch flipped)."""
    return np.arange(count)[::-1].copy()


def cutmix_boxes(lam: np.ndarray, height: int, width: int, rng: np.random.Generator):
    """timm's ``rand_bbox`` per sample → (boxes int ``[N, 4]`` as (i, j, h, w), kept area share ``[N]``)."""
    ratio = np.sqrt(1.0 - lam)
    cut_h, cut_w = (height * ratio).astype(np.int64), (width * ratio).astype(np.int64)
    cy, cx = rng.integers(0, height, size=len(lam)), rng.integers(0, width, size=len(lam))
    top, bottom = np.clip(cy - cut_h // 2, 0, height), np.clip(cy + (cut_h + 1) // 2, 0, height)
    left, right = np.clip(cx - cut_w // 2, 0, width), np.clip(cx + (cut_w + 1) // 2, 0, width)
    boxes = np.stack([top, left, bottom - top, right - left], axis=1)
    return boxes, 1.0 - boxes[:, 2] * boxes[:, 3] / (height * width)


def plan_mix(mixing: Mixing, image_of_sample, height: int, width: int, rng: np.random.Generator) -> MixPlan:
    """Draw one batch's mixing plan (all draws are made, in a fixed order, whatever is enabled)."""
    count = len(image_of_sample)
    partner = selfmix_partners(image_of_sample) if mixing.mode == "selfmix" else cross_partners(count)
    applied = rng.random(count) < mixing.prob
    switch = rng.random(count) < mixing.switch_prob
    lam_mixup = rng.beta(max(mixing.mixup_alpha, 1e-6), max(mixing.mixup_alpha, 1e-6), size=count)
    lam_cutmix = rng.beta(max(mixing.cutmix_alpha, 1e-6), max(mixing.cutmix_alpha, 1e-6), size=count)
    if mixing.mixup_alpha > 0 and mixing.cutmix_alpha > 0:
        cutmix = switch
    else:
        cutmix = np.full(count, mixing.cutmix_alpha > 0)
    boxes, kept = cutmix_boxes(lam_cutmix, height, width, rng)
    applied &= mixing.mode != "none"
    applied &= partner != np.arange(count)  # mixing a sample with itself changes nothing
    cutmix &= applied
    lam = np.where(cutmix, kept, lam_mixup)
    lam = np.where(applied, lam, 1.0)
    boxes = np.where(cutmix[:, None], boxes, 0)
    return MixPlan(partner=partner, lam=lam.astype(np.float64), cutmix=cutmix, boxes=boxes)


def box_masks(boxes: np.ndarray, height: int, width: int, device=None) -> torch.Tensor:
    """bool ``[N, 1, H, W]``: True inside each (i, j, h, w) box."""
    boxes = torch.as_tensor(boxes, device=device)
    rows = torch.arange(height, device=device).view(1, -1)
    cols = torch.arange(width, device=device).view(1, -1)
    in_rows = (rows >= boxes[:, :1]) & (rows < boxes[:, :1] + boxes[:, 2:3])
    in_cols = (cols >= boxes[:, 1:2]) & (cols < boxes[:, 1:2] + boxes[:, 3:4])
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]


def mix_images(images: torch.Tensor, plan: MixPlan) -> torch.Tensor:
    """Apply a plan to images ``[N, C, H, W]`` (Mixup blend, or CutMix paste of the partner's box)."""
    partner = torch.as_tensor(plan.partner, device=images.device)
    other = images[partner]
    lam = torch.as_tensor(plan.lam, dtype=images.dtype, device=images.device).view(-1, 1, 1, 1)
    cutmix = torch.as_tensor(plan.cutmix, device=images.device).view(-1, 1, 1, 1)
    blended = torch.where(cutmix, images, lam * images + (1 - lam) * other)
    paste = box_masks(plan.boxes, images.shape[-2], images.shape[-1], images.device) & cutmix
    return torch.where(paste, other, blended)


def mix_targets(targets: torch.Tensor, partner, lam) -> torch.Tensor:
    """λ·y_n + (1 − λ)·y_partner for soft targets ``[N, C]`` (``lam`` a number or one per sample)."""
    partner = torch.as_tensor(partner, device=targets.device)
    lam = torch.as_tensor(lam, dtype=targets.dtype, device=targets.device)
    lam = lam.view(-1, 1) if lam.ndim else lam
    return lam * targets + (1 - lam) * targets[partner]


def smoothed_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """timm's ``one_hot``: 1 − ε + ε/C on the class, ε/C elsewhere."""
    off = smoothing / num_classes
    out = torch.full((len(labels), num_classes), off, device=labels.device)
    return out.scatter_(1, labels.long().view(-1, 1), 1.0 - smoothing + off)


def mix(images: torch.Tensor, targets: torch.Tensor, image_of_sample, mixing: Mixing,
        rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, MixPlan]:
    """Mix a batch: (images ``[N, C, H, W]``, soft targets ``[N, K]``) → mixed images, mixed targets, the plan."""
    plan = plan_mix(mixing, image_of_sample, images.shape[-2], images.shape[-1], rng)
    if not plan.lam.size or (plan.lam == 1.0).all():
        return images, targets, plan
    return mix_images(images, plan), mix_targets(targets, plan.partner, plan.lam), plan
