"""Metrics against hand-computed values."""

import numpy as np
import pytest

from leukolab.metrics import classification_metrics, segmentation_metrics
from leukolab.training.calibration import fit_temperature


def test_classification_metrics_by_hand():
    labels = np.array([0, 0, 1, 1])
    probabilities = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7]])
    metrics = classification_metrics(labels, probabilities, ["A", "B"])
    assert metrics["accuracy"] == 0.75
    assert metrics["recall_A"] == 0.5 and metrics["precision_B"] == pytest.approx(2 / 3)
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert metrics["roc_auc_ovr"] == 1.0


def test_segmentation_metrics_by_hand():
    truth = np.zeros((2, 1, 4, 4))
    truth[0, 0, :2] = 1
    predicted = np.zeros((2, 1, 4, 4))
    predicted[0, 0, :1] = 0.9
    metrics = segmentation_metrics(predicted, truth)
    # image 0: dice 2*4/(4+8) = 2/3, iou 4/8; image 1: both empty = 1
    assert metrics["dice"] == pytest.approx((2 / 3 + 1) / 2)
    assert metrics["iou"] == pytest.approx((0.5 + 1) / 2)


def test_temperature_softens_overconfident_logits():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 500)
    logits = rng.normal(size=(500, 3))
    logits[np.arange(500), labels] += 1.0
    assert fit_temperature(logits * 5, labels) > 2.0
