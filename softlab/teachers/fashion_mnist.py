"""The Fashion-MNIST teacher, trained in-project in a few CPU minutes and cached.

The network is timm's ``resnet10t`` (deep-tiered stem, one BasicBlock per stage, average-pool shortcuts) slimmed
to widths 16/32/64/128 and without the stem max-pool, so 1×28×28 inputs keep 14×14 features in the first stage.
Half of each batch is random-resized crops (scale 0.25–1), all of it randomly flipped, because label generation
asks the teacher about random crops, not only whole images.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .base import Teacher, TeacherUnavailableError, evaluate_classifier, load_checkpoint, save_checkpoint
from .registry import register_teacher

NAME = "fashion_mnist_cnn"
MEAN, STD = (0.2860,), (0.3530,)  # Fashion-MNIST training-set pixel statistics
MODEL_KWARGS = {"timm_name": "resnet10t", "channels": [16, 32, 64, 128], "stem_width": 16, "maxpool": False}
CROP_SCALE, CROP_RATIO, CROP_P = (0.25, 1.0), (3 / 4, 4 / 3), 0.5
DEFAULT_EPOCHS, DEFAULT_BATCH_SIZE, DEFAULT_LR = 8, 256, 4e-3
APPROX_MINUTES = 2  # 8 epochs ≈ 100 s of training at ~4800 images/s on 2 idle cores


def softlab_home() -> Path:
    return Path(os.environ.get("SOFTLAB_HOME") or Path.home() / ".cache" / "softlab").expanduser()


def default_checkpoint_path(cache_dir=None) -> Path:
    """``<cache_dir>/fashion_mnist_cnn.pth``; ``cache_dir`` defaults to ``$SOFTLAB_HOME/teachers``."""
    return Path(cache_dir or softlab_home() / "teachers").expanduser() / f"{NAME}.pth"


def build_model(num_classes: int = 10, in_chans: int = 1, timm_name: str = "resnet10t", maxpool: bool = True,
                **timm_kwargs) -> nn.Module:
    """The teacher network (``MODEL_KWARGS`` describes the default); ``maxpool=False`` keeps more resolution."""
    import timm

    model = timm.create_model(timm_name, pretrained=False, num_classes=num_classes, in_chans=in_chans,
                              **timm_kwargs)
    if not maxpool:
        model.maxpool = nn.Identity()
    return model


def random_resized_crops(images: torch.Tensor, generator: torch.Generator, scale=CROP_SCALE, ratio=CROP_RATIO,
                         flip_p: float = 0.5, crop_p: float = 1.0) -> torch.Tensor:
    """A RandomResizedCrop (+ horizontal flip) per image of a float batch, at the same size, in one grid_sample.

    Each image is cropped with probability ``crop_p`` (else kept whole): crop area uniform in ``scale`` × image
    area, log aspect ratio uniform in ``log(ratio)``, sides clipped to the image, position uniform where it fits.
    """
    batch = images.shape[0]

    def uniform(low, high):
        return torch.rand(batch, generator=generator) * (high - low) + low

    keep = torch.rand(batch, generator=generator) >= crop_p
    area = uniform(*scale).masked_fill(keep, 1.0)
    aspect = torch.exp(uniform(math.log(ratio[0]), math.log(ratio[1]))).masked_fill(keep, 1.0)
    width, height = (area * aspect).sqrt().clamp(max=1), (area / aspect).sqrt().clamp(max=1)
    centre_x = uniform(0, 1) * (1 - width) + width / 2
    centre_y = uniform(0, 1) * (1 - height) + height / 2
    flip = torch.where(torch.rand(batch, generator=generator) < flip_p, -1.0, 1.0)
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = width * flip, 2 * centre_x - 1
    theta[:, 1, 1], theta[:, 1, 2] = height, 2 * centre_y - 1
    grid = nn.functional.affine_grid(theta, list(images.shape), align_corners=False)
    return nn.functional.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _stack_images(dataset) -> torch.Tensor:
    return torch.stack([dataset[i][0].as_subclass(torch.Tensor) for i in range(len(dataset))])


def _train_epochs(model, images, targets, epochs, batch_size, lr, generator, progress) -> None:
    """AdamW + one-cycle schedule over uint8 ``images`` with random-resized-crop/flip augmentation."""
    from tqdm.auto import tqdm

    steps = epochs * math.ceil(len(images) / batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.2)
    mean, std = torch.tensor(MEAN).view(1, -1, 1, 1), torch.tensor(STD).view(1, -1, 1, 1)
    model.train()
    bar = tqdm(total=steps, desc="training the Fashion-MNIST teacher", unit="step", disable=not progress)
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), batch_size):
            index = order[start:start + batch_size]
            batch = random_resized_crops(images[index].float().div_(255), generator, crop_p=CROP_P)
            batch = ((batch - mean) / std).contiguous(memory_format=torch.channels_last)
            loss = nn.functional.cross_entropy(model(batch), targets[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.update()
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()


def train_fashion_mnist_teacher(epochs: int = DEFAULT_EPOCHS, batch_size: int = DEFAULT_BATCH_SIZE, seed: int = 0,
                                root=None, cache_dir=None, limit: int | None = None, progress: bool = True,
                                lr: float = DEFAULT_LR) -> Path:
    """Train the Fashion-MNIST teacher, test it, and write ``<cache_dir>/fashion_mnist_cnn.pth`` (+ ``.json``).

    ``limit`` keeps the first ``limit`` training (and test) images, for quick checks. The checkpoint holds the
    state dict and plain metadata (architecture, classes, input size, mean/std, test accuracy, epochs, seed,
    training seconds), all readable with ``torch.load(weights_only=True)``. Returns the checkpoint path.
    """
    from softlab.data import FASHION_MNIST_CLASSES, load_dataset

    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be positive, got {epochs} and {batch_size}")
    generator = _seed_everything(seed)
    train = load_dataset("fashion-mnist", root=root, limit=limit)
    test = load_dataset("fashion-mnist:test", root=root, limit=limit)
    model = build_model(num_classes=len(FASHION_MNIST_CLASSES), **MODEL_KWARGS).to(memory_format=torch.channels_last)
    started = time.perf_counter()
    _train_epochs(model, _stack_images(train), torch.as_tensor(train.targets), epochs, batch_size, lr, generator,
                  progress)
    seconds = time.perf_counter() - started
    meta = {"arch": NAME, "model_kwargs": MODEL_KWARGS, "num_classes": len(FASHION_MNIST_CLASSES), "in_chans": 1,
            "input_size": [1, 28, 28], "mean": list(MEAN), "std": list(STD), "interpolation": "bicubic",
            "class_names": list(FASHION_MNIST_CLASSES), "epochs": epochs, "batch_size": batch_size, "lr": lr,
            "seed": seed, "train_images": len(train), "test_images": len(test), "train_seconds": round(seconds, 1)}
    teacher = _wrap(model.to(memory_format=torch.contiguous_format), meta, spec=NAME)
    meta["accuracy"] = evaluate_classifier(teacher, test, progress=progress)
    path = save_checkpoint(default_checkpoint_path(cache_dir), model, **meta)
    sidecar = {k: meta[k] for k in ("accuracy", "test_images", "epochs", "seed", "train_seconds")}
    path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n")
    return path


def _wrap(model: nn.Module, meta: dict, spec: str, weights_path=None) -> Teacher:
    return Teacher(model, spec=spec, input_size=meta["input_size"], mean=meta["mean"], std=meta["std"],
                   interpolation=meta.get("interpolation", "bicubic"), class_names=meta["class_names"],
                   weights_path=weights_path, accuracy=meta.get("accuracy"))


def load_fashion_mnist_teacher(path) -> Teacher:
    """Rebuild the teacher from a checkpoint written by :func:`train_fashion_mnist_teacher`."""
    state, meta = load_checkpoint(path)
    missing = {"model_kwargs", "num_classes", "input_size", "mean", "std", "class_names"} - set(meta)
    if missing:
        raise TeacherUnavailableError(f"{path} is not a Fashion-MNIST teacher checkpoint (missing {sorted(missing)})")
    model = build_model(num_classes=meta["num_classes"], in_chans=meta["input_size"][0], **meta["model_kwargs"])
    model.load_state_dict(state)
    return _wrap(model, meta, spec=NAME, weights_path=path)


@register_teacher(NAME)
def fashion_mnist_cnn(weights=None, train_if_missing: bool = True, cache_dir=None, **train_kwargs) -> Teacher:
    """The in-project Fashion-MNIST teacher: loaded from the cache, trained there on first use.

    ``weights`` loads another checkpoint instead. With ``train_if_missing=False`` a missing cache raises
    :class:`TeacherUnavailableError`; other keywords go to :func:`train_fashion_mnist_teacher`.
    """
    path = Path(weights) if weights is not None else default_checkpoint_path(cache_dir)
    if not path.is_file():
        if weights is not None or not train_if_missing:
            raise TeacherUnavailableError(f"no Fashion-MNIST teacher at {path}; train it with `softlab teacher train` "
                                          "(or softlab.teachers.train_fashion_mnist_teacher())")
        print(f"training the Fashion-MNIST teacher (first use, about {APPROX_MINUTES} minutes)…", flush=True)
        path = train_fashion_mnist_teacher(cache_dir=cache_dir, **train_kwargs)
    return load_fashion_mnist_teacher(path)
