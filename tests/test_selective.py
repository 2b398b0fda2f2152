"""Selective prediction: the risk–coverage curve, the threshold chosen on it, its report with intervals, the rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from leukolab.evaluation.selective import (at_threshold, choose_threshold, referral_metrics, referral_report,
                                           risk_coverage_curve, select_referral)
from leukolab.metrics.intervals import ratio_interval
from leukolab.predictor.decision import THRESHOLD_TAG, decide, threshold_from_tags
from leukolab.publishing.referral import referral_tags

# Highest confidence first; the fourth is the first mistake, so risk rises to 1/4 and falls back to 1/5.
CONFIDENCE = np.array([0.6, 0.99, 0.8, 0.95, 0.7, 0.9])
CORRECT = np.array([False, True, False, True, True, True])


def test_the_curve_by_hand():
    curve = risk_coverage_curve(CONFIDENCE, CORRECT)
    assert list(curve["threshold"]) == [0.99, 0.95, 0.9, 0.8, 0.7, 0.6]
    assert list(curve["accepted"]) == [1, 2, 3, 4, 5, 6] and list(curve["errors"]) == [0, 0, 0, 1, 1, 2]
    assert curve["coverage"].tolist() == pytest.approx([1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1])
    assert curve["risk"].tolist() == pytest.approx([0, 0, 0, 1 / 4, 1 / 5, 2 / 6])


@pytest.mark.parametrize("target, threshold, coverage", [
    (0.0, 0.9, 0.5),        # no mistake allowed: the three most confident
    (0.2, 0.7, 5 / 6),      # risk exactly at the target is kept; 0.8 (risk 1/4) is skipped, 0.7 (1/5) is not
    (0.25, 0.7, 5 / 6),     # the largest coverage wins, not the first threshold within the target
    (0.5, 0.6, 1.0),        # everything
])
def test_the_threshold_with_the_largest_coverage_within_the_target(target, threshold, coverage):
    chosen = choose_threshold(CONFIDENCE, CORRECT, target)
    assert chosen["reached"] and chosen["threshold"] == threshold and chosen["coverage"] == pytest.approx(coverage)
    assert chosen["risk"] <= target and chosen["images"] == 6
    # the chosen threshold accepts exactly the images the curve counted
    assert at_threshold(CONFIDENCE, CORRECT, chosen["threshold"], samples=0)["coverage"] == pytest.approx(coverage)


def test_one_mistake_in_a_hundred_meets_a_target_of_one_percent():
    confidence = np.linspace(1.0, 0.5, 101)
    correct = np.ones(101, bool)
    correct[[50, 100]] = False  # the 51st and the last
    chosen = choose_threshold(confidence, correct, 0.01)
    assert chosen["accepted"] == 100 and chosen["risk"] == pytest.approx(0.01)


def test_tied_confidences_are_accepted_or_referred_together():
    curve = risk_coverage_curve([0.9, 0.8, 0.9], [True, True, False])
    assert list(curve["threshold"]) == [0.9, 0.8] and list(curve["accepted"]) == [2, 3]
    chosen = choose_threshold([0.9, 0.8, 0.9], [True, True, False], 0.4)
    assert (chosen["threshold"], chosen["accepted"]) == (0.8, 3)


def test_when_no_threshold_reaches_the_target_everything_is_referred():
    chosen = choose_threshold([1.0, 0.9, 0.8], [False, True, True], 0.01)
    assert not chosen["reached"] and chosen["coverage"] == 0 and chosen["risk"] is None and chosen["accepted"] == 0
    assert chosen["threshold"] > 1.0 and "every prediction is referred" in chosen["note"]
    assert decide(1.0, chosen["threshold"]) == "refer"
    report = at_threshold([1.0, 0.5], [True, True], chosen["threshold"])
    assert report["accepted"] == 0 and report["risk"] is None and report["risk_ci_low"] is None


@pytest.mark.parametrize("confidence, correct, target, match", [
    ([], [], 0.01, "one confidence and one correctness"),
    ([0.5, 0.6], [True], 0.01, "one confidence and one correctness"),
    ([0.5, float("nan")], [True, True], 0.01, "finite"),
    ([0.5], [True], 1.0, r"target_risk must be in \[0, 1\)"),
    ([0.5], [True], -0.1, "target_risk"),
])
def test_bad_input_is_a_clear_error(confidence, correct, target, match):
    with pytest.raises(ValueError, match=match):
        choose_threshold(confidence, correct, target)


def test_coverage_and_risk_at_a_threshold_with_seeded_intervals():
    confidence = np.tile(CONFIDENCE, 10)
    correct = np.tile(CORRECT, 10)
    report = at_threshold(confidence, correct, 0.8, samples=300, seed=3)
    assert (report["images"], report["accepted"], report["referred"]) == (60, 40, 20)
    assert report["coverage"] == pytest.approx(4 / 6) and report["risk"] == pytest.approx(1 / 4)
    assert report["coverage_ci_low"] < report["coverage"] < report["coverage_ci_high"]
    assert report["risk_ci_low"] < report["risk"] < report["risk_ci_high"]
    assert report == at_threshold(confidence, correct, 0.8, samples=300, seed=3)
    assert "risk_ci_low" not in at_threshold(confidence, correct, 0.8, samples=0)


def test_ratio_interval_leaves_out_resamples_without_a_denominator():
    assert all(math.isnan(v) for v in ratio_interval([0, 0], [0, 0], samples=50))
    low, high = ratio_interval([1, 0, 0, 0], [1, 1, 0, 0], samples=500, seed=1)
    assert 0 <= low < 0.5 < high <= 1  # the ratio 1/2 of the sample, resampled


def test_the_report_is_per_true_class_and_flattens_to_metrics():
    labels = np.array([0, 0, 1, 1, 1])
    probabilities = np.array([[0.95, 0.05], [0.6, 0.4], [0.1, 0.9], [0.7, 0.3], [0.45, 0.55]])
    report = referral_report(labels, probabilities, ["Benign", "Pro", "Unseen"], 0.7, samples=0)
    assert set(report["per_class"]) == {"Benign", "Pro"}  # a class without images is left out
    assert report["per_class"]["Benign"] == {"images": 2, "accepted": 1, "referred": 1, "coverage": 0.5, "risk": 0.0}
    assert report["per_class"]["Pro"]["accepted"] == 2 and report["per_class"]["Pro"]["risk"] == 0.5
    referral, curve = select_referral((labels, probabilities), (labels, probabilities), ["Benign", "Pro", "Unseen"], 0.0,
                                      samples=0)
    assert referral["threshold"] == 0.9 and referral["selection"]["coverage"] == pytest.approx(0.4) and len(curve) == 5
    metrics = referral_metrics(referral)
    assert metrics["referral_threshold"] == 0.9 and metrics["referral_val_coverage"] == pytest.approx(0.4)
    assert metrics["referral_test_Pro_accepted"] == 1 and all(isinstance(v, float) for v in metrics.values())


def test_the_rule_and_the_version_tags():
    assert decide(0.8, 0.8) == "accept" and decide(np.nextafter(0.8, 0), 0.8) == "refer"
    assert decide(0.1, None) == "accept" and decide(None, 0.5) == "accept"
    referral, _ = select_referral((np.array([0, 1, 1]), np.array([[0.7, 0.3], [1 / 3, 2 / 3], [0.2, 0.8]])),
                                  (np.array([0, 1]), np.array([[0.9, 0.1], [0.6, 0.4]])), ["a", "b"], 0.0, samples=0)
    tags = referral_tags(referral)
    assert threshold_from_tags(tags) == referral["threshold"] == 2 / 3  # exact: the server compares with it
    assert tags["referral_val_coverage"] == "1.0000" and tags["referral_test_risk"] == "0.0000"
    assert threshold_from_tags({}) is None
    with pytest.raises(ValueError, match=f"the {THRESHOLD_TAG} tag of model version 3 is 'high', not a number"):
        threshold_from_tags({THRESHOLD_TAG: "high"}, "3")


def test_the_plot_marks_the_target_the_chosen_point_and_the_report(tmp_path):
    from leukolab.plots import risk_coverage

    labels = np.tile([0, 0, 1, 0], 10)  # the third (confidence 0.8) is wrong
    probabilities = np.column_stack([CONFIDENCE[:4], 1 - CONFIDENCE[:4]])
    probabilities = np.tile(probabilities, (10, 1)) * np.linspace(0.9, 1.0, 40)[:, None]
    referral, curve = select_referral((labels, probabilities), (labels, probabilities), ["a", "b"], 0.3, samples=100)
    figure = risk_coverage(curve, referral)
    legend = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert legend == ["val (selection)", "target risk 0.3", f"threshold {referral['threshold']:.3f} on val",
                      "same threshold on test (95% CI)"]
    figure.savefig(tmp_path / "risk_coverage.png")
    unreached, curve = select_referral((labels, 1 - probabilities), (labels, probabilities), ["a", "b"], 0.0, samples=0)
    legend = [text.get_text() for text in risk_coverage(curve, unreached).axes[0].get_legend().get_texts()]
    assert not unreached["reached"] and "no threshold reaches the target: all referred" in legend
