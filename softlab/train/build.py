"""Turning a :class:`TrainConfig` (plus any objects passed in) into the pieces of a run."""
from __future__ import annotations

import math

import numpy as np
import torch

from ..calibrate import Calibration, CalibratedStore
from ..data import BadImageError, load_dataset
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


def _teacher_hint(dataset) -> str:
    if getattr(dataset, "name", "").startswith("fashion-mnist"):
        return " (`--teacher fashion_mnist_cnn` for Fashion-MNIST; `softlab teacher list` lists the others)"
    return " (`softlab teacher list` lists the registered ones)"


def check_store_classes(store, dataset) -> None:
    """The store's soft labels must range over the training data's classes (the student's outputs)."""
    if store is not None and store.num_classes != dataset.num_classes:
        raise ValueError(f"label store {store.path} holds soft labels over {store.num_classes} classes, but the "
                         f"training data {dataset.name} has {dataset.num_classes}: give a store that `softlab labels "
                         f"generate` made with a teacher of the data set's {dataset.num_classes} classes"
                         f"{_teacher_hint(dataset)}")


def output_classes(model, input_size, device, trust_attribute: bool = True) -> int | None:
    """The number of logits ``model`` returns: its ``num_classes`` (when trusted), else that of one forward of a
    blank input of ``input_size`` (C, H, W) in eval mode; None when neither is known."""
    count = getattr(model, "num_classes", None) if trust_attribute else None
    if isinstance(count, int):
        return count
    if input_size is None:
        return None
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return int(model(torch.zeros(1, *input_size, device=device)).shape[-1])
    finally:
        model.train(training)


def check_teacher_classes(teacher, dataset, device) -> None:
    if teacher is None:
        return
    count = output_classes(teacher, getattr(teacher, "input_size", None), device)
    if count is not None and count != dataset.num_classes:
        spec = getattr(teacher, "spec", type(teacher).__name__)
        raise ValueError(f"teacher {spec} predicts {count} classes, but the training data {dataset.name} has "
                         f"{dataset.num_classes}: give a teacher of the data set's {dataset.num_classes} classes"
                         f"{_teacher_hint(dataset)}, or train on data of the teacher's {count} classes (--data)")


def check_student_classes(student, dataset, device) -> None:
    """A given student module's head must have one output per class of the training data (its wrapper's
    ``num_classes`` is the data's, so the module is run once to see)."""
    count = output_classes(student, student.input_size, device, trust_attribute=False)
    if count != dataset.num_classes:
        raise ValueError(f"the student returns {count} logits, but the training data {dataset.name} has "
                         f"{dataset.num_classes} classes: give it a head of {dataset.num_classes} outputs (or a "
                         "student spec, whose head is made to fit)")


def check_eval_classes(eval_images, dataset) -> None:
    """Evaluation images must be labelled with the training data's classes."""
    if eval_images is None:
        return
    count = len(eval_images.class_names)
    largest = int(eval_images.targets.max()) if len(eval_images) else -1
    if (count and count != dataset.num_classes) or largest >= dataset.num_classes:
        count = count or largest + 1
        raise ValueError(f"the evaluation data {eval_images.name} has {count} classes, but the training data "
                         f"{dataset.name} has {dataset.num_classes}: evaluate on data of the same classes "
                         "(--eval-data, or 'none' to skip evaluation)")


def kept_crop_counts(source) -> dict:
    """For stored crops: the images the store lists as skipped (undecodable at generation) and the other images
    without a kept crop (both left out by the loader), and those with fewer kept crops than ``num_crops`` (whose
    crops are drawn with replacement); {} for fresh crops."""
    if not getattr(source, "stored", False):
        return {}
    per_image = source.kept.sum(axis=1)
    skipped = getattr(source, "skipped", None)
    skipped = np.zeros(len(per_image), bool) if skipped is None else skipped
    return {"skipped_images": int(skipped.sum()),
            "images_without_kept_crops": int(((per_image == 0) & ~skipped).sum()),
            "images_with_crops_drawn_with_replacement": int(((per_image > 0) & (per_image < source.num_crops)).sum())}


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
    """(channels, crop side) of the student's inputs, read off the first image that can be decoded."""
    first = _first_image(dataset)
    channels = int(first.shape[0])
    if config.input_size:
        return channels, int(config.input_size)
    if store is not None:
        return channels, int(store.manifest["crops"]["teacher_input_size"][1])
    if teacher is not None:
        return channels, int(teacher.input_size[1])
    return channels, int(min(224, first.shape[-2]))


def _first_image(dataset):
    """The first image of ``dataset`` that can be decoded (an undecodable image 0 may be one a store skipped)."""
    for index in range(1, len(dataset)):
        try:
            return dataset[index - 1][0]
        except BadImageError:
            continue
    return dataset[len(dataset) - 1][0]  # the last image (or the error that it, too, cannot be decoded)


def image_stats(dataset, max_images: int = 2000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of pixel values in [0, 1] over the first ``max_images`` images (images that cannot
    be decoded, such as those a label store lists as skipped, are left out)."""
    count, total, squares = 0, None, None
    for index in range(min(max_images, len(dataset))):
        try:
            image = dataset[index][0]
        except BadImageError:
            continue
        pixels = image.as_subclass(torch.Tensor).double().div(255).flatten(1)
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
