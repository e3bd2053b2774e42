"""Data sources: Fashion-MNIST, the real-photo pack, image folders and any torchvision-style dataset."""
from __future__ import annotations

import os
from pathlib import Path

from .base import BadImageError, ImageDataset, SubsetDataset, to_uint8_image
from .fashion_mnist import CLASSES as FASHION_MNIST_CLASSES, MissingDatasetError, fashion_mnist
from .folder import FOLDER_LAYOUT, ImageFolderDataset, WrappedDataset
from .photos import PhotoPack, imagenet_class_names

DATASETS = ("fashion-mnist", "fashion-mnist:test", "photos", "photos:all")


def load_dataset(spec, root=None, download: bool = False, limit: int | None = None) -> ImageDataset:
    """Resolve a dataset from a name, a folder path, or a torchvision-style dataset object.

    ``"fashion-mnist"`` / ``"fashion-mnist:test"``, ``"photos"`` (foolbox's 20 labelled ImageNet photos),
    ``"photos:all"`` (plus unlabelled scikit-image/-learn photos), a path to an ImageFolder, or any object with
    ``__getitem__`` → ``(image, target)``. ``limit`` keeps the first ``limit`` images.
    """
    dataset = _resolve(spec, root, download)
    if limit is not None:
        if limit <= 0:
            raise ValueError(f"limit must be positive, got {limit}")
        dataset = dataset.subset(range(min(limit, len(dataset))))
    return dataset


def _resolve(spec, root, download) -> ImageDataset:
    if isinstance(spec, ImageDataset):
        return spec
    if not isinstance(spec, (str, Path)):
        return WrappedDataset(spec)
    text = str(spec)
    if text in ("fashion-mnist", "fashion-mnist:train"):
        return fashion_mnist("train", root=root, download=download)
    if text == "fashion-mnist:test":
        return fashion_mnist("test", root=root, download=download)
    if text in ("photos", "photos:all"):
        return PhotoPack(include_unlabelled=text == "photos:all")
    path = Path(text).expanduser()
    if path.is_dir():
        return ImageFolderDataset(path)
    if _looks_like_path(text):
        if path.exists():
            raise ValueError(f"data path {text} is a file, not an image folder ({FOLDER_LAYOUT})")
        raise MissingDatasetError(f"data path {text} does not exist; give an image folder ({FOLDER_LAYOUT}) "
                                  f"or one of {', '.join(DATASETS)}")
    raise ValueError(f"unknown dataset {text!r}: use one of {', '.join(DATASETS)} or a path to an image folder "
                     "(<root>/<class_dir>/<images>)")


def _looks_like_path(text: str) -> bool:
    separators = {os.sep, "/"} | ({os.altsep} if os.altsep else set())
    return any(sep in text for sep in separators) or text.startswith((".", "~"))


__all__ = ["BadImageError", "ImageDataset", "SubsetDataset", "WrappedDataset", "ImageFolderDataset", "PhotoPack",
           "fashion_mnist", "load_dataset", "imagenet_class_names", "MissingDatasetError", "FASHION_MNIST_CLASSES",
           "to_uint8_image", "DATASETS"]
