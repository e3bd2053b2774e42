"""Pure data behind the label figures: category counts, histograms, top-k labels and non-GT mass."""
from __future__ import annotations

import numpy as np
import torch

from ..calibrate import CATEGORIES, softened_hard_labels
from ..labels.store import LabelStore
from .inputs import calibration_of, image_categories


def category_counts(categories) -> dict:
    """Number of crops in each category: ``{name: count}`` in CATEGORIES order."""
    counts = np.bincount(np.asarray(categories, dtype=np.int64).ravel(), minlength=len(CATEGORIES))
    return dict(zip(CATEGORIES, counts[:len(CATEGORIES)].tolist()))


def histogram_data(values, categories=None, bins: int = 50, value_range=(0.0, 1.0)) -> dict:
    """Histogram of ``values``, split by category when ``categories`` is given.

    Returns ``edges`` ``[bins + 1]``, ``centres`` and ``widths`` ``[bins]``, ``counts`` int ``[4, bins]`` (one row
    per category; a single row without categories) and ``total`` ``[bins]`` (equal to ``np.histogram``).
    NaN values are left out.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    edges = np.histogram_bin_edges(values[~np.isnan(values)], bins=bins, range=value_range)
    if categories is None:
        counts = np.histogram(values, edges)[0][None]
    else:
        categories = np.asarray(categories).ravel()
        counts = np.stack([np.histogram(values[categories == k], edges)[0] for k in range(len(CATEGORIES))])
    return {"edges": edges, "centres": (edges[:-1] + edges[1:]) / 2, "widths": np.diff(edges),
            "counts": counts, "total": counts.sum(axis=0)}


def top_classes(store: LabelStore, index: int, crops, count: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """The ``count`` most probable stored classes of some crops → (class indices ``[m, count]``, probabilities)."""
    crops = np.asarray(crops, dtype=np.int64)
    probs = np.asarray(store.topk_prob[index][crops], dtype=np.float32)
    if store.has_indices:
        classes = np.asarray(store.topk_idx[index][crops], dtype=np.int64)
    else:
        classes = np.broadcast_to(np.arange(probs.shape[-1]), probs.shape)
    order = np.argsort(-probs, axis=-1, kind="stable")[:, :count]
    return np.take_along_axis(classes, order, -1), np.take_along_axis(probs, order, -1)


def topk_label_data(store: LabelStore, index: int, crop: int, calibration=None, k: int = 10) -> dict:
    """One crop's raw teacher label beside its calibrated label, on its ``k`` most probable classes (+ GT).

    ``k`` is capped at the number of classes the store keeps per crop (the rest share one even value).
    Returns ``classes`` (indices), ``names``, ``raw`` and ``calibrated`` (dense label values on those classes;
    ``calibrated`` is None when the calibration discards the crop), ``category`` (name), ``y_s``, ``target``.
    """
    raw = store.labels([index], [crop])[0].numpy()
    target = int(store.targets[index])
    classes = np.argsort(-raw, kind="stable")[:min(k, store.label_type.stored_k(store.num_classes))]
    if target >= 0 and target not in classes:
        classes = np.append(classes, target)
    category = CATEGORIES[int(image_categories(store, index, calibration)[crop])]
    calibrated = calibrated_label(store, index, crop, category, calibration_of(calibration).epsilon)
    return {"classes": classes, "names": [store.class_names[c] for c in classes], "raw": raw[classes],
            "calibrated": None if calibrated is None else calibrated[classes], "category": category,
            "y_s": float(store.y_s[index, crop]), "target": target}


def calibrated_label(store: LabelStore, index: int, crop: int, category: str, epsilon: float) -> np.ndarray | None:
    """The dense label FerKD trains one crop on (None for a discarded crop), without categorising the store."""
    if category == "hard":
        target = torch.tensor([int(store.targets[index])])
        return softened_hard_labels(target, store.num_classes, epsilon)[0].numpy()
    if category == "important":
        return store.labels([index], [crop])[0].numpy()
    return None


def non_target_mass(store: LabelStore, images=None, keep=None) -> dict:
    """Stored teacher probability on classes other than the ground truth, summed per ground-truth class.

    Only the stored classes count (the top-k of ``marginal_*`` types, every class of ``full``): the evenly spread
    remainder says nothing about which classes carry the mass. ``images`` selects images (all by default), ``keep``
    (bool ``[len(images), n]``) selects crops. Returns ``rows`` (ground-truth classes present), ``matrix``
    float64 ``[len(rows), C]`` (sums) and ``crops`` ``[len(rows)]`` (crops counted per row).
    """
    images = np.arange(store.num_images) if images is None else np.asarray(images, dtype=np.int64)
    probs = np.asarray(store.topk_prob[images], dtype=np.float64)
    if store.has_indices:
        classes = np.asarray(store.topk_idx[images], dtype=np.int64)
    else:
        classes = np.broadcast_to(np.arange(probs.shape[-1]), probs.shape)
    targets = np.asarray(store.targets, dtype=np.int64)[images]
    keep = np.ones(probs.shape[:2], dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
    rows, row_of_image = np.unique(targets, return_inverse=True)
    weight = probs * (classes != targets[:, None, None]) * keep[..., None]
    flat = (row_of_image[:, None, None] * store.num_classes + classes).ravel()
    matrix = np.bincount(flat, weight.ravel(), minlength=len(rows) * store.num_classes)
    crops = np.bincount(row_of_image, keep.sum(axis=1), minlength=len(rows))
    return {"rows": rows, "matrix": matrix.reshape(len(rows), store.num_classes), "crops": crops}
