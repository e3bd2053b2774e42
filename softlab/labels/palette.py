"""Per-image class palettes: the compact layout's class indices for more than 256 classes.

The crops of one image keep few distinct classes among their top-k (29-100 for EfficientNet-Lite0's top-5 over
500 crops of a photo, out of 1000 ImageNet classes), so each image's sorted distinct classes form its palette and
each stored class index becomes a one-byte code into it: k bytes per crop instead of 2k, plus 2 bytes per palette
entry per image. Reading stays random access: ``class = palette[image, code]``.

An image with more than 256 distinct classes is "wide": its codes are the low bytes of its classes and its palette
is the identity, and the high bytes (``class >> 8``) are stored beside, so ``class = palette[image, code] + 256 ·
high``. Lossless in both cases.

One chunk's palettes are one int16 array (``palettes/<chunk>.npy`` in a store), for its m images in order::

    [size of each image's palette: m values, 0 for a wide image]
    [the palettes of the other images, concatenated, each sorted ascending]
    [the high bytes of each wide image, n·k values each]
"""
from __future__ import annotations

import numpy as np

PALETTE_SIZE = 256  # codes are uint8
MAX_CLASSES = int(np.iinfo(np.int16).max)  # palettes hold int16 classes


def encode_chunk(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class indices ``[m, n, k]`` → (codes uint8 ``[m, n, k]``, the chunk's int16 palette array)."""
    indices = np.asarray(indices)
    if indices.ndim != 3:
        raise ValueError(f"class indices must be [images, crops, k], got shape {indices.shape}")
    if indices.size and (indices.min() < 0 or indices.max() > MAX_CLASSES):
        raise ValueError(f"class indices must lie in [0, {MAX_CLASSES}] for palettes, got "
                         f"[{indices.min()}, {indices.max()}]")
    codes = np.empty(indices.shape, dtype=np.uint8)
    sizes, palettes, highs = [], [], []
    for image, rows in enumerate(indices):
        classes, inverse = np.unique(rows, return_inverse=True)
        if len(classes) <= PALETTE_SIZE:
            sizes.append(len(classes))
            palettes.append(classes)
            codes[image] = inverse.reshape(rows.shape)
        else:
            sizes.append(0)
            codes[image] = rows & 0xFF
            highs.append((rows >> 8).ravel())
    parts = [np.asarray(sizes), *palettes, *highs]
    return codes, np.concatenate(parts).astype(np.int16)


def palette_rows(array: np.ndarray, images: int, crops: int, k: int) -> tuple[np.ndarray, dict]:
    """A chunk's palette array → (palettes int16 ``[m, 256]``, {image in chunk: high bytes uint8 ``[n, k]``}).

    Raises ValueError if the array cannot be a chunk's palettes of that shape."""
    array = np.asarray(array)
    if array.ndim != 1 or array.dtype != np.int16 or len(array) < images:
        raise ValueError(f"expected a 1-D int16 array of at least {images} values, got {array.dtype} {array.shape}")
    sizes = array[:images].astype(np.int64)
    if sizes.min(initial=0) < 0 or sizes.max(initial=0) > PALETTE_SIZE:
        raise ValueError(f"palette sizes must lie in [0, {PALETTE_SIZE}], got [{sizes.min()}, {sizes.max()}]")
    wide = np.flatnonzero(sizes == 0)
    expected = images + int(sizes.sum()) + len(wide) * crops * k
    if len(array) != expected:
        raise ValueError(f"{len(array)} values where the palette sizes imply {expected}")
    rows = np.zeros((images, PALETTE_SIZE), dtype=np.int16)
    start = images
    for image, size in enumerate(sizes):
        rows[image, :size] = array[start:start + size]
        start += size
    highs = {}
    for image in wide:
        rows[image] = np.arange(PALETTE_SIZE)
        high = array[start:start + crops * k]
        if high.min() < 0 or high.max() > 0xFF:
            raise ValueError(f"high bytes of image {image} outside [0, 255]")
        highs[int(image)] = high.astype(np.uint8).reshape(crops, k)
        start += crops * k
    return rows, highs


def decode_chunk(codes: np.ndarray, array: np.ndarray) -> np.ndarray:
    """Codes uint8 ``[m, n, k]`` and their chunk's palette array → class indices int16 ``[m, n, k]``."""
    images, crops, k = codes.shape
    return decode_codes(codes, *palette_rows(array, images, crops, k))


def decode_codes(codes: np.ndarray, rows: np.ndarray, highs: dict) -> np.ndarray:
    """Codes uint8 ``[m, n, k]`` → class indices int16, from :func:`palette_rows`' output for their chunk."""
    indices = np.take_along_axis(rows, codes.reshape(len(codes), -1).astype(np.intp), axis=1).reshape(codes.shape)
    for image, high in highs.items():
        indices[image] += high.astype(np.int16) << 8
    return indices
