"""A re-implementation of FKD's soft-label generator, as the reference label generation is compared with.

FKD (Shen & Xing, "A Fast Knowledge Distillation Framework for Visual Recognition") generates region labels
image by image: the image is opened with PIL, each of its crops is a ``RandomResizedCrop`` at the teacher's input
size plus a ``RandomHorizontalFlip`` (torchvision transforms on the PIL image, coordinates recorded), the crops
are turned into tensors and stacked, the teacher runs once on that image's crops, and one
``torch.save([coords, flip_status, soft_labels])`` file is written per image. Here the crops are the given
regions (the same ones softlab cuts) so that both do the same work; the teacher takes [0, 1] inputs and
normalises itself, as softlab's teachers do.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TVF

from softlab.data.crops import pixel_boxes


@torch.inference_mode()
def fkd_generate(dataset, teacher, regions, out, size: int, temperature: float = 1.0,
                 interpolation: str = "bicubic") -> int:
    """Label ``regions[i] = (coords, flips)`` of each image ``i`` of ``dataset`` FKD's way into folder ``out``
    (one ``<i>.tar`` file per image); returns the number of crops labelled."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mode = InterpolationMode(interpolation)
    total = 0
    for index, (coords, flips) in enumerate(regions):
        image, _ = dataset[index]
        picture = TVF.to_pil_image(image.as_subclass(torch.Tensor))  # FKD's loader yields PIL images
        crops = []
        for (i, j, h, w), flip in zip(pixel_boxes(coords, picture.height, picture.width), flips):
            crop = TVF.resized_crop(picture, int(i), int(j), int(h), int(w), [size, size], interpolation=mode)
            if flip:
                crop = TVF.hflip(crop)
            crops.append(TVF.to_tensor(crop))
        output = torch.softmax(teacher(torch.stack(crops)) / temperature, dim=1)
        torch.save([torch.from_numpy(np.asarray(coords)), torch.from_numpy(np.asarray(flips)), output],
                   out / f"{index}.tar")
        total += len(crops)
    return total
