"""Fashion-MNIST from the Debian package, a given folder, or torchvision's downloader."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
from torchvision import tv_tensors

from .base import ImageDataset

DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


class MissingDatasetError(FileNotFoundError):
    """A data set is not on this machine; the message says how to get it."""


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find(root: Path, stem: str) -> Path | None:
    for folder in (root, root / "FashionMNIST" / "raw", root / "raw"):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def _candidate_roots(root) -> list[Path]:
    if root is not None:
        return [Path(root)]
    roots = [Path(os.environ["SOFTLAB_FASHION_MNIST"])] if os.environ.get("SOFTLAB_FASHION_MNIST") else []
    return roots + [DEBIAN_ROOT]


class FashionMNIST(ImageDataset):
    """Fashion-MNIST (60k train / 10k test, 28×28 grey, 10 classes), held in memory as uint8."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, split: str, source: str):
        super().__init__(name=f"fashion-mnist:{split}", classes=list(CLASSES), targets=targets.astype(np.int64),
                         default_crops=32, extra={"source": source})
        self.images = torch.from_numpy(np.array(images, copy=True))

    def load_image(self, index: int) -> tv_tensors.Image:
        return tv_tensors.Image(self.images[index][None])


def fashion_mnist(split: str = "train", root=None, download: bool = False) -> FashionMNIST:
    """Load Fashion-MNIST ``split`` ("train" or "test").

    Looks in ``root`` (IDX files, gzipped or not, directly or under ``FashionMNIST/raw``), else in
    ``$SOFTLAB_FASHION_MNIST``, else in the Debian package's folder. With ``download=True`` (online users)
    torchvision's downloader fetches it into ``root`` (default ``~/.cache/softlab/data``).
    """
    if split not in _FILES:
        raise ValueError(f"Fashion-MNIST split must be 'train' or 'test', not {split!r}")
    image_stem, label_stem = _FILES[split]
    for candidate in _candidate_roots(root):
        images, labels = _find(candidate, image_stem), _find(candidate, label_stem)
        if images and labels:
            return FashionMNIST(_read_idx(images), _read_idx(labels), split, str(images.parent))
    if download:
        from torchvision.datasets import FashionMNIST as TorchvisionFashionMNIST

        target = Path(root) if root else Path.home() / ".cache" / "softlab" / "data"
        TorchvisionFashionMNIST(str(target), train=split == "train", download=True)
        return fashion_mnist(split, root=target)
    looked = ", ".join(str(r) for r in _candidate_roots(root))
    raise MissingDatasetError(
        f"Fashion-MNIST ({split}) not found (looked in: {looked}). Get it one of these ways: "
        "`apt-get install dataset-fashion-mnist` (Debian), pass root= a folder holding the IDX files, "
        "set SOFTLAB_FASHION_MNIST, or use download=True / --download when online."
    )
