"""Seeded bootstrap 95% confidence intervals for the headline metrics.

Test sets in this field hold tens to hundreds of images, so a point estimate
alone overstates what is known. Each interval is the percentile interval of
the metric over ``samples`` resamples (with replacement) of the evaluated
images; the same seed gives the same intervals.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score


def classification_intervals(labels: np.ndarray, probabilities: np.ndarray, class_names: list[str],
                             samples: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Intervals of accuracy, balanced accuracy, macro-F1, per-class precision/recall/F1, ECE and (when computable) one-vs-rest ROC-AUC."""
    labels = np.asarray(labels)
    k = len(class_names)
    predictions = probabilities.argmax(1)
    draws = _resamples(len(labels), samples, seed)
    # One confusion matrix per resample, all at once: counts of (true, predicted) pairs.
    pairs = labels[draws] * k + predictions[draws]
    matrices = np.stack([np.bincount(row, minlength=k * k) for row in pairs]).reshape(samples, k, k).astype(float)
    true_positives = np.diagonal(matrices, axis1=1, axis2=2)
    precision = true_positives / np.maximum(matrices.sum(1), 1)
    recall = true_positives / np.maximum(matrices.sum(2), 1)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    present = matrices.sum(2) > 0
    values = {"accuracy": true_positives.sum(1) / len(labels), "macro_f1": f1.mean(1),
              "balanced_accuracy": (recall * present).sum(1) / np.maximum(present.sum(1), 1),
              "ece": _calibration_errors(labels, probabilities, draws)}
    for i, name in enumerate(class_names):
        values.update({f"precision_{name}": precision[:, i], f"recall_{name}": recall[:, i], f"f1_{name}": f1[:, i]})
    scores = probabilities[:, 1] if k == 2 else probabilities
    aucs = [roc_auc_score(labels[d], scores[d], multi_class="ovr", labels=list(range(k)))
            for d in draws if len(np.unique(labels[d])) == k]
    if len(aucs) >= samples // 2:
        values["roc_auc_ovr"] = np.asarray(aucs)
    return {name: _percentiles(v, level) for name, v in values.items()}


def interval_columns(intervals: dict[str, tuple[float, float]]) -> dict[str, float]:
    """``{name: (low, high)}`` as the table's ``<name>_ci_low`` / ``<name>_ci_high`` columns."""
    return {f"{name}_ci_{end}": value for name, (low, high) in intervals.items() for end, value in (("low", low), ("high", high))}


def mean_interval(values: np.ndarray, samples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Interval of the mean of per-image scores (Dice, IoU)."""
    values = np.asarray(values, dtype=float)
    return _percentiles(values[_resamples(len(values), samples, seed)].mean(1), level)


def ratio_interval(numerators: np.ndarray, denominators: np.ndarray, samples: int = 1000, seed: int = 0,
                   level: float = 0.95) -> tuple[float, float]:
    """Interval of ``sum(numerators) / sum(denominators)`` over the images (a risk among the accepted ones).

    Resamples whose denominators sum to 0 have no ratio and are left out; (nan, nan) when all of them do.
    """
    numerators, denominators = np.asarray(numerators, dtype=float), np.asarray(denominators, dtype=float)
    draws = _resamples(len(numerators), samples, seed)
    totals = denominators[draws].sum(1)
    defined = totals > 0
    if not defined.any():
        return float("nan"), float("nan")
    return _percentiles(numerators[draws].sum(1)[defined] / totals[defined], level)


def _calibration_errors(labels: np.ndarray, probabilities: np.ndarray, draws: np.ndarray, bins: int = 10) -> np.ndarray:
    """The ECE of each resample (the bins of :func:`leukolab.metrics.expected_calibration_error`), all at once."""
    confidence = probabilities.max(1)
    gap = confidence - (probabilities.argmax(1) == labels)
    which = np.clip(np.digitize(confidence, np.linspace(0.0, 1.0, bins + 1)[1:-1], right=True), 0, bins - 1)
    cells = (np.arange(len(draws))[:, None] * bins + which[draws]).ravel()
    per_bin = np.bincount(cells, weights=gap[draws].ravel(), minlength=len(draws) * bins).reshape(len(draws), bins)
    return np.abs(per_bin).sum(1) / draws.shape[1]


def _resamples(n: int, samples: int, seed: int) -> np.ndarray:
    if n == 0:
        raise ValueError("cannot bootstrap an empty evaluation set")
    return np.random.default_rng(seed).integers(0, n, size=(samples, n))


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def cluster_intervals(labels: np.ndarray, predictions: np.ndarray, clusters: np.ndarray, classes: int,
                      samples: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Intervals of accuracy, balanced accuracy and macro-F1 by a cluster bootstrap: each resample draws whole
    clusters (acquisition blocks, duplicate groups, patients) with replacement, so images that share a cluster
    are resampled together and the interval is not narrowed by their likeness."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    _, cluster_index = np.unique(np.asarray(clusters), return_inverse=True)
    count = cluster_index.max() + 1 if len(cluster_index) else 0
    draws = _resamples(count, samples, seed)
    flat = (np.arange(samples)[:, None] * count + draws).ravel()
    times = np.bincount(flat, minlength=samples * count).reshape(samples, count).astype(float)  # draws of each cluster
    pairs = np.zeros((len(labels), classes * classes))
    pairs[np.arange(len(labels)), labels * classes + predictions] = 1
    matrices = (times[:, cluster_index] @ pairs).reshape(samples, classes, classes)
    return {name: _percentiles(values, level) for name, values in confusion_scores(matrices).items()}


def confusion_scores(matrices: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy (mean recall over the classes present) and macro-F1 of confusion matrices
    ``(..., true, predicted)``."""
    true_positives = np.diagonal(matrices, axis1=-2, axis2=-1)
    actual, predicted = matrices.sum(-1), matrices.sum(-2)
    recall = true_positives / np.maximum(actual, 1e-12)
    precision = true_positives / np.maximum(predicted, 1e-12)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    present = actual > 0
    return {"accuracy": true_positives.sum(-1) / np.maximum(matrices.sum((-2, -1)), 1e-12),
            "balanced_accuracy": (recall * present).sum(-1) / np.maximum(present.sum(-1), 1),
            "macro_f1": (f1 * present).sum(-1) / np.maximum(present.sum(-1), 1)}
