"""Gated test-time augmentation, as a loaded model applies it: the eight views only for images whose plain
confidence is under the version's ``tta_gate`` tag.

A model with ``inference.tta`` averages eight rotations/mirrors of every image: eight forward passes' worth of work
per image. Most images' plain answer (one view) is already the averaged one: the gate sends only the images whose
plain confidence is under ``tta_gate`` through the eight views (together, in one pass), and answers the others from
the plain pass. ``40_publish`` chooses the gate (:mod:`leukolab.publishing.tta`) and records it on the version as the
tag ``tta_gate`` beside ``referral_threshold``; loading the version by URI reads it. Without the tag (and for
``mlflow.pyfunc`` users) every image gets the eight views.
"""

from __future__ import annotations

import numpy as np

TTA_GATE_TAG = "tta_gate"


def gated_outputs(plain: dict[str, np.ndarray], augmented_of, gate: float) -> dict[str, np.ndarray]:
    """``plain`` outputs (``probabilities``, N x classes, and any others per row) with the rows whose plain
    confidence is under ``gate`` replaced by ``augmented_of(rows)`` (a boolean mask in, their TTA outputs out; not
    called when no row is under the gate)."""
    unsure = plain["probabilities"].max(1) < gate
    if not unsure.any():
        return plain
    augmented = augmented_of(unsure)
    merged = {key: value.copy() for key, value in plain.items()}
    for key, value in merged.items():
        value[unsure] = augmented[key]
    return merged


def gate_from_tags(tags: dict[str, str], version: str = "") -> float | None:
    """The ``tta_gate`` tag of a registered version as a number, None when it has none."""
    value = tags.get(TTA_GATE_TAG)
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"the {TTA_GATE_TAG} tag of model version {version or '?'} is {value!r}, not a number") from None
