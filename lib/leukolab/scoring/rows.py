"""One batch of files scored into rows: decoded under the model's :class:`~leukolab.images.ImageRules` (what the
ETL and the API refuse is refused here, with the same reason), one forward pass over the usable images, the
referral decision and its reason (:func:`~leukolab.predictor.decision.decide_answer`), and with ``explain_dir`` a
heatmap overlay per image."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from leukolab.images import ImageRejected, decode_image
from leukolab.plots import heatmap_overlay
from leukolab.predictor.decision import decide_answer
from leukolab.predictor.smear_model import SmearModel
from leukolab.scoring.input_files import ScoreItem

UNREADABLE = "unreadable"
"""The reason of a file that cannot be read (permissions, a broken link); the others are :func:`decode_image`'s."""


def columns(model: SmearModel, explain: bool = False) -> list[str]:
    """The CSV columns for ``model``: path, predicted_class, confidence, ``p_<class>`` per class and ``ood_score``
    (empty for a model without an out-of-distribution check), ``mask_fraction`` for a model that segments, decision,
    reason (of a referral, or why the file was not used: then decision is empty), and ``heatmap`` (the overlay's
    path) with ``explain``."""
    names = ["path"]
    if model.task != "segmentation":
        names += ["predicted_class", "confidence", *(f"p_{name}" for name in model.class_names), "ood_score"]
    if model.task != "classification":
        names.append("mask_fraction")
    return names + ["decision", "reason"] + (["heatmap"] if explain else [])


def score_batch(model: SmearModel, items: list[ScoreItem], threshold: float | None,
                explain_dir: str | Path | None = None) -> list[dict]:
    """One row per item, in order (see :func:`columns`); a file that cannot be used gets its ``reason`` and empty
    prediction fields. ``threshold``: the version's referral threshold (None: every prediction is accepted)."""
    rows, usable, images = [], [], []
    for item in items:
        rows.append({"path": item.path})
        try:
            image = decode_image(Path(item.path).read_bytes(), model.image_rules)
        except ImageRejected as rejected:
            rows[-1]["reason"] = rejected.reason
            continue
        except OSError:
            rows[-1]["reason"] = UNREADABLE
            continue
        usable.append(len(rows) - 1)
        images.append(image)
    if not images:
        return rows
    arrays = [model.prepare(image) for image in images]
    answers = model.predict_prepared(arrays)
    for index, answer in zip(usable, answers):
        probabilities = {f"p_{name}": answer[f"prob_{name}"] for name in model.class_names if f"prob_{name}" in answer}
        decision, reason = decide_answer(answer, threshold)
        rows[index].update({key: answer[key] for key in ("predicted_class", "confidence", "ood_score", "mask_fraction")
                            if key in answer}, **probabilities, decision=decision, reason=reason)
    if explain_dir is not None:
        classes = [model.class_names.index(answers[i]["predicted_class"]) for i in range(len(answers))]
        for index, image, heatmap in zip(usable, images, model.explain_prepared(arrays, classes)):
            rows[index]["heatmap"] = str(_write_overlay(Path(explain_dir), items[index].name, image, heatmap))
    return rows


def _write_overlay(folder: Path, name: str, image: Image.Image, heatmap) -> Path:
    """``<folder>/<name>.heatmap.png``: the image under its heatmap."""
    path = folder / f"{name}.heatmap.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    heatmap_overlay(image, heatmap).save(path)
    return path
