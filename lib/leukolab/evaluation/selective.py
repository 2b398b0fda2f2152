"""Selective prediction: the risk–coverage curve of a confidence score and the referral threshold chosen on it.

At a threshold ``t`` the images with ``confidence >= t`` are accepted (the rule of
:mod:`leukolab.publishing.referral`, which the server applies too) and the others are referred to a
haematologist. Coverage is the fraction accepted, risk the error rate among the accepted ones. The threshold is
chosen on the selection split (``val``) only: the one with the largest coverage whose risk is at most
``target_risk``; it is always a confidence seen there (the lowest one accepted), and tied confidences are
accepted or referred together. When no threshold reaches the target, every prediction is referred: the
threshold is just above the largest confidence and above 1 (no probability reaches it), the coverage 0. The
report split (``test``) then measures coverage and risk at that threshold, with bootstrap intervals, overall and
per true class.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from leukolab.metrics.intervals import mean_interval, ratio_interval
from leukolab.predictor.decision import accepts


def risk_coverage_curve(confidence, correct) -> pd.DataFrame:
    """One row per distinct confidence, highest first: ``threshold`` (that confidence), ``accepted`` and ``errors``
    (counts at ``confidence >= threshold``), ``coverage`` and ``risk``."""
    confidence, correct = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=bool)
    if confidence.shape != correct.shape or confidence.ndim != 1 or not len(confidence):
        raise ValueError(f"need one confidence and one correctness per image, got shapes {confidence.shape} and {correct.shape}")
    if not np.isfinite(confidence).all():
        raise ValueError("confidences must be finite numbers")
    order = np.argsort(-confidence, kind="stable")
    ranked, errors = confidence[order], np.cumsum(~correct[order])
    last_of_each = np.flatnonzero(np.r_[ranked[1:] != ranked[:-1], True])  # the last image of each run of ties
    accepted = last_of_each + 1
    return pd.DataFrame({"threshold": ranked[last_of_each], "accepted": accepted, "errors": errors[last_of_each],
                         "coverage": accepted / len(confidence), "risk": errors[last_of_each] / accepted})


def choose_threshold(confidence, correct, target_risk: float) -> dict:
    """The threshold with the largest coverage whose risk is at most ``target_risk`` (see the module docstring).

    Returns ``{"threshold", "target_risk", "reached", "coverage", "risk", "accepted", "images", "note"}``; ``risk`` is
    None when nothing is accepted.
    """
    if not 0 <= target_risk < 1:
        raise ValueError(f"target_risk must be in [0, 1), got {target_risk}")
    curve = risk_coverage_curve(confidence, correct)
    within = curve[curve["errors"] <= target_risk * curve["accepted"] + 1e-9]  # risk <= target, without rounding noise
    images = len(np.asarray(confidence))
    if within.empty:
        above_all = np.nextafter(max(float(curve["threshold"].iloc[0]), 1.0), np.inf)  # above every probability
        return {"threshold": float(above_all), "target_risk": target_risk, "reached": False,
                "coverage": 0.0, "risk": None, "accepted": 0, "images": images,
                "note": f"no threshold keeps the risk at or below {target_risk}: every prediction is referred"}
    best = within.iloc[-1]  # coverage grows down the curve
    return {"threshold": float(best["threshold"]), "target_risk": target_risk, "reached": True,
            "coverage": float(best["coverage"]), "risk": float(best["risk"]), "accepted": int(best["accepted"]),
            "images": images, "note": f"risk {best['risk']:.4f} at most {target_risk} with coverage {best['coverage']:.4f}"}


def at_threshold(confidence, correct, threshold: float, samples: int = 1000, seed: int = 0) -> dict:
    """Coverage and risk at ``threshold`` with bootstrap 95% intervals (``<name>_ci_low``/``_ci_high``; none when
    ``samples`` is 0); ``risk`` and its interval are None where nothing is accepted."""
    correct = np.asarray(correct, dtype=bool)
    accepted = accepts(np.asarray(confidence, dtype=float), threshold)
    taken, wrong = int(accepted.sum()), accepted & ~correct
    result = {"images": len(correct), "accepted": taken, "referred": len(correct) - taken,
              "coverage": taken / len(correct), "risk": float(wrong.sum() / taken) if taken else None}
    if samples:
        intervals = {"coverage": mean_interval(accepted, samples, seed), "risk": ratio_interval(wrong, accepted, samples, seed)}
        for name, (low, high) in intervals.items():
            result.update({f"{name}_ci_low": _number(low), f"{name}_ci_high": _number(high)})
    return result


def referral_report(labels, probabilities: np.ndarray, class_names: list[str], threshold: float, samples: int = 1000,
                    seed: int = 0) -> dict:
    """:func:`at_threshold` of the top-class probability, ``overall`` and ``per_class`` (by true class, classes with images)."""
    labels = np.asarray(labels)
    confidence, correct = probabilities.max(1), probabilities.argmax(1) == labels
    per_class = {name: at_threshold(confidence[labels == i], correct[labels == i], threshold, samples, seed)
                 for i, name in enumerate(class_names) if (labels == i).any()}
    return {"overall": at_threshold(confidence, correct, threshold, samples, seed), "per_class": per_class}


def select_referral(selection: tuple[np.ndarray, np.ndarray], report: tuple[np.ndarray, np.ndarray], class_names: list[str],
                    target_risk: float, selection_split: str = "val", report_split: str = "test", samples: int = 1000,
                    seed: int = 0) -> tuple[dict, pd.DataFrame]:
    """Choose the threshold on ``selection`` and report it on ``report`` (each ``(labels, probabilities)``, the
    probabilities calibrated); returns the stage output's ``referral`` and the selection split's curve."""
    labels, probabilities = selection
    confidence, correct = probabilities.max(1), probabilities.argmax(1) == np.asarray(labels)
    chosen = choose_threshold(confidence, correct, target_risk)
    referral = {"selection_split": selection_split, "report_split": report_split, "target_risk": target_risk,
                "confidence": "top-class probability of the temperature-scaled softmax", "rule": "accept when confidence >= threshold",
                "threshold": chosen["threshold"], "reached": chosen["reached"], "note": chosen["note"],
                "selection": {k: chosen[k] for k in ("coverage", "risk", "accepted", "images")},
                "report": referral_report(*report, class_names, chosen["threshold"], samples, seed)}
    return referral, risk_coverage_curve(confidence, correct)


def referral_metrics(referral: dict) -> dict[str, float]:
    """The numbers of a ``referral`` output as flat MLflow metrics (``referral_threshold``, ``referral_<split>_coverage``, ...)."""
    metrics = {"referral_threshold": referral["threshold"], "referral_target_risk": referral["target_risk"]}
    metrics.update({f"referral_{referral['selection_split']}_{k}": v for k, v in referral["selection"].items()})
    report = referral["report"]
    for scope, values in [("", report["overall"]), *((f"{name}_", v) for name, v in report["per_class"].items())]:
        metrics.update({f"referral_{referral['report_split']}_{scope}{k}": v for k, v in values.items()})
    return {k: float(v) for k, v in metrics.items() if v is not None}


def _number(value: float) -> float | None:
    return None if np.isnan(value) else float(value)
