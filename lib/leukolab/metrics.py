"""Classification and segmentation metrics, as flat dicts ready for MLflow."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support, roc_auc_score


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray, class_names: list[str]) -> dict[str, float]:
    """Accuracy, macro-F1, per-class precision/recall/F1 and one-vs-rest ROC-AUC (when every class is present)."""
    labels = np.asarray(labels)
    predictions = probabilities.argmax(1)
    indices = list(range(len(class_names)))
    precision, recall, f1, _ = precision_recall_fscore_support(labels, predictions, labels=indices, zero_division=0)
    metrics = {
        "accuracy": float(accuracy_score(labels, predictions)),
        "macro_f1": float(f1_score(labels, predictions, labels=indices, average="macro", zero_division=0)),
    }
    for i, name in enumerate(class_names):
        metrics[f"precision_{name}"] = float(precision[i])
        metrics[f"recall_{name}"] = float(recall[i])
        metrics[f"f1_{name}"] = float(f1[i])
    if len(np.unique(labels)) == len(class_names):
        scores = probabilities[:, 1] if len(class_names) == 2 else probabilities  # binary data sets (ALL-IDB)
        metrics["roc_auc_ovr"] = float(roc_auc_score(labels, scores, multi_class="ovr", labels=indices))
    return metrics


def segmentation_metrics(mask_probabilities: np.ndarray, masks: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Mean per-image Dice and IoU of thresholded predictions (an empty prediction of an empty mask scores 1)."""
    predicted = mask_probabilities.reshape(len(masks), -1) >= threshold
    truth = masks.reshape(len(masks), -1) > 0
    intersection = (predicted & truth).sum(1)
    total = predicted.sum(1) + truth.sum(1)
    union = (predicted | truth).sum(1)
    dice = np.where(total > 0, 2 * intersection / np.maximum(total, 1), 1.0)
    iou = np.where(union > 0, intersection / np.maximum(union, 1), 1.0)
    return {"dice": float(dice.mean()), "iou": float(iou.mean())}
