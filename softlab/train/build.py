"""Turning a :class:`TrainConfig` (plus any objects passed in) into the pieces of a run."""
from __future__ import annotations

import math

import numpy as np
import torch

from ..calibrate import Calibration, CalibratedStore
from ..data import load_dataset
from ..data.crops import CropParams
from ..labels import LabelStore
from .config import TrainConfig
from .loader import MultiCropLoader, RandomCrops, StoredCrops
from .recipes import get_recipe
from .students import create_student


def resolve_device(config: TrainConfig) -> torch.device:
    if config.device:
        return torch.device(config.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def training_data(config: TrainConfig, dataset=None):
    return dataset if dataset is not None else load_dataset(config.data, limit=config.data_limit)


def open_labels(config: TrainConfig, dataset, store=None):
    """(store or None, the labels the loader draws from: the store or its FerKD view)."""
    recipe = get_recipe(config.recipe)
    if store is None and config.store:
        store = LabelStore.open(config.store)
    if store is None:
        if recipe.crops == "stored":
            raise ValueError(f"recipe {config.recipe!r} trains on stored region labels: give a label store "
                             "(--store, made by `softlab labels generate`)")
        return None, None
    base = getattr(store, "store", store)
    check_store_matches(base, dataset)
    if isinstance(store, CalibratedStore):
        given = store.calibration.to_dict()
        if config.calibration is not None and Calibration.from_dict(config.calibration).to_dict() != given:
            raise ValueError(f"the calibrated view passed ({given}) differs from config.calibration "
                             f"({config.calibration}); pass the plain store or make them agree")
        config.calibration = given  # recorded in config.json, checked on resume
        return base, store
    if config.calibration is not None:
        return base, CalibratedStore(base, Calibration.from_dict(config.calibration))
    if config.recipe == "ferkd":
        raise ValueError("recipe 'ferkd' needs FerKD calibration thresholds (config.calibration / --t-low …)")
    return base, base


def check_store_matches(store: LabelStore, dataset) -> None:
    expected = store.manifest["dataset"]
    if expected["num_images"] != len(dataset) or expected["fingerprint"] != dataset.fingerprint():
        raise ValueError(f"label store {store.path} was made for {expected['name']} ({expected['num_images']} images), "
                         f"not for {dataset.name} ({len(dataset)} images): train on the store's images "
                         "(same --data and --limit as when it was generated)")


def crop_source(config: TrainConfig, labels, store):
    if get_recipe(config.recipe).crops == "stored":
        return StoredCrops(labels, config.num_crops, config.seed)
    if config.crop is not None:
        params = CropParams.from_dict({**CropParams().to_dict(), **config.crop})
    elif store is not None:
        params = CropParams.from_dict(store.manifest["crops"])
    else:
        params = CropParams()
    return RandomCrops(params, config.num_crops, config.seed)


def input_geometry(config: TrainConfig, dataset, store, teacher) -> tuple[int, int]:
    """(channels, crop side) of the student's inputs."""
    first = dataset[0][0]
    channels = int(first.shape[0])
    if config.input_size:
        return channels, int(config.input_size)
    if store is not None:
        return channels, int(store.manifest["crops"]["teacher_input_size"][1])
    if teacher is not None:
        return channels, int(teacher.input_size[1])
    return channels, int(min(224, first.shape[-2]))


def image_stats(dataset, max_images: int = 2000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of pixel values in [0, 1] over the first ``max_images`` images."""
    count, total, squares = 0, None, None
    for index in range(min(max_images, len(dataset))):
        pixels = dataset[index][0].as_subclass(torch.Tensor).double().div(255).flatten(1)
        total = pixels.sum(1) if total is None else total + pixels.sum(1)
        squares = (pixels ** 2).sum(1) if squares is None else squares + (pixels ** 2).sum(1)
        count += pixels.shape[1]
    mean = total / count
    std = (squares / count - mean ** 2).clamp_min(1e-12).sqrt()
    return [round(float(v), 4) for v in mean], [round(float(v), 4) for v in std]


def build_student(config: TrainConfig, num_classes: int, channels: int, size: int, mean, std, student=None):
    torch.manual_seed(config.seed)
    return create_student(student if student is not None else config.student, num_classes, (channels, size, size),
                          mean, std, **({} if student is not None else config.student_kwargs))


def build_optimizer(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW; weight decay on weights only, not on biases and normalisation parameters."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)
    return torch.optim.AdamW(groups, lr=config.lr)


class WarmupCosine:
    """LR factor at step s: linear warmup over ``warmup`` steps, then cosine from 1 to ``floor`` at ``total``."""

    def __init__(self, total: int, warmup: int, floor: float = 0.0):
        self.total, self.warmup, self.floor = int(total), int(warmup), float(floor)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * progress))


def build_schedule(config: TrainConfig, optimizer, steps_per_epoch: int):
    total = config.epochs * steps_per_epoch
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(total, warmup, config.min_lr / config.lr))


def build_loader(config: TrainConfig, dataset, source, size: int, device) -> MultiCropLoader:
    return MultiCropLoader(dataset, source, config.batch_images, size, config.seed, device=device,
                           pin_memory=device.type == "cuda")


def step_rng(seed: int, epoch: int, step: int) -> np.random.Generator:
    """The generator a recipe uses at one step (mixing), a function of (seed, epoch, step) only."""
    return np.random.default_rng([seed, 17, epoch, step])
