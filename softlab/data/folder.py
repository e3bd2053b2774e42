"""Any torchvision-style dataset or an image folder as a softlab :class:`ImageDataset`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from torchvision import tv_tensors

from .base import BadImageError, ImageDataset, describe_decode_error, to_uint8_image
from .fashion_mnist import MissingDatasetError

FOLDER_LAYOUT = "<root>/<class_dir>/<image files>, one sub-folder per class"


class WrappedDataset(ImageDataset):
    """Wraps a map-style dataset returning ``(image, target)`` (PIL, ndarray or tensor images).

    Targets come from ``dataset.targets`` when present (no image is decoded for them), else from a pass.
    An image that cannot be decoded raises :class:`BadImageError` naming it: for file-backed datasets
    (``samples`` and ``root``, as torchvision's ImageFolder has) any decoding error of the file, otherwise the
    ``OSError`` family that PIL raises.
    """

    def __init__(self, dataset, name: str | None = None, classes=None, default_crops: int = 500):
        targets = getattr(dataset, "targets", None)
        if targets is None:
            targets = [int(dataset[i][1]) for i in range(len(dataset))]
        classes = list(classes or getattr(dataset, "classes", None) or [str(c) for c in sorted(set(targets))])
        super().__init__(name=name or type(dataset).__name__, classes=classes,
                         targets=np.asarray(targets, dtype=np.int64), default_crops=default_crops)
        self.dataset = dataset

    def load_image(self, index: int) -> tv_tensors.Image:
        path = self.image_path(index)
        try:
            return to_uint8_image(self.dataset[index][0])
        except Exception as error:
            if path is None and not isinstance(error, (OSError, EOFError, SyntaxError)):
                raise
            raise self._bad_image(index, path, error) from error

    def _bad_image(self, index: int, path: str | None, error: Exception) -> BadImageError:
        reason, detail = describe_decode_error(error)
        root = getattr(self.dataset, "root", None)
        if path is not None:
            where = f"{path} (image {index} of {root})"
        else:
            where = f"image {index} ({self.image_id(index)}) of {self.name}"
        return BadImageError(f"cannot decode {where}: {reason} ({detail})", index=index, path=path, reason=reason,
                             detail=detail)

    def image_path(self, index: int) -> str | None:
        """The image's file relative to the dataset's root (POSIX separators), or None when it has none."""
        samples = getattr(self.dataset, "samples", None)
        root = getattr(self.dataset, "root", None)
        if samples is None or root is None:
            return None
        return Path(samples[index][0]).relative_to(root).as_posix()

    def image_id(self, index: int) -> str:
        path = self.image_path(index)
        if path is not None:
            return str(Path(path).with_suffix(""))
        return super().image_id(index)


class ImageFolderDataset(WrappedDataset):
    """``<root>/<class_dir>/<image>`` read with torchvision's ImageFolder (images decoded on access)."""

    def __init__(self, root, default_crops: int = 500):
        from torchvision.datasets import ImageFolder

        root = Path(root).expanduser()
        if not root.exists():
            raise MissingDatasetError(f"image folder {root} does not exist; expected {FOLDER_LAYOUT}")
        if not root.is_dir():
            raise ValueError(f"{root} is a file, not an image folder; expected {FOLDER_LAYOUT}")
        try:
            folder = ImageFolder(str(root))
        except FileNotFoundError as error:
            if not any(child.is_dir() for child in root.iterdir()):
                problem = "has no class sub-folders"
            else:
                problem = f"has no image files in its class sub-folders ({error})"
            raise FileNotFoundError(f"image folder {root} {problem}; expected {FOLDER_LAYOUT} "
                                    f"(e.g. {root / 'cat' / '0001.jpg'})") from error
        super().__init__(folder, name=f"folder:{root.resolve()}", default_crops=default_crops)
        self.root = root
