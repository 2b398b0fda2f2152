"""External test sets: the champion on other processed datasets, beside its in-domain figures (domain shift).

An external dataset is another source's ETL output (a folder with
``manifest.json`` and Parquet). It is only ever reported, never used to choose
anything, and the model never saw any of it, so all its images are evaluated
(every split) unless its entry names one ``split``. Its classes may differ from
the model's: ``label_map`` maps each model class onto one of the dataset's
classes, and the probabilities of the model classes mapped onto the same label
are summed (a 4-class Benign/Early/Pre/Pro model onto a normal/blast set:
``{"Benign": "normal", "Early": "blast", "Pre": "blast", "Pro": "blast"}``).

A folder of raw images without labels (no ``manifest.json``: another lab's smears, images of another kind) is an
unlabelled set: it has no accuracy to report, only the out-of-distribution check's verdict
(:mod:`leukolab.evaluation.ood`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch

from leukolab.config import workspace_path
from leukolab.data.reading.dataset import load_manifest, load_split
from leukolab.evaluation.compare import interval_columns, with_interval
from leukolab.images import ANY_SIZE, decode_image  # the images of a processed dataset passed its ETL
from leukolab.metrics.intervals import classification_intervals
from leukolab.metrics.scores import classification_metrics
from leukolab.predictor.smear_model import SmearModel

SHOWN = ("accuracy", "macro_f1", "ece")


@dataclass(frozen=True)
class ExternalDataset:
    path: Path
    name: str
    label_map: dict[str, str] | None = None
    split: str | None = None  # None: every image of the dataset
    labelled: bool = True  # False: a folder of raw images (out-of-distribution report only)


def external_datasets(entries: list | None) -> list[ExternalDataset]:
    """The ``external_datasets`` parameter: a list (or one entry) of folder paths or ``{"path", "name"?, "label_map"?,
    "split"?}``: processed datasets, or folders of raw unlabelled images (no ``label_map`` or ``split`` then)."""
    if isinstance(entries, (str, Path, dict)):
        entries = [entries]
    parsed = []
    for entry in entries or []:
        spec = {"path": entry} if isinstance(entry, (str, Path)) else entry
        if not isinstance(spec, dict) or "path" not in spec:
            raise ValueError(f"an external dataset is a folder path or a dict with 'path': not {entry!r}")
        unknown = set(spec) - {"path", "name", "label_map", "split"}
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)} in external dataset {spec['path']}: use path, name, label_map, split")
        path = workspace_path(spec["path"])
        labelled = (path / "manifest.json").is_file()
        if not labelled and not path.is_dir():
            raise ValueError(f"external dataset {path} is neither a processed dataset nor a folder of images")
        if not labelled and (spec.get("label_map") or spec.get("split")):
            raise ValueError(f"external dataset {path} is a folder of raw images (no manifest.json): it has no labels "
                             "or splits to map")
        name = spec.get("name") or (load_manifest(path).get("dataset") if labelled else None) or path.name
        parsed.append(ExternalDataset(path, str(name), spec.get("label_map"), spec.get("split"), labelled))
    names = [d.name for d in parsed]
    if len(set(names)) < len(names):
        raise ValueError(f"external datasets need distinct names (give each a 'name'): {names}")
    return parsed


def class_mapping(model_classes: list[str], dataset_classes: list[str], label_map: dict[str, str] | None,
                  dataset_name: str) -> np.ndarray:
    """A 0/1 matrix (model classes x dataset classes): ``probabilities @ matrix`` are the dataset's class probabilities."""
    if label_map is None:
        if sorted(model_classes) != sorted(dataset_classes):
            raise ValueError(f"the model predicts {model_classes} but external dataset {dataset_name!r} has classes "
                             f"{dataset_classes}: give it a label_map from each model class to one of the dataset's")
        label_map = {c: c for c in model_classes}
    unmapped = [c for c in model_classes if c not in label_map]
    if unmapped:
        raise ValueError(f"the label_map of {dataset_name!r} does not map the model classes {unmapped}")
    foreign = sorted({label_map[c] for c in model_classes} - set(dataset_classes))
    if foreign:
        raise ValueError(f"the label_map of {dataset_name!r} maps onto {foreign}, not classes of the dataset ({dataset_classes})")
    matrix = np.array([[float(label_map[m] == d) for d in dataset_classes] for m in model_classes])
    empty = [d for d, hits in zip(dataset_classes, matrix.sum(0)) if not hits]
    if empty:
        raise ValueError(f"no model class is mapped onto {empty} of {dataset_name!r}: those images could never be right")
    return matrix


def evaluate_external(model: SmearModel, dataset: ExternalDataset, bootstrap_samples: int = 1000, seed: int = 0,
                      batch_size: int = 32) -> dict:
    """Classification metrics (with bootstrap intervals) of ``model`` on an external dataset, as one flat row."""
    classes = load_manifest(dataset.path)["classes"]
    mapping = class_mapping(model.class_names, classes, dataset.label_map, dataset.name)
    frame = load_split(dataset.path, dataset.split)
    labels = frame["class_name"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    batches = []
    with torch.no_grad():
        for first in range(0, len(frame), batch_size):
            arrays = [model.prepare(decode_image(data, ANY_SIZE)) for data in frame["image"].iloc[first:first + batch_size]]
            batches.append(model.forward(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2))["probabilities"])
    probabilities = np.concatenate(batches) @ mapping
    metrics = classification_metrics(labels, probabilities, classes)
    if bootstrap_samples:
        metrics.update(interval_columns(classification_intervals(labels, probabilities, classes, bootstrap_samples, seed)))
    return {"dataset": dataset.name, "kind": "external", "split": dataset.split or "all", "images": len(frame),
            "path": str(dataset.path), "label_map": dataset.label_map, **metrics}


def in_domain_row(dataset_name: str, split: str, metrics: dict) -> dict:
    """The champion's own reported figures, as the first row of the domain-shift comparison."""
    return {"dataset": dataset_name, "kind": "in-domain", "split": split, "images": int(metrics.get("images", 0)), **metrics}


def compare_domains(model: SmearModel, externals: list[ExternalDataset], in_domain_name: str, report_split: str,
                    in_domain_metrics: dict, bootstrap_samples: int = 1000, seed: int = 0) -> list[dict]:
    """The champion's reported in-domain row, then one row per labelled external dataset: the domain-shift comparison."""
    return [in_domain_row(in_domain_name, report_split, in_domain_metrics),
            *(evaluate_external(model, dataset, bootstrap_samples, seed) for dataset in externals if dataset.labelled)]


def domain_shift_table(rows: list[dict]) -> pd.DataFrame:
    """Dataset, images and accuracy / macro-F1 / ECE as ``value [low, high]``, in-domain first."""
    return pd.DataFrame([{"dataset": r["dataset"], "kind": r["kind"], "split": r["split"], "images": r["images"],
                          **{m: with_interval(pd.Series(r), m) for m in SHOWN}} for r in rows])


def log_external(rows: list[dict]) -> None:
    """Metrics ``external_<dataset>_<metric>`` and the table, in the active MLflow run."""
    for row in rows:
        if row["kind"] == "external":
            slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", row["dataset"])
            mlflow.log_metrics({f"external_{slug}_{k}": float(v) for k, v in row.items()
                                if any(k == m or k.startswith(f"{m}_ci_") for m in SHOWN) and v is not None})
    mlflow.log_table(domain_shift_table(rows), "evaluation/external.json")
