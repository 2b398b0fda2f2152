"""Classification and segmentation metrics, as flat dicts ready for MLflow."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, precision_recall_fscore_support, roc_auc_score


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray, class_names: list[str]) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro-F1, per-class precision/recall/F1, one-vs-rest ROC-AUC (when every class is present), ECE."""
    labels = np.asarray(labels)
    predictions = probabilities.argmax(1)
    indices = list(range(len(class_names)))
    precision, recall, f1, _ = precision_recall_fscore_support(labels, predictions, labels=indices, zero_division=0)
    metrics = {
        "accuracy": float(accuracy_score(labels, predictions)),
        "balanced_accuracy": float(balanced_accuracy_score(labels, predictions)),
        "macro_f1": float(f1_score(labels, predictions, labels=indices, average="macro", zero_division=0)),
    }
    for i, name in enumerate(class_names):
        metrics[f"precision_{name}"] = float(precision[i])
        metrics[f"recall_{name}"] = float(recall[i])
        metrics[f"f1_{name}"] = float(f1[i])
    if len(np.unique(labels)) == len(class_names):
        scores = probabilities[:, 1] if len(class_names) == 2 else probabilities  # binary data sets (ALL-IDB)
        metrics["roc_auc_ovr"] = float(roc_auc_score(labels, scores, multi_class="ovr", labels=indices))
    metrics["ece"] = expected_calibration_error(labels, probabilities)
    return metrics


def segmentation_scores(mask_probabilities: np.ndarray, masks: np.ndarray, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Per-image Dice and IoU of thresholded predictions (an empty prediction of an empty mask scores 1)."""
    predicted = mask_probabilities.reshape(len(masks), -1) >= threshold
    truth = masks.reshape(len(masks), -1) > 0
    intersection = (predicted & truth).sum(1)
    total = predicted.sum(1) + truth.sum(1)
    union = (predicted | truth).sum(1)
    dice = np.where(total > 0, 2 * intersection / np.maximum(total, 1), 1.0)
    iou = np.where(union > 0, intersection / np.maximum(union, 1), 1.0)
    return dice, iou


def segmentation_metrics(mask_probabilities: np.ndarray, masks: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Mean per-image Dice and IoU."""
    dice, iou = segmentation_scores(mask_probabilities, masks, threshold)
    return {"dice": float(dice.mean()), "iou": float(iou.mean())}


def reliability_table(labels: np.ndarray, probabilities: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Top-label calibration by equal-width confidence bins: count, mean confidence and accuracy per bin."""
    confidence = probabilities.max(1)
    correct = probabilities.argmax(1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    rows = [{"low": edges[b], "high": edges[b + 1], "count": int((which == b).sum()),
             "confidence": float(confidence[which == b].mean()) if (which == b).any() else np.nan,
             "accuracy": float(correct[which == b].mean()) if (which == b).any() else np.nan} for b in range(bins)]
    return pd.DataFrame(rows)


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int = 10) -> float:
    """ECE: the count-weighted mean gap between confidence and accuracy over the reliability bins."""
    table = reliability_table(labels, probabilities, bins).dropna()
    return float((table["count"] * (table["confidence"] - table["accuracy"]).abs()).sum() / max(len(labels), 1))
