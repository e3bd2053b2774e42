"""RandomResizedCrop regions as data: sampled from a seed, stored in FKD's convention, cut with transforms.v2.

A region is stored as FKD stores it: normalised ``(i/H, j/W, h/H, w/W)`` (top, left, height, width) plus a
horizontal-flip flag. Sampling follows ``torchvision.transforms.v2.RandomResizedCrop``'s algorithm (ten tries of
area × log-uniform aspect ratio, then the central-crop fallback), vectorised over crops and seeded per image so
that any image's crops can be regenerated alone.

Three cutters turn regions into teacher-sized crops: :func:`cut_crops` (one ``resized_crop`` per crop, the
reference), :func:`cut_crops_batched` (all crops of same-size images at once as two batched matrix products with
``resized_crop``'s own antialiased kernel: the same pixels up to float rounding, for small images) and
:func:`cut_crops_grid` (one ``grid_sample``, training's fast approximation for upsampled crops).
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as TF
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

FKD_SCALE = (0.08, 0.936)
CUTTERS = ("exact", "auto")
# cut_crops_batched multiplies whole images by dense weights: worth it while a crop costs at most this many
# multiply-adds (Fashion-MNIST at 28 px: 4.4e4; 64 px RGB images at 64 px: 1.6e6; 512 px photos at 224 px: 2e8)
BATCHED_CUT_MAX_MACS = 4_000_000
# resize_weights keeps a table of every box's weights for axes whose table fits in this many bytes (28 px to 32:
# 0.4 MB; 64 px to 64: 34 MB is computed per call instead)
WEIGHT_TABLE_MAX_BYTES = 16 << 20


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
    stream = rng.random((1, num_crops * _DRAWS_PER_CROP))
    boxes, flips = _boxes_from_streams(np.array([[height, width]]), num_crops, params, stream)
    return boxes[0], flips[0]


_TRIES = 10  # RandomResizedCrop's tries before its central-crop fallback
_DRAWS_PER_CROP = 2 * _TRIES + 3  # uniform doubles per crop: area scales, log ratios, two offsets, the flip


def _boxes_from_streams(sizes: np.ndarray, num_crops: int, params: CropParams, streams: np.ndarray):
    """Images' sizes ``[m, 2]`` (H, W) and their streams of uniform doubles ``[m, n·(2·tries + 3)]`` → (pixel
    boxes int64 ``[m, n, 4]``, flips bool ``[m, n]``): RandomResizedCrop's rule, elementwise, for any number of
    images. Each stream is read as calls of ``uniform(low, high, size)`` in turn would read it (numpy computes
    ``low + (high − low)·u``): n×tries target-area scales, n×tries log aspect ratios, n×2 offsets, n flip draws."""
    m, n, tries = len(streams), num_crops, _TRIES
    height, width = (np.asarray(sizes, dtype=np.int64)[:, k, None] for k in (0, 1))  # [m, 1]
    scale = params.scale[0] + (params.scale[1] - params.scale[0]) * streams[:, :n * tries].reshape(m, n, tries)
    log_low, log_high = np.log(params.ratio)
    log_ratio = log_low + (log_high - log_low) * streams[:, n * tries:2 * n * tries].reshape(m, n, tries)
    offsets = streams[:, 2 * n * tries:2 * n * tries + 2 * n].reshape(m, n, 2)
    flip_draws = streams[:, 2 * n * tries + 2 * n:]
    target_area = (height * width)[..., None] * scale
    aspect = np.exp(log_ratio)
    w = np.round(np.sqrt(target_area * aspect)).astype(np.int64).reshape(-1, tries)
    h = np.round(np.sqrt(target_area / aspect)).astype(np.int64).reshape(-1, tries)
    rows_h, rows_w = np.repeat(height, n, axis=1).reshape(-1, 1), np.repeat(width, n, axis=1).reshape(-1, 1)
    valid = (w > 0) & (w <= rows_w) & (h > 0) & (h <= rows_h)
    first = (np.arange(m * n), valid.argmax(axis=1))  # the first try that fits, per crop
    found = valid[first].reshape(m, n)
    # the central-crop fallback (h, w); ratios below the range and above it cannot both hold
    in_ratio = width / np.maximum(height, 1)
    low, high = min(params.ratio), max(params.ratio)
    fallback_h = np.where(in_ratio < low, np.round(width / low), height).astype(np.int64)
    fallback_w = np.where(in_ratio > high, np.round(height * high), width).astype(np.int64)
    h = np.where(found, h[first].reshape(m, n), fallback_h)
    w = np.where(found, w[first].reshape(m, n), fallback_w)
    i = np.where(found, np.floor(offsets[..., 0] * (height - h + 1)), (height - h) // 2).astype(np.int64)
    j = np.where(found, np.floor(offsets[..., 1] * (width - w + 1)), (width - w) // 2).astype(np.int64)
    return np.stack([i, j, h, w], axis=-1), flip_draws < params.flip_p


def sample_crops(height: int, width: int, num_crops: int, params: CropParams, seed: int, image_index: int):
    """One image's crops → (normalised coords float32 ``[n, 4]`` = (i/H, j/W, h/H, w/W), flips bool ``[n]``)."""
    boxes, flips = sample_crop_boxes(height, width, num_crops, params, crop_rng(seed, image_index))
    return normalise_boxes(boxes, height, width), flips


def sample_boxes_many(sizes, num_crops: int, params: CropParams, rngs):
    """:func:`sample_crop_boxes` for many images at once, image k drawing from ``rngs[k]`` (the same boxes as one
    call per image) → (pixel boxes int64 ``[m, n, 4]``, flips bool ``[m, n]``)."""
    sizes = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
    streams = np.zeros((len(sizes), num_crops * _DRAWS_PER_CROP))
    for row, rng in enumerate(rngs):
        streams[row] = rng.random(streams.shape[1])
    return _boxes_from_streams(sizes, num_crops, params, streams)


def normalise_many(boxes: np.ndarray, sizes) -> np.ndarray:
    """:func:`normalise_boxes` for many images: pixel boxes ``[m, n, 4]``, sizes ``[m, 2]`` → float32 coords."""
    sizes = np.asarray(sizes, dtype=np.float64).reshape(-1, 2)
    return (np.asarray(boxes, dtype=np.float64) / np.concatenate([sizes, sizes], axis=1)[:, None, :]).astype(np.float32)


def sample_crops_many(sizes, num_crops: int, params: CropParams, seed: int, indices):
    """The crops of many images at once → (coords float32 ``[m, n, 4]``, flips bool ``[m, n]``), equal to
    :func:`sample_crops` image by image (the same draws and the same elementwise arithmetic). An image of size
    (0, 0) (one without labels) gets zero coordinates and no flips."""
    sizes = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
    real = (sizes > 0).all(axis=1)
    safe = np.where(real[:, None], sizes, 1)
    boxes, flips = sample_boxes_many(safe, num_crops, params, [crop_rng(seed, index) for index in indices])
    coords = normalise_many(boxes, safe)
    coords[~real], flips[~real] = 0, False
    return coords, flips


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
    antialiasing, so use it for crops no larger than ``size`` (upsampling), as :func:`cut_batch` does. Its bicubic
    kernel (a = −0.75) is not resized_crop's antialiased one (a = −0.5), and near the box's edges it reads the
    pixels around the box where resized_crop renormalises over the box: pixels differ by ~0.007 on average.
    """
    batch, count = boxes.shape[:2]
    height, width = images.shape[-2:]
    source = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
    theta = crop_theta(boxes.reshape(-1, 4), flips.reshape(-1), height, width).to(source.device)
    grid = TF.affine_grid(theta, [batch * count, 1, size, size], align_corners=False)
    grid = grid.view(batch, count * size, size, 2)
    mode = "bicubic" if interpolation == "bicubic" else "bilinear" if interpolation == "bilinear" else "nearest"
    out = TF.grid_sample(source, grid, mode=mode, padding_mode="border", align_corners=False)
    out = out.view(batch, -1, count, size, size).transpose(1, 2).reshape(batch * count, -1, size, size)
    return out.clamp_(0, 1)


def cut_batch(images: list[torch.Tensor], coords: list[np.ndarray], flips: list[np.ndarray], size: int,
              interpolation: str) -> torch.Tensor:
    """Crops of several images → ``[sum n, C, size, size]``: the pixels :func:`cut_crops` gives (so a student
    sees the regions as the teacher saw them when the labels were made), all at once with
    :func:`cut_crops_batched` for same-size images where that is cheaper, image by image otherwise."""
    shapes = {tuple(image.shape) for image in images}
    if len(shapes) == 1 and len({len(c) for c in coords}) == 1 and batched_cut_pays(images[0].shape, size,
                                                                                    interpolation):
        height, width = images[0].shape[-2:]
        boxes = pixel_boxes(np.concatenate(coords), height, width).reshape(len(images), -1, 4)
        return cut_crops_batched(torch.stack(images), boxes, np.stack(flips), size, interpolation)
    return torch.cat([cut_crops(image, c, f, size, interpolation) for image, c, f in zip(images, coords, flips)])


def _aa_kernel(x: np.ndarray, interpolation: str) -> np.ndarray:
    x = np.abs(x)
    if interpolation == "bicubic":  # the antialiased (PIL-style) cubic, a = -0.5
        a = -0.5
        return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                        np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))
    return np.clip(1 - x, 0, None)


def resize_weights(start, length, in_size: int, out_size: int, interpolation: str = "bicubic") -> torch.Tensor:
    """Dense resampling matrices ``[N, out_size, in_size]`` (float32) that cut ``[start, start + length)`` out
    of an axis of ``in_size`` pixels and resize it to ``out_size`` as ``torch.nn.functional.interpolate(...,
    antialias=True, align_corners=False)`` does (the resize of ``resized_crop`` on tensors): per output pixel,
    the kernel (stretched by the scale when downsampling) over the source pixels of the box it reaches, weights
    normalised to sum to 1. Small axes read them from a table of every (start, length), made once per process
    (:data:`WEIGHT_TABLE_MAX_BYTES`); others compute them once per distinct (start, length) of the call."""
    if interpolation not in ("bicubic", "bilinear"):
        raise ValueError(f"resize_weights supports bicubic and bilinear, got {interpolation!r}")
    start, length = np.asarray(start, dtype=np.int64), np.asarray(length, dtype=np.int64)
    if in_size * (in_size + 1) // 2 * out_size * in_size * 4 <= WEIGHT_TABLE_MAX_BYTES:
        table, row = _weight_table(int(in_size), int(out_size), interpolation)
        if ((start < 0) | (length < 1) | (start + length > in_size)).any():
            raise ValueError(f"boxes must lie inside the axis of {in_size} pixels")
        return table[torch.from_numpy(row[start, length])]
    pairs, inverse = np.unique(np.stack([start, length], 1), axis=0, return_inverse=True)
    return torch.from_numpy(_weights(pairs, in_size, out_size, interpolation))[torch.from_numpy(inverse.reshape(-1))]


@functools.lru_cache(maxsize=8)
def _weight_table(in_size: int, out_size: int, interpolation: str) -> tuple[torch.Tensor, np.ndarray]:
    """The weights of every box on an axis → (``[P, out_size, in_size]``, row of (start, length) in it)."""
    starts, lengths = np.nonzero(np.add.outer(np.arange(in_size), np.arange(in_size + 1)) <= in_size)
    keep = lengths >= 1
    pairs = np.stack([starts[keep], lengths[keep]], 1).astype(np.int64)
    row = np.zeros((in_size, in_size + 1), dtype=np.int64)
    row[pairs[:, 0], pairs[:, 1]] = np.arange(len(pairs))
    return torch.from_numpy(_weights(pairs, in_size, out_size, interpolation)), row


def _weights(pairs: np.ndarray, in_size: int, out_size: int, interpolation: str) -> np.ndarray:
    """float32 ``[P, out_size, in_size]`` for (start, length) ``pairs`` ``[P, 2]`` (see :func:`resize_weights`)."""
    first, span = pairs[:, :1].astype(np.float64), pairs[:, 1:].astype(np.float64)
    taps = 4 if interpolation == "bicubic" else 2
    scale = span / out_size
    support = np.where(scale >= 1, taps * 0.5 * scale, taps * 0.5)
    invscale = np.where(scale >= 1, 1 / scale, 1.0)
    center = scale * (np.arange(out_size)[None] + 0.5)  # box-relative source position of each output pixel
    low = np.maximum(np.trunc(center - support + 0.5), 0)[..., None]
    high = np.minimum(np.trunc(center + support + 0.5), span)[..., None]
    source = np.arange(in_size, dtype=np.float64)[None, None] - first[:, :, None]  # box-relative source pixels
    weights = _aa_kernel((source - center[..., None] + 0.5) * invscale[..., None], interpolation)
    weights = np.where((source >= low) & (source < high), weights, 0.0)
    weights /= weights.sum(-1, keepdims=True)
    return weights.astype(np.float32)


def batched_cut_pays(image_shape, size, interpolation: str = "bicubic") -> bool:
    """Whether :func:`cut_crops_batched` is the faster way to cut crops of ``size`` from images of
    ``image_shape`` ``(C, H, W)``: its dense products cost C·S·(H·W + S·W) multiply-adds per crop, against
    ``resized_crop``'s fixed cost per call (see ``BATCHED_CUT_MAX_MACS``)."""
    if interpolation not in ("bicubic", "bilinear"):
        return False
    channels, height, width = (int(v) for v in image_shape[-3:])
    side = int(size if isinstance(size, int) else size[0])
    return channels * side * (height * width + side * width) <= BATCHED_CUT_MAX_MACS


def cut_crops_batched(images: torch.Tensor, boxes: np.ndarray, flips: np.ndarray, size,
                      interpolation: str = "bicubic", max_crops: int = 2048) -> torch.Tensor:
    """The crops :func:`cut_crops` cuts, for all regions of a batch of same-size images at once.

    ``images`` ``[B, C, H, W]`` (uint8 or float in [0, 1]), ``boxes`` ``[B, n, 4]`` pixel (i, j, h, w), ``flips``
    ``[B, n]`` → float ``[B·n, C, size, size]`` in [0, 1]. Each crop is ``Wy · image · Wxᵀ`` with the matrices of
    :func:`resize_weights` (the flip reverses Wx's rows): the same antialiased resize as ``resized_crop``, so up-
    and downsampled crops alike match :func:`cut_crops` to float rounding (|Δ| ≲ 1e-5). Dense products cost
    C·S·(H·W + S·W) per crop: for small images (:func:`batched_cut_pays`). Works on ``max_crops`` crops at a time.
    """
    side = int(size if isinstance(size, int) else size[0])
    if not isinstance(size, int) and int(size[1]) != side:
        raise ValueError(f"cut_crops_batched cuts square crops, got size {size}")
    batch, count = boxes.shape[:2]
    height, width = images.shape[-2:]
    flat = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    wy = resize_weights(flat[:, 0], flat[:, 2], height, side, interpolation)
    wx = resize_weights(flat[:, 1], flat[:, 3], width, side, interpolation)
    flipped = torch.from_numpy(np.asarray(flips, dtype=bool).reshape(-1))
    wx = torch.where(flipped[:, None, None], wx.flip(1), wx)
    source = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
    owner = torch.arange(batch, device=source.device).repeat_interleave(count)
    wy, wx = wy.to(source.device), wx.to(source.device)
    out = []
    for start in range(0, batch * count, max_crops):
        part = slice(start, start + max_crops)
        rows = torch.matmul(wy[part, None], source[owner[part]])  # [n, C, S, W]
        out.append(torch.matmul(rows, wx[part, None].transpose(-1, -2)))
    return torch.cat(out).clamp_(0, 1)


def crop_area_fraction(coords) -> np.ndarray:
    coords = np.asarray(coords, dtype=np.float64)
    return coords[..., 2] * coords[..., 3]

