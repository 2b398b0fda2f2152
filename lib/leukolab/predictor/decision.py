"""The referral rule a published version carries: accept a prediction when its confidence reaches the threshold.

``30_evaluate`` chooses the threshold on the selection split (:mod:`leukolab.evaluation.selective`),
``40_publish`` records it on the registered version as the tag ``referral_threshold`` (with the target risk and
the coverage it had, :mod:`leukolab.publishing.referral`), and loading the version by URI reads that tag
(:func:`leukolab.predictor.uri.resolve_model`). One comparison everywhere:
a prediction is accepted when ``confidence >= threshold``, referred to a haematologist otherwise; a version
without the tag has no threshold and accepts every prediction.

Before the confidence, the out-of-distribution check the model carries (:mod:`leukolab.ood`) is asked: an image it
finds out of distribution is referred whatever its confidence. :func:`decide_answer` gives every consumer the same
``(decision, reason)``: ``reason`` is ``out_of_distribution`` or ``low_confidence`` for a referral, None otherwise.
"""

from __future__ import annotations

import numpy as np

ACCEPT, REFER = "accept", "refer"
LOW_CONFIDENCE, OUT_OF_DISTRIBUTION = "low_confidence", "out_of_distribution"
REFERRAL_REASONS = (OUT_OF_DISTRIBUTION, LOW_CONFIDENCE)
THRESHOLD_TAG = "referral_threshold"


def accepts(confidence, threshold: float):
    """Whether ``confidence`` (a number or an array) is accepted at ``threshold``: ``confidence >= threshold``."""
    return np.asarray(confidence) >= threshold


def decide(confidence: float | None, threshold: float | None) -> str:
    """``accept`` or ``refer``; ``accept`` without a threshold, or without a confidence (a model that only segments)."""
    if threshold is None or confidence is None:
        return ACCEPT
    return ACCEPT if accepts(confidence, threshold) else REFER


def decide_answer(answer: dict, threshold: float | None) -> tuple[str, str | None]:
    """``(decision, reason)`` of one model answer: ``refer, out_of_distribution`` when its ``out_of_distribution``
    is true, else ``refer, low_confidence`` under ``threshold``, else ``accept, None``."""
    if answer.get("out_of_distribution"):
        return REFER, OUT_OF_DISTRIBUTION
    decision = decide(answer.get("confidence"), threshold)
    return decision, LOW_CONFIDENCE if decision == REFER else None


def threshold_from_tags(tags: dict[str, str], version: str = "") -> float | None:
    """The ``referral_threshold`` tag of a registered version as a number, None when it has none."""
    value = tags.get(THRESHOLD_TAG)
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"the {THRESHOLD_TAG} tag of model version {version or '?'} is {value!r}, not a number") from None
