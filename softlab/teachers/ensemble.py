"""MEAL V2 style teacher ensembles: the target is the mean of the members' softmax outputs."""
from __future__ import annotations

import hashlib
import math

import torch
from torch import nn

from .base import Teacher, resize_images, to_float_images


def mean_softmax_log(logits: list[torch.Tensor]) -> torch.Tensor:
    """``log(mean_k softmax(logits_k))`` computed stably (log-sum-exp) in float32."""
    log_probs = torch.stack([torch.log_softmax(z.float(), dim=1) for z in logits])
    return torch.logsumexp(log_probs, dim=0) - math.log(len(logits))


class EnsembleTeacher(Teacher):
    """Several teachers answering as one, MEAL V2 style.

    ``forward`` returns **log-probabilities** ``log(mean_k softmax(z_k))`` rather than logits; softmax leaves
    them unchanged, so ``softmax(ensemble(x))`` is exactly the mean of the members' softmaxes. Label generation
    computes ``softmax(output / T)``: for an ensemble ``T`` therefore acts on the mixture's log-probabilities
    (giving ``p̄^(1/T)`` renormalised), not on each member's logits; ``T = 1`` gives the plain mean.

    The ensemble's ``input_size`` is the largest member's (channels: the most any member takes). Each member
    receives the input resized to its own size (bicubic, antialiased, clamped to ``[0, 1]``) and applies its own
    channel conversion and normalisation, so the ensemble's own ``mean``/``std`` are the identity (0 and 1).
    Members must agree on the number of classes; class names are the first member's.
    """

    def __init__(self, members: list[Teacher]):
        members = list(members)
        if not members or not all(isinstance(m, Teacher) for m in members):
            raise ValueError("an ensemble needs one or more Teacher members")
        counts = {m.num_classes for m in members}
        if len(counts) > 1:
            listing = ", ".join(f"{m.spec} ({m.num_classes})" for m in members)
            raise ValueError(f"ensemble members must predict the same classes; class counts differ: {listing}")
        largest = max(members, key=lambda m: m.input_size[1] * m.input_size[2])
        channels = max(m.input_size[0] for m in members)
        super().__init__(nn.ModuleList(members), spec="ensemble:" + "+".join(m.spec for m in members),
                         input_size=(channels, *largest.input_size[1:]), mean=(0.0,) * channels,
                         std=(1.0,) * channels, class_names=members[0].class_names, interpolation="bicubic")

    @property
    def members(self) -> list[Teacher]:
        return list(self.model)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = to_float_images(images)
        return mean_softmax_log([m(resize_images(images, m.input_size[1:], "bicubic")) for m in self.model])

    def weights_sha256(self) -> str | None:
        """sha256 over the members' weight hashes (None unless every member has a weights file)."""
        hashes = [m.weights_sha256() for m in self.model]
        if any(h is None for h in hashes):
            return None
        return hashlib.sha256("+".join(hashes).encode()).hexdigest()

    def describe(self) -> dict:
        info = super().describe()
        info["members"] = [m.describe() for m in self.model]
        info["output"] = "log of the mean of the members' softmaxes"
        return info
