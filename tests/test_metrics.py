"""Metrics against hand-computed values."""

import numpy as np
import pytest

from leukolab.metrics.intervals import classification_intervals, mean_interval
from leukolab.metrics.scores import classification_metrics, expected_calibration_error, reliability_table, segmentation_metrics
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


def test_calibration_error_by_hand():
    labels = np.array([0, 0, 0, 0, 1])
    # every prediction says class 0 with 0.8 confidence: 4 of 5 right, so perfectly calibrated
    calibrated = np.tile([0.8, 0.2], (5, 1))
    assert expected_calibration_error(labels, calibrated) == pytest.approx(0.0)
    # 0.95 confidence, 0.8 accuracy: the gap is 0.15
    overconfident = np.tile([0.95, 0.05], (5, 1))
    assert expected_calibration_error(labels, overconfident) == pytest.approx(0.15)
    table = reliability_table(labels, overconfident)
    assert table["count"].sum() == 5 and table.dropna()["accuracy"].tolist() == [0.8]


def test_bootstrap_intervals_are_seeded_and_hold_the_estimate():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 120)
    probabilities = np.eye(3)[np.where(rng.random(120) < 0.8, labels, (labels + 1) % 3)] * 0.7 + 0.1
    first = classification_intervals(labels, probabilities, ["a", "b", "c"], samples=400, seed=1)
    assert first == classification_intervals(labels, probabilities, ["a", "b", "c"], samples=400, seed=1)
    estimate = classification_metrics(labels, probabilities, ["a", "b", "c"])
    for name in ("accuracy", "macro_f1", "f1_a", "recall_c", "roc_auc_ovr"):
        low, high = first[name]
        assert low <= estimate[name] <= high and high - low < 0.3, name
    small = classification_intervals(labels[:30], probabilities[:30], ["a", "b", "c"], samples=400, seed=1)
    assert small["accuracy"][1] - small["accuracy"][0] > first["accuracy"][1] - first["accuracy"][0]
    dice = rng.uniform(0.8, 1.0, 50)
    low, high = mean_interval(dice, samples=400, seed=1)
    assert low < dice.mean() < high


def test_the_ece_interval_is_that_of_the_resampled_ece():
    from leukolab.metrics.intervals import _calibration_errors, _resamples

    rng = np.random.default_rng(2)
    labels, probabilities = rng.integers(0, 3, 80), rng.dirichlet([1, 1, 1], 80)
    draws = _resamples(80, 20, seed=5)
    by_hand = [expected_calibration_error(labels[d], probabilities[d]) for d in draws]
    assert _calibration_errors(labels, probabilities, draws) == pytest.approx(by_hand)
    low, high = classification_intervals(labels, probabilities, ["a", "b", "c"], samples=400, seed=1)["ece"]
    assert low < expected_calibration_error(labels, probabilities) < high
