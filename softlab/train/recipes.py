"""The methods as named recipes: a registry of small distillers (mdistiller's interface).

A recipe is a :class:`Distiller`: it holds the student (and the teacher, for online recipes) and maps one batch
to ``(logits, {loss name: scalar})``; the loss formulas live in :mod:`softlab.train.losses` as pure functions.
Each recipe's docstring states its loss and its paper. ``crops`` says where the regions come from: ``"stored"``
(a label store, possibly through a FerKD calibration) or ``"online"`` (fresh RandomResizedCrops).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..teachers.base import resize_images
from . import losses
from .mixing import Mixing, mix, smoothed_one_hot

RECIPES: dict[str, type["Distiller"]] = {}


def register_recipe(name: str):
    """Class decorator adding a :class:`Distiller` subclass to the registry under ``name``."""
    def decorator(cls):
        if name in RECIPES and RECIPES[name] is not cls:
            raise ValueError(f"recipe {name!r} is already registered")
        cls.name = name
        RECIPES[name] = cls
        return cls
    return decorator


def list_recipes() -> list[str]:
    return list(RECIPES)


def get_recipe(name: str) -> type["Distiller"]:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; available: {', '.join(RECIPES)}")
    return RECIPES[name]


def describe_recipe(name: str) -> dict:
    """Name, summary (the docstring's first line), formula/paper text, crops, teacher and store needs, defaults."""
    cls = get_recipe(name)
    doc = (cls.__doc__ or "").strip()
    return {"name": name, "summary": doc.splitlines()[0] if doc else "", "doc": doc, "crops": cls.crops,
            "needs_teacher": cls.needs_teacher, "needs_store": cls.crops == "stored",
            "uses_ground_truth": cls.uses_ground_truth, "options": dict(cls.defaults),
            "mixing": cls.default_mixing.to_dict()}


@dataclass
class StepContext:
    """What a recipe may know about the current step; ``rng`` is seeded from (seed, epoch, step)."""

    epoch: int          # 0-based
    epochs: int
    step: int           # global, 0-based
    rng: np.random.Generator


class Distiller(nn.Module):
    """Base recipe: ``forward_train(batch, ctx) -> (logits, losses)``; ``forward(images)`` is the student's."""

    name = "base"
    crops = "online"
    needs_teacher = False
    uses_ground_truth = True
    defaults: dict = {}
    default_mixing = Mixing()

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, *, num_classes: int,
                 mixing: Mixing | dict | None = None, label_temperature: float = 1.0, num_images: int = 0,
                 targets=None, **options):
        super().__init__()
        unknown = set(options) - set(self.defaults)
        if unknown:
            raise ValueError(f"recipe {self.name!r} has no option(s) {', '.join(sorted(unknown))}; "
                             f"its options: {', '.join(self.defaults) or 'none'}")
        if self.needs_teacher and teacher is None:
            raise ValueError(f"recipe {self.name!r} needs a teacher (online forwards); pass teacher=…")
        self.student, self.teacher = student, teacher
        self.options = {**self.defaults, **options}
        self.mixing = mixing if isinstance(mixing, Mixing) else (Mixing.from_dict(mixing) if mixing is not None
                                                                 else self.default_mixing)
        self.num_classes, self.label_temperature = num_classes, label_temperature
        self.teacher_forwards = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.student(images)

    def forward_train(self, batch, ctx: StepContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    # ----- helpers shared by recipes
    def mixed(self, batch, targets: torch.Tensor, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, soft targets) after this recipe's mixing (unchanged when mixing is off)."""
        if not self.mixing.active:
            return batch.images, targets
        images, targets, _ = mix(batch.images, targets, batch.image_index, self.mixing, ctx.rng)
        return images, targets

    @torch.no_grad()
    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Teacher logits on the same crops (resized to the teacher's input when it differs); counted."""
        size = self.teacher.input_size[1:]
        if tuple(images.shape[-2:]) != tuple(size):
            images = resize_images(images.float(), size, getattr(self.teacher, "interpolation", "bicubic"))
        self.teacher_forwards += len(images)
        return self.teacher(images).float()

    def stored_targets(self, batch) -> torch.Tensor:
        if batch.soft is None:
            raise ValueError(f"recipe {self.name!r} trains on stored region labels: give it a label store")
        return losses.temper(batch.soft, self.label_temperature)

    def one_hot(self, batch, smoothing: float = 0.0) -> torch.Tensor:
        return smoothed_one_hot(batch.targets, self.num_classes, smoothing)

    def extra_state(self) -> dict:
        """Recipe state beyond the student's weights, for checkpoints (tensors and plain values)."""
        return {"teacher_forwards": self.teacher_forwards}

    def load_extra_state(self, state: dict) -> None:
        self.teacher_forwards = int(state.get("teacher_forwards", 0))


@register_recipe("hard")
class Hard(Distiller):
    """Cross-entropy on the ground truth with standard augmentation (RandomResizedCrop + flip).

    L = −log softmax(z)_y; with mixing, the soft CE on mixed one-hot targets (timm's ``mixup_target``).
    """

    def forward_train(self, batch, ctx):
        if not self.mixing.active:
            logits = self.student(batch.images)
            return logits, {"ce": losses.cross_entropy(logits, batch.targets)}
        images, targets = self.mixed(batch, self.one_hot(batch), ctx)
        logits = self.student(images)
        return logits, {"ce": losses.soft_cross_entropy(logits, targets)}


@register_recipe("label_smoothing")
class LabelSmoothing(Distiller):
    """Label smoothing (Szegedy et al., "Rethinking the Inception Architecture", CVPR 2016).

    L = −Σ_c q_c log softmax(z)_c with q = (1 − ε)·onehot(y) + ε/C; option ``smoothing`` ε (0.1).
    """

    defaults = {"smoothing": 0.1}

    def forward_train(self, batch, ctx):
        images, targets = self.mixed(batch, self.one_hot(batch, self.options["smoothing"]), ctx)
        logits = self.student(images)
        return logits, {"ce": losses.soft_cross_entropy(logits, targets)}


@register_recipe("kd")
class KD(Distiller):
    """Hinton KD ("Distilling the Knowledge in a Neural Network", Hinton, Vinyals & Dean 2015), online teacher.

    L = α·CE(z, y) + (1 − α)·T²·KL(softmax(v/T) ‖ softmax(z/T)), the teacher's logits v computed on the same
    crop at every step; options ``alpha`` α (0.1) and ``temperature`` T (4), as in mdistiller's KD.
    """

    needs_teacher = True
    defaults = {"alpha": 0.1, "temperature": 4.0}

    def forward_train(self, batch, ctx):
        logits = self.student(batch.images)
        teacher = self.teacher_logits(batch.images)
        alpha, temperature = self.options["alpha"], self.options["temperature"]
        return logits, {"ce": alpha * losses.cross_entropy(logits, batch.targets),
                        "kd": (1 - alpha) * losses.kl_divergence(logits, teacher, temperature)}


@register_recipe("funmatch")
class FunMatch(Distiller):
    """Function matching / consistent teaching (Beyer et al., "Knowledge distillation: A good teacher is patient
    and consistent", CVPR 2022).

    Teacher and student see the *same* mixed crop, online: L = KL(softmax(v(x̃)/T) ‖ softmax(z(x̃)/T))·T² with
    x̃ a cross-image Mixup; no ground truth. Options: ``temperature`` T (1).
    """

    needs_teacher = True
    uses_ground_truth = False
    defaults = {"temperature": 1.0}
    default_mixing = Mixing(mode="cross", mixup_alpha=1.0, cutmix_alpha=0.0, prob=1.0)

    def forward_train(self, batch, ctx):
        images, _ = self.mixed(batch, self.one_hot(batch), ctx)
        logits = self.student(images)
        teacher = self.teacher_logits(images)
        return logits, {"kd": losses.kl_divergence(logits, teacher, self.options["temperature"])}


@register_recipe("fkd")
class FKD(Distiller):
    """FKD region soft labels ("A Fast Knowledge Distillation Framework for Visual Recognition", Shen & Xing,
    ECCV 2022).

    L = −Σ_c q_c log softmax(z)_c, q the teacher's stored (quantised) soft label of exactly this crop; no teacher
    forward during training, no ground truth. ``label_temperature`` τ reshapes q as q^(1/τ) renormalised.
    """

    crops = "stored"
    uses_ground_truth = False

    def forward_train(self, batch, ctx):
        images, targets = self.mixed(batch, self.stored_targets(batch), ctx)
        logits = self.student(images)
        return logits, {"soft_ce": losses.soft_cross_entropy(logits, targets)}


@register_recipe("ferkd")
class FerKD(FKD):
    """FerKD calibrated region labels + SelfMix ("FerKD: Surgical Label Adaptation for Efficient Distillation",
    Shen, ICCV 2023).

    Crops are drawn only among those the calibration keeps (T_L ≤ y_s ≤ T_T); hard regions (y_s < T_M) carry the
    softened hard label (1 − ε on y), the others the teacher's soft label q. SelfMix mixes two crops a, b of the
    same image: x = λ·x_a + (1 − λ)·x_b (Mixup) or a CutMix paste (λ = kept area share), λ ~ Beta(α, α), target
    λ·q_a + (1 − λ)·q_b; L = −Σ_c q̃_c log softmax(z)_c.
    """

    default_mixing = Mixing(mode="selfmix", mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.5, switch_prob=0.5)


@register_recipe("meal_v2")
class MealV2(Distiller):
    """MEAL V2 (Shen & Savvides, "MEAL V2: Boosting Vanilla ResNet-50 to 80%+ Top-1 Accuracy on ImageNet without
    Tricks", 2020), without its discriminator.

    L = −Σ_c p̄_c log softmax(z)_c with p̄ = (1/K) Σ_k softmax(v_k), the teachers' averaged softmax (pass an
    ``ensemble:a+b`` teacher; one teacher gives K = 1), online; no hard labels at all.
    """

    needs_teacher = True
    uses_ground_truth = False

    def forward_train(self, batch, ctx):
        images, _ = self.mixed(batch, self.one_hot(batch), ctx)
        logits = self.student(images)
        target = F.softmax(self.teacher_logits(images), dim=-1)
        return logits, {"soft_ce": losses.soft_cross_entropy(logits, target)}


@register_recipe("nkd")
class NKD(Distiller):
    """Normalised KD (Yang et al., "From Knowledge Distillation to Self-Knowledge Distillation: A Unified
    Approach with Normalized Loss and Customized Soft Labels", ICCV 2023), online teacher.

    L = CE(z, y) − t_y·log s_y + γ·λ²·KL(T̂^λ ‖ Ŝ^λ), t_y/s_y the teacher's/student's ground-truth probability and
    T̂, Ŝ the non-target distributions renormalised to sum 1; options ``temperature`` λ (1), ``gamma`` γ (1.5).
    """

    needs_teacher = True
    defaults = {"temperature": 1.0, "gamma": 1.5}

    def forward_train(self, batch, ctx):
        logits = self.student(batch.images)
        teacher = self.teacher_logits(batch.images)
        return logits, {"ce": losses.cross_entropy(logits, batch.targets),
                        "nkd": losses.nkd(logits, teacher, batch.targets, self.options["temperature"],
                                          self.options["gamma"])}


@register_recipe("pskd")
class PSKD(Distiller):
    """Progressive self-KD (Kim et al., "Self-Knowledge Distillation with Progressive Refinement of Targets",
    ICCV 2021); no teacher.

    Target q = (1 − α_t)·onehot(y) + α_t·p_prev(image), α_t = α_T·(t + 1)/T, p_prev the student's prediction for
    the image at its previous visit (one-hot before the first; with several crops, their mean softmax);
    L = −Σ_c q_c log softmax(z)_c. Option ``alpha`` α_T (0.8).
    """

    defaults = {"alpha": 0.8}

    def __init__(self, student, teacher=None, *, num_images: int = 0, targets=None, num_classes: int, **kwargs):
        super().__init__(student, teacher, num_classes=num_classes, **kwargs)
        if targets is None or not num_images:
            raise ValueError("pskd needs the training targets (num_images=…, targets=…) for its prediction memory")
        targets = torch.as_tensor(np.asarray(targets), dtype=torch.long)
        self.register_buffer("predictions", F.one_hot(targets, num_classes).float(), persistent=False)

    def forward_train(self, batch, ctx):
        index = torch.as_tensor(batch.image_index, device=self.predictions.device)
        alpha = losses.pskd_alpha(ctx.epoch, ctx.epochs, self.options["alpha"])
        previous = self.predictions[index].to(batch.images.device)
        targets = losses.pskd_targets(batch.targets, previous, alpha)
        images, targets = self.mixed(batch, targets, ctx)
        logits = self.student(images)
        self._remember(index, F.softmax(logits.detach().float(), dim=-1).to(self.predictions.device))
        return logits, {"soft_ce": losses.soft_cross_entropy(logits, targets)}

    def _remember(self, index: torch.Tensor, probs: torch.Tensor) -> None:
        unique, inverse = torch.unique(index, return_inverse=True)
        sums = torch.zeros(len(unique), probs.shape[-1], device=probs.device).index_add_(0, inverse, probs)
        counts = torch.bincount(inverse, minlength=len(unique)).clamp_min(1).unsqueeze(1)
        self.predictions[unique] = sums / counts

    def extra_state(self) -> dict:
        return {**super().extra_state(), "predictions": self.predictions.detach().cpu().clone()}

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        self.predictions.copy_(state["predictions"].to(self.predictions.device))


def create_recipe(name: str, student: nn.Module, teacher: nn.Module | None = None, **kwargs) -> Distiller:
    """``create_recipe("kd", student, teacher, num_classes=10, alpha=0.5)`` → a ready :class:`Distiller`."""
    return get_recipe(name)(student, teacher, **kwargs)
