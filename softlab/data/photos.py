"""Real photos shipped inside installed packages (foolbox, scikit-image, scikit-learn); read in place, never copied."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
from torchvision import tv_tensors
from PIL import Image

from .base import ImageDataset, to_uint8_image
from .fashion_mnist import MissingDatasetError

_FOOLBOX_PATTERN = re.compile(r"imagenet_(\d+)_(\d+)\.(jpg|png)$")
# Photos without a published ImageNet label: usable for viewing and generation (y_s is then undefined).
_SKIMAGE_PHOTOS = ["chelsea", "coffee", "astronaut", "rocket", "stereo_motorcycle"]
_SKLEARN_PHOTOS = ["china.jpg", "flower.jpg"]


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class descriptions shipped with timm (offline)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(info.num_classes())]


def foolbox_data_dir() -> Path:
    spec = importlib.util.find_spec("foolbox")
    if spec is None or spec.origin is None:
        raise MissingDatasetError("the photo pack needs foolbox's bundled images: `pip install foolbox==3.3.4`")
    return Path(spec.origin).parent / "data"


class PhotoPack(ImageDataset):
    """ImageNet-labelled photos from foolbox (20) and, with ``include_unlabelled``, scikit-image/-learn photos."""

    def __init__(self, include_unlabelled: bool = False):
        entries = self._foolbox_entries()
        if include_unlabelled:
            entries += [(f"skimage/{name}", -1, ("skimage", name)) for name in _SKIMAGE_PHOTOS]
            entries += [(f"sklearn/{name}", -1, ("sklearn", name)) for name in _SKLEARN_PHOTOS]
        super().__init__(name="photos:all" if include_unlabelled else "photos", classes=imagenet_class_names(),
                         targets=np.array([target for _, target, _ in entries], dtype=np.int64), default_crops=500)
        self.ids = [image_id for image_id, _, _ in entries]
        self.sources = [source for _, _, source in entries]

    @staticmethod
    def _foolbox_entries() -> list:
        folder = foolbox_data_dir()
        entries = []
        for path in sorted(folder.iterdir()):
            match = _FOOLBOX_PATTERN.match(path.name)
            if match:
                entries.append((f"foolbox/{path.name}", int(match.group(2)), ("file", str(path))))
        if not entries:
            raise MissingDatasetError(f"no imagenet_XX_<class>.jpg photos in {folder}; reinstall foolbox==3.3.4")
        return entries

    def load_image(self, index: int) -> tv_tensors.Image:
        kind, what = self.sources[index]
        if kind == "file":
            with Image.open(what) as photo:
                return to_uint8_image(photo.convert("RGB"))
        if kind == "skimage":
            import skimage.data

            image = getattr(skimage.data, what)()
            image = image[0] if isinstance(image, tuple) else image  # stereo_motorcycle: (left, right, disparity)
            return to_uint8_image(image)
        from sklearn.datasets import load_sample_image

        return to_uint8_image(load_sample_image(what))

    def image_id(self, index: int) -> str:
        return self.ids[index]
