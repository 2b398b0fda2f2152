"""Cross-validation folds and repeated seeds of one experiment, as MLflow child runs, with a summary over them.

Two experiment keys, either or both (absent: nothing extra runs):

- ``cv_folds: k`` pools train and val (test and holdouts are never read) and splits them into k folds. With
  ``cv_strategy: grouped`` (the default) folds are grouped by ``group_id`` (duplicates and patients stay together)
  and stratified by label, seeded by the experiment's ``seed``. With ``cv_strategy: acquisition`` (blocked) the
  pool is the acquisition-aware train, val and embargo, and each fold is one contiguous block of every class's
  acquisition order, with the dataset's ``acquisition_embargo`` neighbours (and the fold's groups) withheld from
  its training (:func:`leukolab.data.etl.acquisition_splits.blocked_folds`). Each fold trains on the rest and is scored once
  on itself. The held-out fold chooses nothing: folds train the full schedule without early stopping and keep the
  final weights, and their metrics are uncalibrated (temperature scaling does not change accuracy, macro-F1 or
  ROC-AUC). Each fold fits the experiment's preprocessing on its training images and normalises by their own colour
  mean and std. Classifiers also get the pooled out-of-fold figure: every pooled image scored by the fold that held
  it out, with 95% intervals from a cluster bootstrap over duplicate/patient groups (grouped) or acquisition blocks
  (blocked).
- ``seeds: [..]`` retrains on the usual train/val split once per seed (early stopping on val as always), scored
  on val and test.

Each fold or seed is a child run of the active run (``<name> fold 2/5``, ``<name> seed 3``) with its params and
metrics; its model is not logged. :func:`summarize` gives the mean, standard deviation and a two-sided 95%
Student-t interval of the mean per metric.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from scipy import stats
from scipy.special import softmax
from sklearn.model_selection import StratifiedGroupKFold

from leukolab.config.experiment import Experiment
from leukolab.data.etl.acquisition_splits import EMBARGO, blocked_folds
from leukolab.data.etl.probes import CLUSTERS
from leukolab.data.reading.dataset import SmearDataset, load_datasets, load_manifest, load_split
from leukolab.metrics.intervals import cluster_intervals, interval_columns
from leukolab.metrics.scores import classification_metrics
from leukolab.models.factory import build_model
from leukolab.stages.records import ExperimentRecord
from leukolab.tracking import flatten
from leukolab.training.inputs import colour_statistics, prepare_inputs
from leukolab.training.loop import evaluate, fit, predict

SUMMARIZED = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_ovr", "dice", "iou")
BOOTSTRAP_SAMPLES = 1000


def fold_assignment(frame: pd.DataFrame, folds: int, seed: int) -> np.ndarray:
    """The fold (0..folds-1) of each row: no ``group_id`` in two folds, every class in every fold, same seed same folds."""
    if folds < 2:
        raise ValueError(f"cv_folds must be at least 2, got {folds}")
    groups = frame["group_id"].nunique()
    if groups < folds:
        raise ValueError(f"cv_folds={folds} but train+val holds only {groups} groups; use fewer folds")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    assignment = np.empty(len(frame), dtype=int)
    for fold, (_, held_out) in enumerate(splitter.split(frame, frame["label"], frame["group_id"])):
        assignment[held_out] = fold
    for fold in range(folds):
        missing = set(frame["label"]) - set(frame["label"][assignment == fold])
        if missing:
            raise ValueError(f"fold {fold + 1}/{folds} has no image of label(s) {sorted(missing)}: "
                             "too few groups of that class for cv_folds={folds}; use fewer folds")
    return assignment


def summarize(values: list[float] | np.ndarray, level: float = 0.95) -> dict[str, float]:
    """Mean, sample standard deviation and the Student-t interval of the mean at ``level`` (n-1 degrees of freedom)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        raise ValueError(f"an interval over folds or seeds needs at least 2 values, got {len(values)}")
    mean, std = float(values.mean()), float(values.std(ddof=1))
    half = float(stats.t.ppf((1 + level) / 2, len(values) - 1)) * std / np.sqrt(len(values))
    return {"mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half, "n": len(values)}


def summarize_runs(metrics: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """:func:`summarize` of each headline metric that every run measured."""
    return {name: summarize([m[name] for m in metrics]) for name in SUMMARIZED
            if all(name in m and np.isfinite(m[name]) for m in metrics)}


def run_resampling(experiment: Experiment, dataset_dir: str | Path) -> dict | None:
    """Run the experiment's ``cv_folds`` and ``seeds`` as child runs of the active MLflow run.

    Returns ``{"folds": {...}, "seeds": {...}}`` (only the keys the experiment set), each with ``interval``
    (``"t"``), ``level``, per-run ``runs`` and ``summary`` (per metric ``mean``, ``std``, ``ci_low``,
    ``ci_high``, ``n``; seeds summarize ``val`` and ``test`` separately); folds also say their ``strategy`` and
    ``embargo`` and, for classifiers, the ``pooled`` out-of-fold metrics (``<metric>_ci_low/_ci_high``,
    ``images``, ``clusters``). ``None`` when neither key is set.
    """
    folds, seeds = experiment.cv_folds, experiment.seeds
    if not folds and not seeds:
        return None
    manifest = load_manifest(dataset_dir)
    context = {"mean": manifest["train_mean"], "std": manifest["train_std"], "class_names": manifest["classes"]}
    out = {}
    if folds:
        out["folds"] = _cross_validate(experiment, dataset_dir, int(folds), context, manifest)
    if seeds:
        out["seeds"] = _repeat_seeds(experiment, dataset_dir, [int(s) for s in seeds], context)
    return out


def _cross_validate(experiment: Experiment, dataset_dir, folds: int, context: dict, manifest: dict) -> dict:
    strategy, seed = experiment.cv_strategy, experiment.seed
    pooled = _fold_pool(dataset_dir, strategy, experiment.task)
    if strategy == "acquisition":
        embargo = int(manifest["acquisition"]["embargo"])
        assignment, withheld = blocked_folds(pooled, folds, embargo)
    else:
        embargo, assignment, withheld = 0, fold_assignment(pooled, folds, seed), np.zeros((folds, len(pooled)), bool)
    data = SmearDataset(pooled, with_masks=experiment.task in ("segmentation", "joint"))
    classifies = experiment.task == "classification"
    probabilities = np.full((len(pooled), len(context["class_names"])), np.nan)
    runs = []
    for fold in range(folds):
        held = np.flatnonzero(assignment == fold)
        train = data.subset(np.flatnonzero((assignment != fold) & ~withheld[fold]))
        inputs = prepare_inputs(experiment, {"train": train, "held_out": data.subset(held)}, **colour_statistics(train))
        train, held_out = inputs.splits["train"], inputs.splits["held_out"]
        fold_context = {**context, "mean": inputs.mean, "std": inputs.std}
        with _child_run(experiment, f"fold {fold + 1}/{folds}", {"resample": "fold", "fold": fold + 1, "cv_folds": folds,
                                                                 "cv_strategy": strategy, "embargo": embargo}):
            model = _train(experiment, train, None, fold_context)
            if classifies:
                probabilities[held] = softmax(predict(model, held_out.images, fold_context["mean"],
                                                      fold_context["std"])["logits"], axis=1)
                metrics = classification_metrics(held_out.labels.numpy(), probabilities[held], context["class_names"])
            else:
                metrics = _score(model, held_out, experiment.task, fold_context)
            mlflow.log_metrics({f"heldout_{k}": v for k, v in metrics.items()})
        runs.append({"fold": fold + 1, "train_images": len(train), "heldout_images": len(held_out),
                     "embargoed_images": int(withheld[fold].sum()), "heldout": metrics})
    out = {"k": folds, "seed": seed, "strategy": strategy, "embargo": embargo, "interval": "t", "level": 0.95,
           "runs": runs, "summary": summarize_runs([r["heldout"] for r in runs])}
    if classifies:
        scored = assignment >= 0
        out["pooled"] = {**clustered_metrics(data.labels.numpy()[scored], probabilities[scored],
                                             pooled[CLUSTERS[strategy]].to_numpy()[scored], context["class_names"],
                                             BOOTSTRAP_SAMPLES, seed),
                         "images": int(scored.sum()), "clusters": CLUSTERS[strategy]}
    return out


def _fold_pool(dataset_dir, strategy: str, task: str) -> pd.DataFrame:
    """The images the folds share: train and val of the ``strategy`` (acquisition-aware: and its embargo), never test
    or holdouts; segmenters see plausible masks only (as :func:`load_datasets`)."""
    names = ("train", "val") + ((EMBARGO,) if strategy == "acquisition" else ())
    pooled = pd.concat([load_split(dataset_dir, name, strategy) for name in names], ignore_index=True)
    if task == "segmentation":
        pooled = pooled[pooled["mask"].notna()].reset_index(drop=True)
    return pooled


def clustered_metrics(labels: np.ndarray, probabilities: np.ndarray, clusters: np.ndarray, class_names: list[str],
                      samples: int, seed: int) -> dict[str, float]:
    """Classification metrics with cluster-bootstrap intervals (accuracy, balanced accuracy, macro-F1) over ``clusters``."""
    metrics = classification_metrics(labels, probabilities, class_names)
    if samples:
        metrics.update(interval_columns(cluster_intervals(labels, probabilities.argmax(1), clusters, len(class_names),
                                                          samples, seed)))
    return metrics


def _repeat_seeds(experiment: Experiment, dataset_dir, seeds: list[int], context: dict) -> dict:
    if len(set(seeds)) < 2:
        raise ValueError(f"seeds needs at least two different seeds, got {seeds}")
    inputs = prepare_inputs(experiment, load_datasets(dataset_dir, ("train", "val", "test"), experiment.task),
                            context["mean"], context["std"])
    splits, context = inputs.splits, {**context, "mean": inputs.mean, "std": inputs.std}
    runs = []
    for seed in seeds:
        seeded = experiment.model_copy(update={"seed": seed})
        with _child_run(seeded, f"seed {seed}", {"resample": "seed"}):
            model = _train(seeded, splits["train"], splits["val"], context)
            scores = {split: _score(model, splits[split], experiment.task, context) for split in ("val", "test")}
            mlflow.log_metrics({f"{split}_{k}": v for split, metrics in scores.items() for k, v in metrics.items()})
        runs.append({"seed": seed, **scores})
    return {"seeds": seeds, "interval": "t", "level": 0.95, "runs": runs,
            "summary": {split: summarize_runs([r[split] for r in runs]) for split in ("val", "test")}}


@contextlib.contextmanager
def _child_run(experiment: Experiment, label: str, params: dict):
    """A run nested in the active one (tag ``mlflow.parentRunId``), named ``<experiment> <label>``, with the
    experiment's params."""
    with mlflow.start_run(run_name=f"{experiment.name} {label}", nested=True,
                          tags={"leukolab.resample": params["resample"], "experiment": experiment.name}) as run:
        mlflow.log_params({**flatten(experiment.model_dump(exclude={"cv_folds", "seeds"})),
                           **{f"resample.{k}": v for k, v in params.items()}})
        yield run


def _train(experiment: Experiment, train: SmearDataset, val: SmearDataset | None, context: dict):
    model = build_model(experiment, len(context["class_names"]))
    fit(model, train, val, experiment, context["mean"], context["std"], context["class_names"],
        on_epoch_end=lambda epoch, metrics: mlflow.log_metrics(metrics, step=epoch))
    return model.eval()


def _score(model, dataset: SmearDataset, task: str, context: dict) -> dict[str, float]:
    return evaluate(model, dataset, context["mean"], context["std"], context["class_names"], task)


def resampling_summary(resampling: dict | None) -> pd.DataFrame:
    """One row per resampling (``5 folds``, ``3 seeds, val``, ...) and metric: mean, std, 95% t-interval, n."""
    rows = [{"resampling": name, "metric": metric, **values}
            for name, summary in _summaries(resampling or {}).items() for metric, values in summary.items()]
    return pd.DataFrame(rows)


def _summaries(resampling: dict) -> dict[str, dict]:
    """Each summary of a ``run_resampling`` result by a readable name."""
    named = {}
    if "folds" in resampling:
        folds = resampling["folds"]
        kind = "blocked folds, embargo {}".format(folds["embargo"]) if folds.get("strategy") == "acquisition" else "folds"
        named[f"{folds['k']} {kind} (train+val)"] = folds["summary"]
        if "pooled" in folds:
            pooled = folds["pooled"]
            named[f"{folds['k']} {kind}, pooled out-of-fold"] = {
                metric: {"mean": pooled[metric], "ci_low": pooled[f"{metric}_ci_low"], "ci_high": pooled[f"{metric}_ci_high"],
                         "n": pooled["images"]} for metric in SUMMARIZED if f"{metric}_ci_low" in pooled}
    if "seeds" in resampling:
        for split in ("val", "test"):
            named[f"{len(resampling['seeds']['seeds'])} seeds, {split}"] = resampling["seeds"]["summary"][split]
    return named


def resampling_table(records: dict[str, ExperimentRecord]) -> pd.DataFrame:
    """Per experiment and metric: its single-split val and test figures beside each resampling's mean [95% interval].

    ``records`` are experiment records (:meth:`~leukolab.stages.records.ExperimentRecord.read_all`); those without
    ``resampling`` are left out, so no experiment that resampled gives an empty frame.
    """
    rows = []
    for out in records.values():
        if not out.resampling:
            continue
        columns = _summaries(out.resampling)
        for metric in SUMMARIZED:
            if not any(metric in summary for summary in columns.values()):
                continue
            row = {"experiment": out.experiment, "metric": metric, "single split, val": out.val_metrics.get(metric),
                   "single split, test": out.test_metrics.get(metric)}
            row.update({name: _mean_interval(summary.get(metric)) for name, summary in columns.items()})
            rows.append(row)
    return pd.DataFrame(rows)


def _mean_interval(summary: dict | None) -> str:
    return "" if summary is None else f"{summary['mean']:.3f} [{summary['ci_low']:.3f}, {summary['ci_high']:.3f}]"
