"""Heatmaps for the evaluation report: which images to explain (the champion's most confident mistakes and one correct
image per class) and their Grad-CAM heatmaps, for :func:`leukolab.plots.heatmap_grid`."""

from __future__ import annotations

import numpy as np

from leukolab.predictor.smear_model import SmearModel


def heatmap_examples(labels, probabilities: np.ndarray, mistakes: int = 4) -> list[int]:
    """Indices of the ``mistakes`` most confident mistakes, then of the most confident correct image of each class
    (a class with none is left out)."""
    labels, predictions, confidence = np.asarray(labels), probabilities.argmax(1), probabilities.max(1)
    wrong = np.flatnonzero(predictions != labels)
    chosen = wrong[np.argsort(-confidence[wrong], kind="stable")][:mistakes].tolist()
    for label in range(probabilities.shape[1]):
        right = np.flatnonzero((predictions == labels) & (labels == label))
        if len(right):
            chosen.append(int(right[np.argmax(confidence[right])]))
    return chosen


def explained_examples(model: SmearModel, images, labels, probabilities: np.ndarray,
                       mistakes: int = 4) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """The images of :func:`heatmap_examples` (uint8 NCHW ``images`` at the model's input size, as evaluation feeds
    them) as HxWx3 arrays, their heatmaps for the predicted class, and titles ``true → predicted (confidence)``."""
    chosen = heatmap_examples(labels, probabilities, mistakes)
    arrays = [np.ascontiguousarray(np.asarray(images[i]).transpose(1, 2, 0)) for i in chosen]
    predicted = probabilities.argmax(1)
    heatmaps = model.explain_prepared(arrays, [int(predicted[i]) for i in chosen]) if chosen else []
    names = model.class_names
    titles = [f"{'mistake' if predicted[i] != labels[i] else 'correct'}: {names[labels[i]]} → {names[predicted[i]]}\n"
              f"({probabilities[i].max():.2f})" for i in chosen]
    return arrays, heatmaps, titles
