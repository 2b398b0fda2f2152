"""The champion's out-of-distribution check, reported: per detector, how well it tells the in-domain report split
from each shifted or external set (AUROC), the share of each set referred, and what the check costs in-domain.

Everything here reports; nothing chooses (the detectors were fitted on train and the threshold chosen on train out of
fold and val when the model was trained, :func:`leukolab.experiments.run.fit_ood`). A set is a list of images: the
synthetic stand-ins (:mod:`leukolab.data.synthetic.shift`), an external processed dataset, or a folder of raw
unlabelled images.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score

from leukolab.data.etl.raw_files import IMAGE_SUFFIXES, walk_files
from leukolab.data.reading.dataset import load_split
from leukolab.data.synthetic.shift import shifted_images
from leukolab.evaluation.external import ExternalDataset
from leukolab.images import ANY_SIZE, ImageRejected, decode_image  # a processed dataset's images passed its ETL
from leukolab.metrics.intervals import mean_interval, ratio_interval
from leukolab.predictor.decision import accepts
from leukolab.predictor.smear_model import SmearModel


def synthetic_sets(kinds: list[str], images: int, image_size: int, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """The synthetic shifted sets ``kinds`` (:data:`~leukolab.data.synthetic.shift.SHIFTS`), ``images`` each."""
    return {f"synthetic {kind}": list(shifted_images(kind, images, image_size, seed)) for kind in kinds}


def folder_images(model: SmearModel, folder: str | Path) -> list[np.ndarray]:
    """The images of a folder of raw files (recursively), prepared for ``model``; files it would refuse are skipped."""
    folder, arrays = Path(folder), []
    for relative in walk_files(folder):
        if Path(relative).suffix.lower() in IMAGE_SUFFIXES:
            try:
                arrays.append(model.prepare(decode_image((folder / relative).read_bytes(), model.image_rules)))
            except (ImageRejected, OSError):
                continue
    if not arrays:
        raise ValueError(f"no usable image in {folder}")
    return arrays


def external_images(model: SmearModel, dataset: ExternalDataset) -> list[np.ndarray]:
    """The images of an external set prepared for ``model``: a processed dataset's (its ``split``, or all), or a raw
    folder's."""
    if not dataset.labelled:
        return folder_images(model, dataset.path)
    return [model.prepare(decode_image(data, ANY_SIZE)) for data in load_split(dataset.path, dataset.split)["image"]]


def set_scores(model: SmearModel, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Every detector's score and the combined one, per image of ``arrays`` (made by ``model.prepare``)."""
    return model.ood.scores(model.ood_inputs(arrays))


def ood_report(model: SmearModel, in_domain: tuple[list[np.ndarray], np.ndarray], sets: dict[str, list[np.ndarray]],
               referral_threshold: float | None, samples: int = 1000, seed: int = 0) -> dict:
    """``{"check", "sets": [...], "cost": {...}}``: per set its images, share referred as out of distribution and the
    AUROC of each detector (and the combined score) against the in-domain images; the in-domain ``cost`` is coverage
    and risk (with bootstrap 95% intervals) at the referral threshold without and with the check."""
    arrays, labels = in_domain
    inputs = model.ood_inputs(arrays)
    home = model.ood.scores(inputs)
    rows, combined = [], {}
    for name, images in sets.items():
        scores = set_scores(model, images)
        combined[name] = scores["combined"].tolist()
        row = {"set": name, "images": len(images),
               "referred": float(model.ood.out_of_distribution(scores["combined"]).mean())}
        for detector, away in scores.items():
            truth = np.r_[np.zeros(len(home[detector])), np.ones(len(away))]
            row[f"auroc_{detector}"] = float(roc_auc_score(truth, np.r_[home[detector], away]))
        rows.append(row)
    probabilities = np.exp(inputs.logits - inputs.logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    confidence, correct = probabilities.max(1), probabilities.argmax(1) == np.asarray(labels)
    confident = accepts(confidence, referral_threshold) if referral_threshold is not None else np.ones(len(labels), bool)
    inside = ~model.ood.out_of_distribution(home["combined"])
    cost = {"images": len(labels), "in_domain_referred": float(1 - inside.mean()),
            "before": _coverage_risk(confident, correct, samples, seed),
            "after": _coverage_risk(confident & inside, correct, samples, seed)}
    return {"check": model.ood.summary(), "sets": rows, "cost": cost, "in_domain_combined": home["combined"].tolist(),
            "set_combined": combined}


def _coverage_risk(accepted: np.ndarray, correct: np.ndarray, samples: int, seed: int) -> dict:
    wrong = accepted & ~correct
    result = {"coverage": float(accepted.mean()), "risk": float(wrong.sum() / accepted.sum()) if accepted.any() else None}
    if samples:
        for name, (low, high) in {"coverage": mean_interval(accepted, samples, seed),
                                  "risk": ratio_interval(wrong, accepted, samples, seed)}.items():
            result.update({f"{name}_ci_low": None if np.isnan(low) else float(low),
                           f"{name}_ci_high": None if np.isnan(high) else float(high)})
    return result


def ood_table(report: dict) -> pd.DataFrame:
    """One row per set: images, share referred, AUROC per detector (the combined score's first)."""
    table = pd.DataFrame(report["sets"])
    aurocs = ["auroc_combined"] + sorted(c for c in table.columns if c.startswith("auroc_") and c != "auroc_combined")
    return table[["set", "images", "referred", *aurocs]] if len(table) else table


def ood_figure(report: dict) -> Figure:
    """Histograms of the combined score: the in-domain report split against each set, and the threshold."""
    figure = Figure(figsize=(7, 3.8), layout="constrained")
    axes = figure.subplots()
    every = np.r_[report["in_domain_combined"], *report["set_combined"].values()]
    finite = every[np.isfinite(every)]
    bins = np.linspace(finite.min(), finite.max(), 40) if len(finite) else 10
    axes.hist(report["in_domain_combined"], bins=bins, alpha=0.6, label="in-domain (report split)", color="tab:blue")
    for name, scores in report["set_combined"].items():
        axes.hist(scores, bins=bins, alpha=0.45, label=name, histtype="stepfilled")
    axes.axvline(report["check"]["threshold"], color="black", linestyle="--", label="threshold (chosen on train out of fold and val)")
    axes.set_xlabel("combined out-of-distribution score")
    axes.set_ylabel("images")
    axes.legend(fontsize=7)
    return figure


def ood_metrics(report: dict) -> dict[str, float]:
    """Flat MLflow metrics: ``ood_<set>_referred``, ``ood_<set>_auroc_<detector>``, and the in-domain cost."""
    metrics = {}
    for row in report["sets"]:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", row["set"])
        metrics.update({f"ood_{slug}_{k}": v for k, v in row.items() if k not in ("set", "images")})
    for when in ("before", "after"):
        metrics.update({f"ood_in_domain_{k}_{when}": v for k, v in report["cost"][when].items() if v is not None})
    metrics["ood_in_domain_referred"] = report["cost"]["in_domain_referred"]
    return {k: float(v) for k, v in metrics.items()}
