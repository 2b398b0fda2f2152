"""Choosing the gate of gated test-time augmentation (:mod:`leukolab.predictor.gated_tta` applies it).

:func:`choose_tta_gate` picks the lowest gate at which, on the selection split, every image gets the same class and
the same accept/refer decision as with full TTA, plus a margin; ``40_publish`` records it on the version as the tag
``tta_gate`` beside ``referral_threshold`` (:func:`tta_tags`).
"""

from __future__ import annotations

import logging

import numpy as np

from leukolab.models.factory import without_tta
from leukolab.predictor.gated_tta import TTA_GATE_TAG, gated_outputs

log = logging.getLogger(__name__)
DEFAULT_MARGIN = 0.05
"""Added to the highest plain confidence that changed an answer on the selection split: images a little more
confident than any that changed there still get the eight views."""


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


def measure_gate(model, images, threshold: float | None, batch_size: int = 64) -> dict:
    """:func:`choose_tta_gate` for a loaded :class:`~leukolab.predictor.smear_model.SmearModel` with TTA on ``images``
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
