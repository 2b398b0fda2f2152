"""Gated test-time augmentation: the eight views only where the plain answer could differ from theirs.

A model with ``inference.tta`` averages eight rotations/mirrors of every image: eight forward passes' worth of work
per image. Most images' plain answer (one view) is already the averaged one: the gate sends only the images whose
plain confidence is under ``tta_gate`` through the eight views (together, in one pass), and answers the others from
the plain pass. :func:`choose_tta_gate` picks the lowest gate at which, on the selection split, every image gets the
same class and the same accept/refer decision as with full TTA, plus a margin; ``40_publish`` records it on the
version as the tag ``tta_gate`` beside ``referral_threshold``, and the server applies it. Without the tag (and for
``mlflow.pyfunc`` users) every image gets the eight views, as before.
"""

from __future__ import annotations

import logging

import numpy as np

from leukolab.models.factory import without_tta

log = logging.getLogger(__name__)
TTA_GATE_TAG = "tta_gate"
DEFAULT_MARGIN = 0.05
"""Added to the highest plain confidence that changed an answer on the selection split: images a little more
confident than any that changed there still get the eight views."""


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


def answers(probabilities: np.ndarray, threshold: float | None) -> list[tuple[int, bool]]:
    """(class, accepted) per row: what a consumer acts on."""
    confidence = probabilities.max(1)
    accepted = np.ones(len(probabilities), bool) if threshold is None else confidence >= threshold
    return list(zip(probabilities.argmax(1).tolist(), accepted.tolist()))


def choose_tta_gate(plain: np.ndarray, augmented: np.ndarray, threshold: float | None,
                    margin: float = DEFAULT_MARGIN) -> dict:
    """The gate for a model's plain and full-TTA probabilities on the selection split: ``gate`` (the highest plain
    confidence whose answer TTA changed, plus ``margin``; 0 when TTA changed none), the share of those images that
    would still take the eight views (``tta_share``), and how many answers TTA changed (``changed``). At that gate
    every image of the split is answered exactly as with full TTA."""
    plain_answers, tta_answers = answers(plain, threshold), answers(augmented, threshold)
    confidence = plain.max(1)
    changed = np.array([a != b for a, b in zip(plain_answers, tta_answers)], bool)
    gate = float(confidence[changed].max() + margin) if changed.any() else 0.0
    gated = gated_outputs({"probabilities": plain}, lambda rows: {"probabilities": augmented[rows]}, gate)
    assert answers(gated["probabilities"], threshold) == tta_answers  # the gate's promise, on this split
    return {"gate": gate, "tta_share": float((confidence < gate).mean()), "changed": int(changed.sum()),
            "images": len(plain)}


def gate_from_tags(tags: dict[str, str], version: str = "") -> float | None:
    """The ``tta_gate`` tag of a registered version as a number, None when it has none."""
    value = tags.get(TTA_GATE_TAG)
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"the {TTA_GATE_TAG} tag of model version {version or '?'} is {value!r}, not a number") from None


def measure_gate(model, images, threshold: float | None, batch_size: int = 64) -> dict:
    """:func:`choose_tta_gate` for a loaded :class:`~leukolab.publishing.model.SmearModel` with TTA on ``images``
    (uint8 N x 3 x H x W, the selection split's): its plain and its full-TTA probabilities, batch by batch."""
    plain, augmented = [], []
    for first in range(0, len(images), batch_size):
        batch = images[first:first + batch_size]
        augmented.append(model.forward(batch)["probabilities"])
        with without_tta(model.network):
            plain.append(model.forward(batch)["probabilities"])
    return choose_tta_gate(np.concatenate(plain), np.concatenate(augmented), threshold)


def tta_tags(model, dataset_dir: str | None, split: str, threshold: float | None) -> dict[str, str]:
    """The version tags of a classifier with TTA (none for other models, or without ``dataset_dir``): its
    ``tta_gate`` measured on ``split`` (the selection split), and the share of that split's images the gate sends
    through the eight views."""
    if not dataset_dir or model.task != "classification" or not getattr(model.network, "tta", False):
        return {}
    from leukolab.data.reading.dataset import load_datasets

    measured = measure_gate(model, load_datasets(dataset_dir, (split,), "classification")[split].images, threshold)
    log.info("TTA gate %.4f: %d of %d %s images take the eight views (TTA changed %d answers)", measured["gate"],
             round(measured["tta_share"] * measured["images"]), measured["images"], split, measured["changed"])
    return {TTA_GATE_TAG: repr(measured["gate"]), f"tta_{split}_share": f"{measured['tta_share']:.4f}"}
