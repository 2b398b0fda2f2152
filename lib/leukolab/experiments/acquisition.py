"""The acquisition-aware figure of a classification experiment: the same recipe trained on the acquisition-aware
train split (whole blocks of acquisition order held out, neighbours embargoed) and scored on its val and test.

It runs as a child run of the experiment's run (``<name> acquisition-aware``), with early stopping on the
acquisition-aware val split, and the preprocessing and colour statistics fitted on its own train split; its model
is not logged (the published model is the experiment's own). Intervals come from a cluster bootstrap over acquisition blocks, so
images of one session are resampled together.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
from scipy.special import softmax

from leukolab.config.experiment import Experiment
from leukolab.data.reading.dataset import SmearDataset, load_manifest, load_split
from leukolab.experiments.resampling import _child_run, _train, clustered_metrics
from leukolab.training.inputs import colour_statistics, prepare_inputs
from leukolab.training.loop import predict

ACQUISITION_SPLITS = ("train", "val", "test")


def run_acquisition_aware(experiment: Experiment, dataset_dir: str | Path, bootstrap_samples: int = 1000) -> dict | None:
    """Train and score ``experiment`` on the acquisition-aware splits when it sets ``acquisition_aware``.

    Returns ``None`` when it does not (or its task is not ``classification``), ``{"available": False, "reason"}`` when the
    dataset has no acquisition key, else ``{"available": True, "split_strategy": "acquisition", "embargo",
    "blocks", "images": {split: n}, "metrics": {"val": {...}, "test": {...}}}`` with ``<metric>_ci_low/_ci_high``
    for accuracy, balanced accuracy and macro-F1.
    """
    if not experiment.acquisition_aware or experiment.task != "classification":
        return None
    manifest = load_manifest(dataset_dir)
    section = manifest.get("acquisition", {})
    if not section.get("available"):
        return {"available": False, "reason": section.get("reason", "the dataset predates acquisition-aware splits")}
    frames = {name: load_split(dataset_dir, name, "acquisition") for name in ACQUISITION_SPLITS}
    data = {name: SmearDataset(frame) for name, frame in frames.items()}
    inputs = prepare_inputs(experiment, data, **colour_statistics(data["train"]))
    data, context = inputs.splits, {"class_names": manifest["classes"], "mean": inputs.mean, "std": inputs.std}
    with _child_run(experiment, "acquisition-aware", {"resample": "acquisition", "embargo": section["embargo"],
                                                      "blocks": section["blocks"]}):
        model = _train(experiment, data["train"], data["val"], context)
        metrics = {name: scored(model, data[name], frames[name]["acquisition_block"].to_numpy(), context, bootstrap_samples,
                                experiment.seed) for name in ("val", "test")}
        mlflow.log_metrics({f"{name}_{k}": v for name, values in metrics.items() for k, v in values.items()})
    return {"available": True, "split_strategy": "acquisition", "embargo": section["embargo"], "blocks": section["blocks"],
            "images": {name: len(d) for name, d in data.items()}, "metrics": metrics}


def scored(model, dataset: SmearDataset, clusters: np.ndarray, context: dict, samples: int, seed: int) -> dict:
    """Classification metrics of ``model`` on ``dataset`` with cluster-bootstrap intervals over ``clusters``."""
    logits = predict(model, dataset.images, context["mean"], context["std"])["logits"]
    return clustered_metrics(dataset.labels.numpy(), softmax(logits, axis=1), clusters, context["class_names"], samples,
                             seed)
