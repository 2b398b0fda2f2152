"""ROC and precision-recall curves, one class against the rest: each class's curve with its area, and the figures
``30_evaluate`` logs and the model card shows."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

from leukolab.plots import plt  # the backend plots chose (inline in a notebook, Agg elsewhere)


def one_vs_rest_curves(labels, probabilities: np.ndarray, class_names: list[str]) -> dict[str, dict]:
    """Per class present among ``labels`` (and absent from none of them): ``roc`` (fpr, tpr, auc), ``pr`` (recall,
    precision, average precision) and ``prevalence`` (the share of positives, a chance-level PR curve)."""
    labels = np.asarray(labels)
    curves = {}
    for index, name in enumerate(class_names):
        positive = labels == index
        if positive.all() or not positive.any():  # a curve needs both positives and negatives
            continue
        scores = probabilities[:, index]
        fpr, tpr, _ = roc_curve(positive, scores)
        precision, recall, _ = precision_recall_curve(positive, scores)
        curves[name] = {"roc": (fpr, tpr, float(auc(fpr, tpr))),
                        "pr": (recall, precision, float(average_precision_score(positive, scores))),
                        "prevalence": float(positive.mean())}
    return curves


def roc_figure(labels, probabilities: np.ndarray, class_names: list[str], title: str = "ROC, one class vs rest"):
    """Each class's ROC curve with its AUC; the diagonal is chance."""
    figure, axes = plt.subplots(figsize=(5.5, 5))
    for name, curve in one_vs_rest_curves(labels, probabilities, class_names).items():
        fpr, tpr, area = curve["roc"]
        axes.plot(fpr, tpr, label=f"{name} (AUC {area:.3f})")
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    _finish(axes, "false positive rate", "true positive rate (recall)", title)
    return figure


def precision_recall_figure(labels, probabilities: np.ndarray, class_names: list[str],
                            title: str = "precision-recall, one class vs rest"):
    """Each class's precision-recall curve with its average precision; a dotted line at its prevalence is chance."""
    figure, axes = plt.subplots(figsize=(5.5, 5))
    for name, curve in one_vs_rest_curves(labels, probabilities, class_names).items():
        recall, precision, average = curve["pr"]
        line, = axes.step(recall, precision, where="post", label=f"{name} (AP {average:.3f})")
        axes.axhline(curve["prevalence"], color=line.get_color(), linestyle=":", linewidth=0.8)
    _finish(axes, "recall", "precision", title)
    return figure


def _finish(axes, xlabel: str, ylabel: str, title: str) -> None:
    axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel=xlabel, ylabel=ylabel, title=title)
    axes.legend(loc="lower right", fontsize="small")
    axes.figure.tight_layout()
