"""FKD's multi-crop loading: each step decodes every image of the batch once and cuts ``num_crops`` regions of it.

Regions come from a label store (``StoredCrops``: drawn among the crops a FerKD calibration keeps, or all of a
plain store's) or are sampled fresh (``RandomCrops``: RandomResizedCrop + flip, for online recipes). A batch is a
pure function of (seed, epoch, step): the image order of an epoch and each image's crop draw come from numpy
generators seeded with those numbers, so a run resumed mid-epoch sees exactly the batches it would have seen.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..data.crops import CropParams, cut_crops, pixel_boxes, sample_crop_boxes, normalise_boxes

_ORDER, _CROPS = 11, 13  # stream tags mixed into the seeds


@dataclass
class Batch:
    """One step's crops: ``images`` float [0, 1] ``[N, C, S, S]``, ground truth ``targets`` ``[N]``, the image
    and stored crop each sample comes from (crop −1 for fresh crops), and stored soft labels ``[N, K]`` or None."""

    images: torch.Tensor
    targets: torch.Tensor
    image_index: np.ndarray
    crop_index: np.ndarray
    soft: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.targets)


class RandomCrops:
    """Fresh RandomResizedCrop regions (+ flips), seeded by (seed, epoch, image)."""

    stored = False

    def __init__(self, params: CropParams | None, num_crops: int, seed: int):
        self.params, self.num_crops, self.seed = params or CropParams(), int(num_crops), int(seed)

    def draw(self, epoch: int, image: int, height: int, width: int):
        rng = np.random.default_rng([self.seed, _CROPS, epoch, image])
        boxes, flips = sample_crop_boxes(height, width, self.num_crops, self.params, rng)
        return normalise_boxes(boxes, height, width), flips, np.full(self.num_crops, -1)

    @property
    def interpolation(self) -> str:
        return self.params.interpolation


class StoredCrops:
    """``num_crops`` of an image's stored regions, drawn without replacement among its kept crops (with
    replacement when fewer are kept). ``labels`` is a :class:`~softlab.labels.LabelStore` or a
    :class:`~softlab.calibrate.CalibratedStore` view; discarded crops are never drawn, and neither are the crops
    of images the store lists as skipped (undecodable when the labels were generated: ``skipped``, bool ``[N]``),
    which have no kept crop."""

    stored = True

    def __init__(self, labels, num_crops: int, seed: int):
        self.labels, self.num_crops, self.seed = labels, int(num_crops), int(seed)
        self.store = getattr(labels, "store", labels)
        kept = getattr(labels, "kept", None)
        self.kept = np.ones((self.store.num_images, self.store.num_crops), bool) if kept is None else np.asarray(kept)
        skipped = self.store.skipped_mask() if hasattr(self.store, "skipped_mask") else None
        self.skipped = np.zeros(self.store.num_images, bool) if skipped is None else np.asarray(skipped, bool)
        if self.skipped.any():
            self.kept = self.kept & ~self.skipped[:, None]
        self.interpolation = self.store.manifest["crops"].get("interpolation", "bicubic")

    def eligible_images(self) -> np.ndarray:
        """Images with at least one kept crop (never a skipped image)."""
        return np.flatnonzero(self.kept.any(axis=1))

    def draw(self, epoch: int, image: int, height: int, width: int):
        rng = np.random.default_rng([self.seed, _CROPS, epoch, image])
        kept = np.flatnonzero(self.kept[image])
        if self.skipped[image]:
            raise ValueError(f"image {image} was skipped when the labels were generated (it could not be decoded): "
                             "it has no labels to train on")
        if not len(kept):
            raise ValueError(f"image {image} has no kept crop under this calibration")
        chosen = rng.choice(kept, size=self.num_crops, replace=len(kept) < self.num_crops)
        coords, flips = self.store.crops(image)
        return coords[chosen], flips[chosen], chosen

    def soft_labels(self, image_index: np.ndarray, crop_index: np.ndarray) -> torch.Tensor:
        return self.labels.labels(image_index, crop_index)


def crop_theta(boxes: np.ndarray, flips: np.ndarray, height: int, width: int) -> torch.Tensor:
    """Affine matrices ``[N, 2, 3]`` mapping output grids onto pixel boxes (i, j, h, w) (align_corners=False)."""
    i, j, h, w = (torch.as_tensor(boxes[:, k], dtype=torch.float32) for k in range(4))
    theta = torch.zeros(len(boxes), 2, 3)
    sign = torch.where(torch.as_tensor(np.asarray(flips, dtype=bool)), -1.0, 1.0)
    theta[:, 0, 0], theta[:, 0, 2] = sign * w / width, (2 * j + w) / width - 1
    theta[:, 1, 1], theta[:, 1, 2] = h / height, (2 * i + h) / height - 1
    return theta


def cut_crops_grid(images: torch.Tensor, boxes: np.ndarray, flips: np.ndarray, size: int,
                   interpolation: str = "bicubic") -> torch.Tensor:
    """All crops of a batch of same-size images in one ``grid_sample``: ``images`` ``[B, C, H, W]`` (uint8 or
    float), ``boxes`` ``[B, n, 4]`` pixel (i, j, h, w), ``flips`` ``[B, n]`` → float ``[B·n, C, size, size]``.

    The same resized crop as ``transforms.v2.functional.resized_crop`` up to the interpolation kernel; it has no
    antialiasing, so use it for crops no larger than ``size`` (upsampling), as :func:`cut_batch` does.
    """
    batch, count = boxes.shape[:2]
    height, width = images.shape[-2:]
    source = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
    theta = crop_theta(boxes.reshape(-1, 4), flips.reshape(-1), height, width).to(source.device)
    grid = F.affine_grid(theta, [batch * count, 1, size, size], align_corners=False)
    grid = grid.view(batch, count * size, size, 2)
    mode = "bicubic" if interpolation == "bicubic" else "bilinear" if interpolation == "bilinear" else "nearest"
    out = F.grid_sample(source, grid, mode=mode, padding_mode="border", align_corners=False)
    out = out.view(batch, -1, count, size, size).transpose(1, 2).reshape(batch * count, -1, size, size)
    return out.clamp_(0, 1)


def cut_batch(images: list[torch.Tensor], coords: list[np.ndarray], flips: list[np.ndarray], size: int,
              interpolation: str) -> torch.Tensor:
    """Crops of several images → ``[sum n, C, size, size]``; one batched grid_sample for same-size images whose
    crops are all upsampled, exact antialiased ``cut_crops`` otherwise."""
    shapes = {tuple(image.shape) for image in images}
    boxes = [pixel_boxes(c, *image.shape[-2:]) for c, image in zip(coords, images)]
    upsampled = all((b[:, 2:] <= size).all() for b in boxes)
    if len(shapes) == 1 and upsampled and len({len(b) for b in boxes}) == 1:
        return cut_crops_grid(torch.stack(images), np.stack(boxes), np.stack(flips), size, interpolation)
    return torch.cat([cut_crops(image, c, f, size, interpolation) for image, c, f in zip(images, coords, flips)])


class MultiCropLoader:
    """Batches of ``batch_images`` images × ``num_crops`` crops, deterministic in (seed, epoch, step).

    ``images`` are the dataset indices an epoch visits; with a calibration that leaves some image no kept crop,
    or a store that lists images skipped at generation, those images are left out and the epoch is topped up
    with a seeded draw of the others, so every recipe takes the same number of steps on the same number of crops.
    """

    def __init__(self, dataset, source, batch_images: int, size: int, seed: int, device=None,
                 pin_memory: bool = False):
        self.dataset, self.source = dataset, source
        self.batch_images, self.size, self.seed = int(batch_images), int(size), int(seed)
        self.device = torch.device(device or "cpu")
        self.pin_memory = pin_memory and self.device.type == "cuda"
        self.num_images = len(dataset)
        eligible = source.eligible_images() if hasattr(source, "eligible_images") else np.arange(self.num_images)
        if not len(eligible):
            raise ValueError("no image has a kept crop: loosen the calibration thresholds")
        self.eligible = eligible
        self.targets = torch.as_tensor(np.asarray(dataset.targets), dtype=torch.long)

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.num_images // self.batch_images)

    @property
    def crops_per_step(self) -> int:
        return self.batch_images * self.source.num_crops

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The ``num_images`` image indices an epoch visits, in order."""
        rng = np.random.default_rng([self.seed, _ORDER, epoch])
        order = rng.permutation(self.eligible)
        if len(order) < self.num_images:
            order = np.concatenate([order, rng.choice(self.eligible, self.num_images - len(order))])
        return order

    def batch(self, epoch: int, step: int, order: np.ndarray | None = None) -> Batch:
        order = self.epoch_order(epoch) if order is None else order
        chosen = order[step * self.batch_images:(step + 1) * self.batch_images]
        images, coords, flips, crops = [], [], [], []
        for index in chosen:
            image = self.dataset[int(index)][0].as_subclass(torch.Tensor)
            c, f, k = self.source.draw(epoch, int(index), *image.shape[-2:])
            images.append(image)
            coords.append(c)
            flips.append(f)
            crops.append(k)
        if self.device.type != "cpu":
            images = self._to_device(images)
        pixels = cut_batch(images, coords, flips, self.size, self.source.interpolation)
        image_index = np.repeat(chosen, [len(k) for k in crops])
        crop_index = np.concatenate(crops)
        soft = self.source.soft_labels(image_index, crop_index) if self.source.stored else None
        targets = self.targets[torch.from_numpy(image_index)]
        return Batch(images=pixels, targets=targets.to(self.device), image_index=image_index, crop_index=crop_index,
                     soft=None if soft is None else soft.to(self.device))

    def _to_device(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """One (pinned) transfer for same-size images, else one per image; crops are then cut on the device."""
        if len({tuple(image.shape) for image in images}) == 1:
            stacked = torch.stack(images)
            stacked = stacked.pin_memory() if self.pin_memory else stacked
            return list(stacked.to(self.device, non_blocking=self.pin_memory).unbind(0))
        return [image.to(self.device) for image in images]
