"""Soft-label quantisation (FKD's label types) and dense recovery.

For a teacher distribution p over C classes (softmax at temperature T), a region label is stored as the top-k
indices and their probabilities, and recovered densely as:

- ``hard`` (k=1): one-hot at argmax p.
- ``smoothing`` (k=1): p_max at argmax, every other class (1 − p_max)/(C − 1).
- ``marginal_smoothing_k``: p_i at the top-k indices, every other class (1 − Σ_topk p)/(C − k)
  (the remainder is floored at 0, as fp16 rounding can push Σ_topk p a hair above 1).
- ``marginal_renorm_k``: p_i / Σ_topk p at the top-k indices, 0 elsewhere (FKD stores the raw top-k p and
  renormalises when reading; so does softlab).
- ``full``: all C probabilities stored in fp16, renormalised to sum 1 on reading (for small C).

These are the formulas of FKD (Shen & Xing, ECCV 2022), ``Recover_soft_label`` in its training code.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

KINDS = ("hard", "smoothing", "marginal_smoothing", "marginal_renorm", "full")
_PATTERN = re.compile(r"^(marginal_smoothing|marginal_renorm)(?:_k(\d+))?$")


@dataclass(frozen=True)
class LabelType:
    kind: str
    k: int | None = None  # None for "full" until the class count is known

    @property
    def name(self) -> str:
        return f"{self.kind}_k{self.k}" if self.kind.startswith("marginal") else self.kind

    def stored_k(self, num_classes: int) -> int:
        return num_classes if self.kind == "full" else self.k

    def check(self, num_classes: int) -> None:
        if self.kind.startswith("marginal") and not 1 <= self.k < num_classes:
            raise ValueError(f"{self.name} needs 1 <= k < number of classes ({num_classes}); pick a smaller k")
        if self.kind == "smoothing" and num_classes < 2:
            raise ValueError("smoothing labels need at least 2 classes")


def parse_label_type(text: str) -> LabelType:
    """``hard`` | ``smoothing`` | ``marginal_smoothing_k<k>`` | ``marginal_renorm_k<k>`` | ``full``.

    FKD's spelling ``marginal_renorm`` (no k) means k=5, as in its code.
    """
    if isinstance(text, LabelType):
        return text
    if text in ("hard", "smoothing"):
        return LabelType(text, 1)
    if text == "full":
        return LabelType("full", None)
    match = _PATTERN.match(text or "")
    if not match:
        raise ValueError(f"unknown label type {text!r}: use hard, smoothing, marginal_smoothing_k<k>, "
                         "marginal_renorm_k<k> (e.g. marginal_smoothing_k5, FKD's recommended type) or full")
    k = int(match.group(2)) if match.group(2) else 5
    if k < 1:
        raise ValueError(f"label type {text!r}: k must be at least 1")
    return LabelType(match.group(1), k)


def quantize(probs: torch.Tensor, label_type) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``probs [B, C]`` → (indices int64 ``[B, k]`` or None for ``full``, values fp16 ``[B, k]``).

    Values are the raw teacher probabilities of the kept classes, sorted descending (``hard`` keeps p_max too,
    which dense recovery ignores).
    """
    label_type = parse_label_type(label_type)
    label_type.check(probs.shape[-1])
    if label_type.kind == "full":
        return None, probs.to(torch.float16)
    values, indices = torch.topk(probs.float(), label_type.k, dim=-1)
    return indices, values.to(torch.float16)


def dense_labels(indices: torch.Tensor | None, values: torch.Tensor, label_type, num_classes: int) -> torch.Tensor:
    """Recover dense float32 labels ``[B, C]`` from stored (indices, values) by the formulas above."""
    label_type = parse_label_type(label_type)
    values = values.float()
    if label_type.kind == "full":
        return values / values.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    indices = indices.long()
    batch = values.shape[0]
    if label_type.kind == "hard":
        return torch.zeros(batch, num_classes).scatter_(1, indices[:, :1], 1.0)
    if label_type.kind == "marginal_renorm":
        kept = values / values.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        return torch.zeros(batch, num_classes).scatter_(1, indices, kept)
    kept_classes = 1 if label_type.kind == "smoothing" else label_type.k
    values = values[:, :kept_classes]
    rest = (1.0 - values.sum(dim=-1, keepdim=True)).clamp_min(0) / (num_classes - kept_classes)
    return rest.expand(batch, num_classes).clone().scatter_(1, indices[:, :kept_classes], values)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats along the last axis (0·log 0 = 0)."""
    probs = probs.float()
    return -(probs * torch.log(probs.clamp_min(1e-30))).sum(dim=-1)
