"""What training draws from one image: its RandomResizedCrop regions and the mixed samples made of them.

:func:`preview_crops` samples an image's regions with the same generator as training and cuts them with the
training loader's :func:`~softlab.train.loader.cut_batch`. By default these are the regions label generation
stores for the image (``sample_crops(seed, image_index)``, the FKD regions a stored-label recipe trains on);
with ``epoch`` set they are the fresh regions an online recipe draws at that epoch (:class:`RandomCrops`).

:func:`preview_mixed` mixes those crops as a training step would mix a batch made of this image alone
(SelfMix: partners are other crops of the same image) or of this image followed by a *partner image*
(cross-image: timm's mirrored pairing, so crop n of image a meets crop count − 1 − n of image b). Which image
lands next to which in a real batch is random; the partner is the caller's pick, e.g. another image of the
data set. The mixing draw is the trainer's (:func:`~softlab.train.build.step_rng` of seed, epoch and step).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision import tv_tensors

from ..data.crops import CropParams, sample_crops, to_bounding_boxes
from .build import step_rng
from .loader import RandomCrops, cut_batch
from .mixing import MixPlan, Mixing, mix, smoothed_one_hot

SOURCE_NAMES = "ab"  # the previewed image is "a", a cross-image partner "b"


@dataclass
class CropPreview:
    """One image's crops: FKD ``coords`` float32 ``[n, 4]`` = (i/H, j/W, h/H, w/W), ``flips`` bool ``[n]``,
    ``boxes`` (the same regions as XYXY pixel ``tv_tensors.BoundingBoxes`` on the image) and ``pixels`` float
    ``[n, C, size, size]`` in [0, 1], cut as the training loader cuts them (flip applied).
    ``image_index`` and ``target`` (−1: unlabelled) say where they come from."""

    coords: np.ndarray
    flips: np.ndarray
    boxes: tv_tensors.BoundingBoxes
    pixels: torch.Tensor
    image_index: int
    target: int

    def __len__(self) -> int:
        return len(self.coords)


def draw_crops(height: int, width: int, crop_params: CropParams, count: int, seed: int, image_index: int = 0,
               epoch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(coords, flips) of one image: label generation's regions, or an online recipe's at ``epoch``."""
    if epoch is None:
        return sample_crops(height, width, count, crop_params, seed, image_index)
    coords, flips, _ = RandomCrops(crop_params, count, seed).draw(epoch, image_index, height, width)
    return coords, flips


def preview_crops(image, crop_params: CropParams | None = None, count: int = 8, seed: int = 0, size: int = 112,
                  image_index: int = 0, target: int = -1, epoch: int | None = None) -> CropPreview:
    """``count`` crops of ``image`` (uint8 or float ``[C, H, W]``), sampled and cut as training does."""
    crop_params = crop_params or CropParams()
    image = torch.as_tensor(image).as_subclass(torch.Tensor)
    height, width = image.shape[-2:]
    coords, flips = draw_crops(height, width, crop_params, count, seed, image_index, epoch)
    pixels = cut_batch([image], [coords], [flips], size, crop_params.interpolation)
    return CropPreview(coords=coords, flips=flips, boxes=to_bounding_boxes(coords, height, width), pixels=pixels,
                       image_index=int(image_index), target=int(target))


@dataclass
class MixedPreview:
    """The mixed samples made of the first source's crops.

    ``sources`` are the batch's images in order (a, then b for cross-image mixing); batch position p is crop
    ``p − offset`` of its source. Per shown sample n: ``pixels[n]`` the mixed crop, ``plan`` its partner's batch
    position, λ (label weight of its own crop), CutMix flag and pasted box (i, j, h, w) in crop pixels;
    ``weights[n]`` the label weight of every batch position (λ and 1 − λ, summing to 1), and ``class_mix[n]``
    the mixed one-hot label over ``num_classes`` classes (None when a source is unlabelled).
    """

    pixels: torch.Tensor
    plan: MixPlan
    weights: torch.Tensor
    class_mix: torch.Tensor | None
    sources: list[CropPreview]
    mixing: Mixing

    def __len__(self) -> int:
        return len(self.pixels)

    def source_of(self, position: int) -> tuple[int, int]:
        """(source number, crop number) of a batch position."""
        offsets = np.cumsum([0] + [len(source) for source in self.sources])
        source = int(np.searchsorted(offsets, position, side="right") - 1)
        return source, int(position - offsets[source])

    def terms(self, n: int) -> list[tuple[float, str]]:
        """Sample n's label mix as (weight, crop name) pairs, own crop first; names like ``"a3"`` (image a,
        crop 3). An unmixed sample has one term of weight 1."""
        own, partner, lam = n, int(self.plan.partner[n]), float(self.plan.lam[n])
        pairs = [(lam, own)] if lam == 1.0 else [(lam, own), (1.0 - lam, partner)]
        return [(weight, self.crop_name(position)) for weight, position in pairs]

    def crop_name(self, position: int) -> str:
        source, crop = self.source_of(position)
        return f"{SOURCE_NAMES[source]}{crop}"

    @property
    def mixed(self) -> np.ndarray:
        """bool ``[n]``: which samples were mixed (a CutMix box may be empty, leaving λ = 1)."""
        return self.plan.cutmix | (self.plan.lam < 1.0)

    def kind(self, n: int) -> str:
        """``"CutMix"``, ``"Mixup"`` or ``"not mixed"``."""
        return "CutMix" if self.plan.cutmix[n] else "Mixup" if self.plan.lam[n] < 1.0 else "not mixed"


def preview_mixed(crops: CropPreview, mixing: Mixing, partner: CropPreview | None = None, seed: int = 0,
                  epoch: int = 0, step: int = 0, num_classes: int | None = None) -> MixedPreview:
    """Mix ``crops`` as one training step (``seed``, ``epoch``, ``step``) would; cross-image mixing needs the
    ``partner`` image's crops (same size). Returns the ``len(crops)`` samples of the previewed image."""
    if mixing.mode == "cross" and partner is None:
        raise ValueError("cross-image mixing pairs the crops of two images: pass the partner image's crops")
    if partner is not None and partner.pixels.shape[1:] != crops.pixels.shape[1:]:
        raise ValueError(f"the partner's crops are {tuple(partner.pixels.shape[1:])}, not "
                         f"{tuple(crops.pixels.shape[1:])} like the image's: cut both at the same size")
    sources = [crops, partner] if mixing.mode == "cross" else [crops]
    pixels = torch.cat([source.pixels for source in sources])
    layout = np.repeat(np.arange(len(sources)), [len(source) for source in sources])
    identity = torch.eye(len(pixels), dtype=torch.float64)  # mixed, it gives each sample's weight per position
    mixed, weights, plan = mix(pixels, identity, layout, mixing, step_rng(seed, epoch, step))
    shown = slice(0, len(crops))
    plan = MixPlan(partner=plan.partner[shown], lam=plan.lam[shown], cutmix=plan.cutmix[shown],
                   boxes=plan.boxes[shown])
    return MixedPreview(pixels=mixed[shown], plan=plan, weights=weights[shown],
                        class_mix=_class_mix(weights[shown], sources, num_classes), sources=sources, mixing=mixing)


def _class_mix(weights: torch.Tensor, sources: list[CropPreview], num_classes: int | None) -> torch.Tensor | None:
    """Weights over batch positions → the mixed one-hot label over classes."""
    targets = torch.tensor([source.target for source in sources for _ in range(len(source))])
    if num_classes is None or (targets < 0).any():
        return None
    return weights @ smoothed_one_hot(targets, num_classes).to(weights.dtype)
