"""The dataset interface every stage of softlab reads images through."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F


class BadImageError(ValueError):
    """One image of a data set cannot be decoded (not an image, truncated, missing, corrupt).

    The message names the image (its file relative to the folder, where it has one, and its index) and the cause.
    ``index``, ``path`` (relative file name or None), ``reason`` (short: "not an image", "truncated", …) and
    ``detail`` (the decoder's own message) are kept as attributes.
    """

    def __init__(self, message: str, index: int | None = None, path: str | None = None, reason: str = "unreadable",
                 detail: str = ""):
        super().__init__(message)
        self.index, self.path, self.reason, self.detail = index, path, reason, detail

    def __reduce__(self):
        return type(self), (str(self), self.index, self.path, self.reason, self.detail)


def describe_decode_error(error: BaseException) -> tuple[str, str]:
    """(short reason, detail) for an exception raised while decoding one image file."""
    from PIL import Image, UnidentifiedImageError

    detail = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
    if isinstance(error, UnidentifiedImageError):
        return "not an image", "PIL cannot identify its format"
    if isinstance(error, FileNotFoundError):
        return "missing", "the file was removed after the folder was listed"
    if isinstance(error, Image.DecompressionBombError):
        return "too large", detail
    if isinstance(error, (OSError, EOFError)) and ("truncated" in detail or "broken data stream" in detail
                                                   or isinstance(error, EOFError)):
        return "truncated", detail
    return "corrupt", f"{type(error).__name__}: {detail}"


@dataclass
class ImageDataset:
    """Images as uint8 ``tv_tensors.Image`` ``[C, H, W]`` with integer targets (``-1`` = no label).

    Subclasses implement :meth:`load_image`. ``default_crops`` is the number of region crops per image that
    label generation uses unless told otherwise.
    """

    name: str
    classes: list[str]
    targets: np.ndarray
    default_crops: int = 500
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"image index {index} out of range for {self.name} with {len(self)} images")
        index = int(index) % len(self)
        return self.load_image(index), int(self.targets[index])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def load_image(self, index: int) -> tv_tensors.Image:
        raise NotImplementedError

    def image_id(self, index: int) -> str:
        """A stable name for one image (a relative path for folders), used by FKD import/export."""
        return f"{index:08d}"

    def fingerprint(self, samples: int = 32) -> str:
        """sha256 over name, size, classes, all targets and the pixels of up to ``samples`` evenly spaced images.

        A sampled image that cannot be decoded (:class:`BadImageError`) enters as a fixed marker, so the
        fingerprint exists for any folder; the error itself surfaces where the image is used.
        """
        digest = hashlib.sha256()
        digest.update(f"{self.name}|{len(self)}|{'|'.join(self.classes)}".encode())
        digest.update(np.asarray(self.targets, dtype=np.int64).tobytes())
        if len(self):
            for index in np.unique(np.linspace(0, len(self) - 1, num=min(samples, len(self))).astype(int)):
                try:
                    pixels = self.load_image(int(index)).numpy().tobytes()
                except BadImageError:
                    pixels = b"<undecodable image>"
                digest.update(pixels)
        return digest.hexdigest()

    def subset(self, indices) -> "SubsetDataset":
        return SubsetDataset(self, np.asarray(indices, dtype=np.int64))


class SubsetDataset(ImageDataset):
    """A view on some images of another dataset (keeps its classes)."""

    def __init__(self, parent: ImageDataset, indices: np.ndarray):
        if len(indices) and (indices.min() < 0 or indices.max() >= len(parent)):
            raise IndexError(f"subset indices must lie in [0, {len(parent)}) for {parent.name}")
        super().__init__(
            name=f"{parent.name}[{len(indices)} of {len(parent)}]",
            classes=parent.classes,
            targets=np.asarray(parent.targets)[indices],
            default_crops=parent.default_crops,
        )
        self.parent, self.indices = parent, indices

    def load_image(self, index: int) -> tv_tensors.Image:
        return self.parent.load_image(int(self.indices[index]))

    def image_id(self, index: int) -> str:
        return self.parent.image_id(int(self.indices[index]))

    def fingerprint(self, samples: int = 32) -> str:
        digest = hashlib.sha256(self.parent.fingerprint(samples).encode())
        digest.update(self.indices.tobytes())
        return digest.hexdigest()


def to_uint8_image(image) -> tv_tensors.Image:
    """PIL image, ndarray (HW or HWC) or tensor (CHW) → uint8 ``tv_tensors.Image``."""
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.array(image, copy=True))
        image = image[None] if image.ndim == 2 else image.permute(2, 0, 1)
    image = F.to_image(image)
    if image.dtype != torch.uint8:
        image = F.to_dtype(image, torch.uint8, scale=True)
    return tv_tensors.Image(image)
