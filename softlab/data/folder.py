"""Any torchvision-style dataset or an image folder as a softlab :class:`ImageDataset`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from torchvision import tv_tensors

from .base import ImageDataset, to_uint8_image


class WrappedDataset(ImageDataset):
    """Wraps a map-style dataset returning ``(image, target)`` (PIL, ndarray or tensor images).

    Targets come from ``dataset.targets`` when present (no image is decoded for them), else from a pass.
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
        return to_uint8_image(self.dataset[index][0])

    def image_id(self, index: int) -> str:
        samples = getattr(self.dataset, "samples", None)
        root = getattr(self.dataset, "root", None)
        if samples is not None and root is not None:
            return str(Path(samples[index][0]).relative_to(root).with_suffix(""))
        return super().image_id(index)


class ImageFolderDataset(WrappedDataset):
    """``<root>/<class_dir>/<image>`` read with torchvision's ImageFolder (images decoded on access)."""

    def __init__(self, root, default_crops: int = 500):
        from torchvision.datasets import ImageFolder

        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {root} does not exist; expected <root>/<class_dir>/<image files>")
        folder = ImageFolder(str(root))
        super().__init__(folder, name=f"folder:{root.resolve()}", default_crops=default_crops)
