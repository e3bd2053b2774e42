"""Classification metrics from logits (or log-probabilities) and ground truth: pure functions, float64 sums.

Expected calibration error (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017): confidences
(max softmax probability) fall into 15 equal-width bins over [0, 1]; ECE = Σ_b (n_b / N)·|acc_b − conf_b|.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

ECE_BINS = 15


def topk_accuracy(logits: torch.Tensor, targets: torch.Tensor, ks=(1, 5)) -> dict[str, float]:
    """``{"top1": …, "top5": …}``: share of samples whose class is among the k highest scores (k ≤ C)."""
    out = {}
    ranked = logits.topk(min(max(ks), logits.shape[-1]), dim=-1).indices
    hits = ranked == targets.view(-1, 1)
    for k in ks:
        out[f"top{k}"] = float(hits[:, :k].any(dim=-1).double().mean()) if len(targets) else float("nan")
    return out


def negative_log_likelihood(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean −log softmax(z)_y (natural log)."""
    return float(F.cross_entropy(logits.double(), targets))


def reliability(logits: torch.Tensor, targets: torch.Tensor, bins: int = ECE_BINS) -> dict:
    """Reliability-diagram data and ECE.

    Returns ``bin_edges`` (bins + 1), per bin ``bin_confidence`` (mean confidence; the bin centre when empty),
    ``bin_accuracy`` (0 when empty), ``bin_count``, and ``ece``. A confidence c lies in bin ⌈c·bins⌉ − 1
    (right-closed bins, c = 0 in the first).
    """
    probs = F.softmax(logits.double(), dim=-1)
    confidence, predicted = probs.max(dim=-1)
    correct = (predicted == targets).double()
    index = (torch.ceil(confidence * bins).long() - 1).clamp_(0, bins - 1)
    count = torch.bincount(index, minlength=bins).double()
    conf_sum = torch.bincount(index, weights=confidence, minlength=bins)
    acc_sum = torch.bincount(index, weights=correct, minlength=bins)
    centres = (torch.arange(bins, dtype=torch.float64) + 0.5) / bins
    mean_conf = torch.where(count > 0, conf_sum / count.clamp_min(1), centres)
    mean_acc = torch.where(count > 0, acc_sum / count.clamp_min(1), torch.zeros_like(centres))
    ece = float(((count / max(len(targets), 1)) * (mean_acc - mean_conf).abs()).sum())
    return {"bin_edges": np.linspace(0, 1, bins + 1).tolist(), "bin_confidence": mean_conf.tolist(),
            "bin_accuracy": mean_acc.tolist(), "bin_count": count.long().tolist(), "ece": ece}


def expected_calibration_error(logits: torch.Tensor, targets: torch.Tensor, bins: int = ECE_BINS) -> float:
    return reliability(logits, targets, bins)["ece"]


def per_class_accuracy(predicted: torch.Tensor, targets: torch.Tensor, num_classes: int) -> list[float | None]:
    """Accuracy of each class (None for classes absent from ``targets``)."""
    total = torch.bincount(targets, minlength=num_classes)
    hits = torch.bincount(targets[predicted == targets], minlength=num_classes)
    return [float(h) / float(t) if t else None for h, t in zip(hits.tolist(), total.tolist())]


def agreement(predicted: torch.Tensor, reference: torch.Tensor) -> float:
    """Share of samples on which two classifiers predict the same class."""
    return float((predicted == reference).double().mean())


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor, reference: torch.Tensor | None = None,
                           class_names=None, bins: int = ECE_BINS) -> dict:
    """Top-1/top-5, NLL, ECE with reliability data, per-class accuracy and (with ``reference`` predictions,
    e.g. the teacher's) agreement: one JSON-able dict."""
    logits, targets = logits.detach().float().cpu(), targets.detach().long().cpu()
    predicted = logits.argmax(dim=-1)
    names = list(class_names) if class_names is not None else [str(c) for c in range(logits.shape[-1])]
    calibration = reliability(logits, targets, bins)
    out = {**topk_accuracy(logits, targets), "nll": negative_log_likelihood(logits, targets),
           "ece": calibration.pop("ece"), "reliability": calibration, "count": len(targets),
           "per_class_accuracy": dict(zip(names, per_class_accuracy(predicted, targets, logits.shape[-1])))}
    if reference is not None:
        out["agreement"] = agreement(predicted, torch.as_tensor(reference).long().cpu())
    return out
