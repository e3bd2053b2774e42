"""Store-wide FerKD category counts for any calibration, fast enough to follow a slider.

:class:`CategoryCounter` sorts every image's y_s once. A count then needs no per-crop category array: with
thresholds (T_L, T_M, T_T) per image, ``#{y < T_L}``, ``#{y < T_M}`` and ``#{y <= T_T}`` per image give the four
categories by differences, and per-image quantile thresholds are read off the sorted rows by the same linear
interpolation ``numpy.quantile`` uses — so the result equals :func:`~softlab.calibrate.categorise` exactly, in a
few milliseconds for 60k images × 32 crops instead of tens.
"""
from __future__ import annotations

import numpy as np

from .ferkd import (CATEGORIES, Calibration, HARD, IMPORTANT, check_labelled, skipped_mask,
                    sorted_row_quantiles)


class CategoryCounter:
    """Counts of FerKD categories per image, per ground-truth class and overall, for any :class:`Calibration`.

    ``CategoryCounter(store.y_s, store.targets, store.num_classes)``, or :meth:`for_store`; images with NaN y_s
    (no label) are an error, as in :func:`~softlab.calibrate.categorise`, except those marked in ``skipped``
    (bool ``[N]``: images left without labels at generation), which keep their row, with zero crops in every
    category, and are counted in ``skipped_images`` only.
    """

    def __init__(self, y_s, targets, num_classes: int, skipped=None):
        y_s = np.asarray(y_s, dtype=np.float32)
        self.skipped = None if skipped is None or not np.any(skipped) else np.asarray(skipped, dtype=bool)
        check_labelled(y_s, self.skipped)
        if self.skipped is not None:
            y_s = y_s.copy()
            y_s[self.skipped] = 0  # any number: their counts are zeroed
        self.sorted = np.sort(y_s, axis=1)
        self.targets = np.asarray(targets, dtype=np.int64)
        self.num_classes = int(num_classes)

    @classmethod
    def for_store(cls, store) -> "CategoryCounter":
        return cls(store.y_s, store.targets, store.num_classes, skipped_mask(store))

    @property
    def num_images(self) -> int:
        return self.sorted.shape[0]

    def thresholds(self, calibration: Calibration) -> np.ndarray:
        """float32 ``[N, 3]`` or ``[1, 3]`` (absolute mode): the (T_L, T_M, T_T) each image is cut at."""
        levels = [calibration.t_low, calibration.t_mid, calibration.t_top]
        if calibration.mode == "absolute":
            return np.asarray([levels], dtype=np.float32)
        return sorted_row_quantiles(self.sorted, levels).astype(np.float32)

    def image_counts(self, calibration: Calibration) -> np.ndarray:
        """int64 ``[N, 4]``: crops of each image per category (CATEGORIES order); zeros for skipped images."""
        t = self.thresholds(calibration)
        below_low = (self.sorted < t[:, 0:1]).sum(axis=1)
        below_mid = (self.sorted < t[:, 1:2]).sum(axis=1)
        up_to_top = (self.sorted <= t[:, 2:3]).sum(axis=1)
        total = self.sorted.shape[1]
        counts = np.stack([below_low, below_mid - below_low, up_to_top - below_mid, total - up_to_top], axis=1)
        if self.skipped is not None:
            counts[self.skipped] = 0
        return counts

    def counts(self, calibration: Calibration) -> dict:
        """``per_image`` [N, 4], ``per_class`` [C, 4], ``overall`` [4], ``images_without_kept_crops`` and
        ``skipped_images`` (the images without labels, in no other count)."""
        per_image = self.image_counts(calibration)
        per_class = np.stack([np.bincount(self.targets, weights=per_image[:, k], minlength=self.num_classes)
                              for k in range(len(CATEGORIES))], axis=1).round().astype(np.int64)
        kept = per_image[:, HARD] + per_image[:, IMPORTANT]
        skipped = np.zeros(len(kept), dtype=bool) if self.skipped is None else self.skipped
        return {"per_image": per_image, "per_class": per_class, "overall": per_image.sum(axis=0),
                "images_without_kept_crops": int(((kept == 0) & ~skipped).sum()), "skipped_images": int(skipped.sum())}
