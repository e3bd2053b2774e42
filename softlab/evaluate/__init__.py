"""Evaluation of students and teachers: top-1/top-5, NLL, ECE (15 bins) with reliability data, per-class
accuracy and agreement with a reference classifier (the teacher)."""
from __future__ import annotations

from .metrics import (ECE_BINS, agreement, classification_metrics, expected_calibration_error,
                      negative_log_likelihood, per_class_accuracy, reliability, topk_accuracy)
from .predict import EvalImages, predict


def evaluate(model, data, reference=None, batch_size: int = 1000, device=None, progress: bool = False) -> dict:
    """Metrics of ``model`` (a Student or a Teacher) on ``data`` (a data set or :class:`EvalImages`).

    ``reference`` is another classifier (e.g. the teacher) or its predictions ``[N]`` on the same images, for
    the agreement rate.
    """
    images = data if isinstance(data, EvalImages) else EvalImages.for_classifier(data, model)
    logits = predict(model, images, batch_size, device, progress=progress)
    if reference is not None and not hasattr(reference, "forward"):
        reference_predictions = reference
    elif reference is not None:
        reference_predictions = predict(reference, images, batch_size, device, progress=progress).argmax(-1)
    else:
        reference_predictions = None
    return classification_metrics(logits, images.targets, reference_predictions, images.class_names or None)


def evaluate_teacher(spec, data="fashion-mnist:test", limit=None, device=None, progress: bool = True) -> dict:
    """:func:`evaluate` for a teacher given by spec (or a built Teacher) on a data set given by spec."""
    from ..data import load_dataset
    from ..teachers import create_teacher

    teacher = create_teacher(spec, device=device)
    dataset = load_dataset(data, limit=limit) if isinstance(data, str) else data
    return {"model": teacher.spec, "data": dataset.name, **evaluate(teacher, dataset, device=device,
                                                                     progress=progress)}


__all__ = ["ECE_BINS", "EvalImages", "agreement", "classification_metrics", "evaluate", "evaluate_teacher",
           "expected_calibration_error", "negative_log_likelihood", "per_class_accuracy", "predict", "reliability",
           "topk_accuracy"]
