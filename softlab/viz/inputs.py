"""Input normalisation shared by the figure builders: images, calibrations and one image's crops."""
from __future__ import annotations

import numpy as np
import torch

from ..calibrate import Calibration, CalibratedStore, categorise, thresholds_per_image
from ..labels.store import LabelStore


def rgb_array(image) -> np.ndarray:
    """A ``[C, H, W]`` tensor (uint8, or float in [0, 1]) or an ``[H, W(, C)]`` array → uint8 ``[H, W, 3]``."""
    if isinstance(image, torch.Tensor):
        array = image.detach().cpu().as_subclass(torch.Tensor)
        if array.is_floating_point():
            array = (array.clamp(0, 1) * 255).round().to(torch.uint8)
        array = array.numpy()
        array = array[0] if array.ndim == 3 and array.shape[0] == 1 else array
        array = array if array.ndim == 2 else np.moveaxis(array, 0, -1)
    else:
        array = np.asarray(image)
        if array.dtype != np.uint8:
            array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[2] == 1:
        return np.ascontiguousarray(np.broadcast_to(array, (*array.shape[:2], 3)))
    return np.ascontiguousarray(array[..., :3])


def calibration_of(calibration) -> Calibration:
    """A :class:`Calibration` from a Calibration, a CalibratedStore or None (the default setting)."""
    if isinstance(calibration, CalibratedStore):
        return calibration.calibration
    return calibration if calibration is not None else Calibration()


def check_has_labels(store: LabelStore, index: int) -> None:
    """Raise a clear error for an image the store lists as skipped (undecodable at generation: no labels)."""
    for entry in getattr(store, "skipped", None) or []:
        if int(entry["index"]) == index:
            raise ValueError(f"image {index} ({entry.get('path') or entry.get('id')}) was skipped when the labels "
                             f"were generated ({entry.get('reason', 'undecodable')}): it has no labels to show")


def image_categories(store: LabelStore, index: int, calibration) -> np.ndarray:
    """int8 ``[n]``: FerKD category of each crop of image ``index``.

    Computed for that image alone (quantile thresholds are per image, so this equals the store-wide result).
    """
    check_has_labels(store, index)
    return categorise(image_y_s(store, index)[None], calibration_of(calibration))[0]


def image_y_s(store: LabelStore, index: int) -> np.ndarray:
    """float32 ``[n]``: y_s of each crop of image ``index``."""
    return np.asarray(store.y_s[index], dtype=np.float32)


def image_thresholds(store: LabelStore, index: int, calibration) -> np.ndarray:
    """(T_L, T_M, T_T) of image ``index`` as probabilities (quantile levels resolved on its y_s)."""
    return np.asarray(thresholds_per_image(image_y_s(store, index)[None], calibration_of(calibration))[0])


def store_categories(store: LabelStore, calibration, images=None) -> np.ndarray:
    """int8 ``[len(images), n]`` categories of the chosen images (all by default)."""
    y_s = np.asarray(store.y_s if images is None else store.y_s[images], dtype=np.float32)
    return categorise(y_s, calibration_of(calibration))


def image_size(image) -> tuple[int, int]:
    """(height, width) of a ``[C, H, W]`` tensor or an ``[H, W(, C)]`` array."""
    if isinstance(image, torch.Tensor):
        return int(image.shape[-2]), int(image.shape[-1])
    return int(np.shape(image)[0]), int(np.shape(image)[1])
