"""FKD's multi-crop loading: each step decodes every image of the batch once and cuts ``num_crops`` regions of it.

Regions come from a label store (``StoredCrops``: drawn among the crops a FerKD calibration keeps, or all of a
plain store's) or are sampled fresh (``RandomCrops``: RandomResizedCrop + flip, for online recipes). A batch is a
pure function of (seed, epoch, step): the image order of an epoch and each image's crop draw come from numpy
generators seeded with those numbers, so a run resumed mid-epoch sees exactly the batches it would have seen.

Under ``torchrun`` every process computes the same epoch order and takes its ``share`` of each step's images (a
contiguous block, :meth:`MultiCropLoader.share_bounds`): the union of the shares is the single-process batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# the cutters live with the crops; re-exported here, where training's batches use them
from ..data.crops import (CropParams, crop_theta, cut_batch, cut_crops, cut_crops_grid, normalise_boxes,  # noqa: F401
                          normalise_many, pixel_boxes, sample_boxes_many, sample_crop_boxes)

_ORDER, _CROPS = 11, 13  # stream tags mixed into the seeds


@dataclass
class Batch:
    """One step's crops: ``images`` float [0, 1] ``[N, C, S, S]``, ground truth ``targets`` ``[N]``, the image
    and stored crop each sample comes from (crop −1 for fresh crops), and stored soft labels ``[N, K]`` or None.

    For one process's share of a step (under ``torchrun``), ``offset`` is the position of its first sample in the
    step's whole batch and ``total`` the whole batch's sample count (``None``: the batch is the whole step)."""

    images: torch.Tensor
    targets: torch.Tensor
    image_index: np.ndarray
    crop_index: np.ndarray
    soft: torch.Tensor | None = None
    offset: int = 0
    total: int | None = None

    def __len__(self) -> int:
        return len(self.targets)


class RandomCrops:
    """Fresh RandomResizedCrop regions (+ flips), seeded by (seed, epoch, image)."""

    stored = False

    def __init__(self, params: CropParams | None, num_crops: int, seed: int):
        self.params, self.num_crops, self.seed = params or CropParams(), int(num_crops), int(seed)

    def draw(self, epoch: int, image: int, height: int, width: int):
        coords, flips, crops = self.draw_many(epoch, [image], [(height, width)])
        return coords[0], flips[0], crops[0]

    def draw_many(self, epoch: int, images, sizes):
        """:meth:`draw` for the images of a step at once → (coords ``[m, n, 4]``, flips ``[m, n]``, crops)."""
        rngs = [np.random.default_rng([self.seed, _CROPS, epoch, int(image)]) for image in images]
        boxes, flips = sample_boxes_many(sizes, self.num_crops, self.params, rngs)
        return normalise_many(boxes, sizes), flips, np.full((len(rngs), self.num_crops), -1)

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

    def draw_many(self, epoch: int, images, sizes):
        """:meth:`draw` for the images of a step → lists of their coords, flips and crop indices."""
        drawn = [self.draw(epoch, int(image), *size) for image, size in zip(images, sizes)]
        return tuple(list(part) for part in zip(*drawn)) if drawn else ([], [], [])

    def soft_labels(self, image_index: np.ndarray, crop_index: np.ndarray) -> torch.Tensor:
        return self.labels.labels(image_index, crop_index)


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

    def step_images(self, step: int) -> int:
        """How many images step ``step`` of an epoch takes (the last one may take fewer)."""
        return min(self.batch_images, self.num_images - step * self.batch_images)

    @staticmethod
    def share_bounds(count: int, rank: int, world_size: int) -> tuple[int, int]:
        """[start, stop) of process ``rank``'s contiguous block of ``count`` images (sizes differ by one at most,
        the first blocks being the larger)."""
        size, extra = divmod(count, world_size)
        start = rank * size + min(rank, extra)
        return start, start + size + (rank < extra)

    def batch(self, epoch: int, step: int, order: np.ndarray | None = None,
              share: tuple[int, int] | None = None) -> Batch:
        """Step ``step`` of ``epoch``; with ``share`` = (rank, world size), that process's block of its images."""
        order = self.epoch_order(epoch) if order is None else order
        chosen = order[step * self.batch_images:(step + 1) * self.batch_images]
        offset = total = None
        if share is not None:
            start, stop = self.share_bounds(len(chosen), *share)
            offset, total = start * self.source.num_crops, len(chosen) * self.source.num_crops
            chosen = chosen[start:stop]
        images = [self.dataset[int(index)][0].as_subclass(torch.Tensor) for index in chosen]
        coords, flips, crops = self.source.draw_many(epoch, chosen, [image.shape[-2:] for image in images])
        if self.device.type != "cpu":
            images = self._to_device(images)
        pixels = cut_batch(images, coords, flips, self.size, self.source.interpolation)
        image_index = np.repeat(chosen, [len(k) for k in crops])
        crop_index = np.concatenate(crops)
        soft = self.source.soft_labels(image_index, crop_index) if self.source.stored else None
        targets = self.targets[torch.from_numpy(image_index)]
        batch = Batch(images=pixels, targets=targets.to(self.device), image_index=image_index, crop_index=crop_index,
                      soft=None if soft is None else soft.to(self.device))
        if share is not None:
            batch.offset, batch.total = offset, total
        return batch

    def _to_device(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """One (pinned) transfer for same-size images, else one per image; crops are then cut on the device."""
        if len({tuple(image.shape) for image in images}) == 1:
            stacked = torch.stack(images)
            stacked = stacked.pin_memory() if self.pin_memory else stacked
            return list(stacked.to(self.device, non_blocking=self.pin_memory).unbind(0))
        return [image.to(self.device) for image in images]
