"""Run one experiment end to end: load its YAML, train, calibrate, evaluate, log everything to MLflow."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mlflow
import numpy as np
import torch
from PIL import Image
from scipy.special import softmax

from leukolab import plots
from leukolab.config import workspace
from leukolab.config.experiment import Experiment
from leukolab.data.reading.dataset import SmearDataset, load_manifest
from leukolab.data.reading.loading import choose_loading, load_experiment_splits
from leukolab.experiments.acquisition import run_acquisition_aware
from leukolab.experiments.resampling import run_resampling
from leukolab.images import ImageRules
from leukolab.models.factory import build_model
from leukolab.ood import OodDetector, fit_detector
from leukolab.predictor.meta import ModelMeta
from leukolab.predictor.smear_model import SmearModel, log_smear_model
from leukolab.tracking import flatten
from leukolab.training.calibration import fit_temperature
from leukolab.training.distributed import fit_distributed
from leukolab.training.inputs import in_memory, prepare_inputs
from leukolab.training.loop import FitResult, dataset_outputs, evaluate, fit, predict

log = logging.getLogger(__name__)

FIGURE_ROWS = 512
"""Test images the figures (and the model's input examples) are drawn from when the splits are streamed."""
OOD_FIT_ROWS = 20_000
"""Train and val images (a uniform sample) the out-of-distribution check is fitted and thresholded on when the
splits are streamed: enough for class means, a shared covariance and neighbour distances, bounded in memory."""


@dataclass
class ExperimentResult:
    """What a trained experiment hands on to the notebook and the next stage."""

    experiment: Experiment
    model: torch.nn.Module
    fit: FitResult
    val_metrics: dict
    test_metrics: dict
    class_names: list[str]
    manifest: dict
    test_set: SmearDataset  # in memory; when streamed, its first FIGURE_ROWS rows
    model_uri: str
    figures: dict  # name -> matplotlib figure, as logged under plots/
    resampling: dict | None = None  # folds/seeds summary (leukolab.experiments.resampling); None when the experiment sets neither
    acquisition_aware: dict | None = None  # leukolab.experiments.acquisition; None when the experiment does not ask for it


def run_experiment(experiment: Experiment, dataset_dir: str | Path,
                   on_epoch: Callable[[int, dict], None] | None = None) -> ExperimentResult:
    """Train ``experiment`` on the dataset inside the active MLflow run and log params, metrics, plots and model;
    then its ``cv_folds``/``seeds`` as child runs (:func:`leukolab.resampling.run_resampling`), when it sets them.

    ``on_epoch(epoch, metrics)`` is called after each epoch's metrics are logged (a sweep trial reports them to its
    study); an exception it raises stops the training and the experiment."""
    manifest = load_manifest(dataset_dir)
    class_names = manifest["classes"]
    loading = choose_loading(experiment, dataset_dir, ("train", "val", "test"))
    raw = load_experiment_splits(experiment, dataset_dir, ("train", "val", "test"), loading)
    inputs = prepare_inputs(experiment, raw, manifest["train_mean"], manifest["train_std"])
    splits, mean, std = inputs.splits, inputs.mean, inputs.std
    log.info("experiment %s: images %s, with masks %s", experiment.name, {k: len(v) for k, v in splits.items()},
             {k: v.mask_images for k, v in splits.items()})

    mlflow.log_params(flatten(experiment.model_dump()))
    mlflow.set_tags({"dataset_fingerprint": manifest["fingerprint"], "dataset": manifest["dataset"],
                     "task": experiment.task, "experiment": experiment.name, "data_loading": loading})
    mlflow.log_metrics({f"{what}_{name}": count for name, split in splits.items()
                        for what, count in (("images", len(split)), ("mask_images", split.mask_images))})
    model = build_model(experiment, len(class_names))
    checkpoints = workspace() / "data" / "checkpoints" / mlflow.active_run().info.run_id
    processes = experiment.distributed.num_processes
    if processes > 1:
        if on_epoch:
            raise ValueError("per-epoch reports (a sweep trial) need training in one process: set "
                             "distributed.num_processes to 1")
        result = fit_distributed(model, experiment, dataset_dir, processes, checkpoints, loading=loading)
    else:
        result = fit(model, splits["train"], splits["val"], experiment, mean, std, class_names, checkpoints,
                     on_epoch_end=lambda epoch, metrics: _log_epoch(epoch, metrics, on_epoch))
    model.eval()

    temperature = 1.0
    if experiment.task in ("classification", "joint"):
        outputs = dataset_outputs(model, splits["val"], mean, std)
        temperature = fit_temperature(outputs["logits"], outputs["labels"])
    val_metrics = evaluate(model, splits["val"], mean, std, class_names, experiment.task)
    test_metrics = evaluate(model, splits["test"], mean, std, class_names, experiment.task)
    mlflow.log_metrics({"best_epoch": result.best_epoch, "temperature": temperature,
                        **{f"test_{k}": v for k, v in test_metrics.items()}})

    shown = splits["test"] if isinstance(splits["test"], SmearDataset) else splits["test"].head(FIGURE_ROWS)
    figures = result_figures(model, result, shown, mean, std, class_names, temperature)
    for name, figure in figures.items():
        mlflow.log_figure(figure, f"plots/{name}.png")

    meta = ModelMeta(experiment=experiment, class_names=class_names, image_size=manifest["image_size"],
                     image_rules=ImageRules.from_mapping(manifest.get("parameters", {})), mean=mean, std=std,
                     temperature=temperature, dataset_fingerprint=manifest["fingerprint"],
                     stain_target=inputs.preprocessing.stain_target,
                     input_mean=manifest["train_mean"] if inputs.preprocessing.active else None)
    # The published model preprocesses what it is given: its OOD check and input examples take the images unprocessed.
    ood = fit_ood(SmearModel(model, meta), *(in_memory(raw[name], experiment.seed, OOD_FIT_ROWS) for name in ("train", "val")))
    if ood is not None:
        mlflow.log_metrics({"ood_threshold": ood.threshold, "ood_val_images": ood.val_images})
    unprocessed = raw["test"] if isinstance(raw["test"], SmearDataset) else raw["test"].head(2)
    examples = [_jpeg(image) for image in unprocessed.images[:2]]
    info = log_smear_model(model, meta, examples, ood=ood)
    resampling = run_resampling(experiment, dataset_dir)
    return ExperimentResult(experiment, model, result, val_metrics, test_metrics, class_names, manifest,
                            shown, info.model_uri, figures, resampling, run_acquisition_aware(experiment, dataset_dir))


def fit_ood(model: SmearModel, train: SmearDataset, val: SmearDataset) -> OodDetector | None:
    """The model's out-of-distribution check (its experiment's ``ood`` section): detectors fitted on ``train``, the
    threshold chosen on ``train`` out of fold and ``val``; None for a model that only segments."""
    if model.task == "segmentation":
        return None
    spec = model.experiment.ood
    inputs = {name: model.ood_inputs(list(split.images.permute(0, 2, 3, 1).numpy())) for name, split in
              (("train", train), ("val", val))}
    return fit_detector(inputs["train"], train.labels.numpy(), inputs["val"], spec.share, spec.detectors, spec.folds)


def _log_epoch(epoch: int, metrics: dict, on_epoch: Callable[[int, dict], None] | None) -> None:
    mlflow.log_metrics(metrics, step=epoch)
    if on_epoch:
        on_epoch(epoch, metrics)


def result_figures(model, fit_result: FitResult, test: SmearDataset, mean, std, class_names: list[str],
                   temperature: float) -> dict:
    """Learning curves, and on the test split the most confident mistakes (classifiers) and mask overlays (masks)."""
    figures = {"learning_curves": plots.learning_curves(fit_result.history)}
    outputs = predict(model, test.images, mean, std)
    if "logits" in outputs:
        probabilities = softmax(outputs["logits"] / temperature, axis=1)
        figures["misclassified"] = plots.failure_cases(test.images, test.labels.numpy(), probabilities, class_names)
    if "mask" in outputs:
        shown = np.flatnonzero(test.has_mask.numpy())
        figures["mask_predictions"] = plots.mask_predictions(test.images[shown], test.masks[shown], outputs["mask"][shown])
    return figures


def _jpeg(image_chw: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image_chw.permute(1, 2, 0).numpy().astype(np.uint8)).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()
