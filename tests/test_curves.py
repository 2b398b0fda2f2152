"""ROC and precision-recall curves, one class against the rest."""

import numpy as np
import pytest

from leukolab.curves import one_vs_rest_curves, precision_recall_figure, roc_figure

CLASSES = ["Benign", "Early", "Pre", "Pro"]


def test_a_perfect_ranking_has_area_one_and_a_shuffled_one_about_a_half():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 2000)  # no Pro image: no Pro curve
    perfect = np.eye(4)[labels] * 0.7 + 0.1
    curves = one_vs_rest_curves(labels, perfect, CLASSES)
    assert set(curves) == {"Benign", "Early", "Pre"}
    assert all(c["roc"][2] == 1.0 and c["pr"][2] == 1.0 for c in curves.values())
    noise = rng.dirichlet(np.ones(4), len(labels))
    for name, curve in one_vs_rest_curves(labels, noise, CLASSES).items():
        assert curve["roc"][2] == pytest.approx(0.5, abs=0.05)
        assert curve["pr"][2] == pytest.approx(curve["prevalence"], abs=0.05), "chance AP is the prevalence"


def test_the_figures_name_each_class_with_its_area():
    labels = np.array([0, 1, 2, 3] * 5)
    probabilities = np.eye(4)[labels] * 0.6 + 0.1
    roc = roc_figure(labels, probabilities, CLASSES)
    pr = precision_recall_figure(labels, probabilities, CLASSES)
    assert [t.get_text() for t in roc.axes[0].get_legend().get_texts()][:4] == [f"{c} (AUC 1.000)" for c in CLASSES]
    assert [t.get_text() for t in pr.axes[0].get_legend().get_texts()] == [f"{c} (AP 1.000)" for c in CLASSES]
