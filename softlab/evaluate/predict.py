"""Logits of a classifier (a Student or a Teacher: [0, 1] images at ``input_size``) over a data set."""
from __future__ import annotations

import contextlib

import numpy as np
import torch
from tqdm.auto import tqdm

from ..teachers.base import resize_images, to_float_images


class EvalImages:
    """The labelled images of a data set, decoded once and resized to ``size`` (H, W), held as uint8.

    ``interpolation`` is used when an image's size differs (antialiased); Fashion-MNIST at 28×28 is kept as is.
    ``transform`` (e.g. a teacher's :func:`~softlab.teachers.base.eval_transform`: resize to size / crop_pct,
    centre crop) replaces that resize: a callable from a uint8 ``[C, H, W]`` image to floats in [0, 1] at ``size``.
    :meth:`for_classifier` picks the classifier's own evaluation view.
    """

    def __init__(self, dataset, size, interpolation: str = "bicubic", transform=None):
        self.name = getattr(dataset, "name", type(dataset).__name__)
        self.class_names = list(getattr(dataset, "classes", []))
        indices = [i for i, t in enumerate(np.asarray(dataset.targets)) if t >= 0]
        if not indices:
            raise ValueError(f"{self.name} has no labelled images to evaluate on")
        size = [int(size[0]), int(size[1])]
        images = []
        for index in indices:
            image = dataset[index][0].as_subclass(torch.Tensor)
            if transform is not None:
                image = (transform(image) * 255).round_().to(torch.uint8)
                if list(image.shape[-2:]) != size:
                    raise ValueError(f"the evaluation transform gives {list(image.shape[-2:])} images, not {size}")
            elif list(image.shape[-2:]) != size:
                resized = resize_images(to_float_images(image[None]), size, interpolation)[0]
                image = (resized * 255).round_().to(torch.uint8)
            images.append(image)
        self.images = torch.stack(images)
        self.targets = torch.as_tensor(np.asarray(dataset.targets)[indices], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.targets)

    @classmethod
    def for_classifier(cls, dataset, model) -> "EvalImages":
        """The images as ``model`` is evaluated on them: a teacher through its own evaluation transform (timm's
        ``crop_pct`` centre crop for ImageNet models), anything else resized to its input size."""
        from ..teachers.base import Teacher, eval_transform

        interpolation = getattr(model, "interpolation", "bicubic")
        transform = eval_transform(model) if isinstance(model, Teacher) else None
        return cls(dataset, model.input_size[1:], interpolation, transform=transform)


@torch.no_grad()
def predict(model, images: EvalImages, batch_size: int = 1000, device=None, amp: bool = True,
            progress: bool = False) -> torch.Tensor:
    """float32 logits ``[N, C]`` on the CPU (eval mode for the call; bf16 autocast on CUDA when ``amp``)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if amp and device.type == "cuda"
                else contextlib.nullcontext())
    out = []
    try:
        for start in tqdm(range(0, len(images), batch_size), desc=f"evaluating on {images.name}", unit="batch",
                          disable=not progress, leave=False):
            batch = images.images[start:start + batch_size].to(device, non_blocking=True).float().div_(255)
            with autocast:
                out.append(model(batch).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)
