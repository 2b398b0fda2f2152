"""Evaluate every experiment run of a pipeline run on the held-out splits and choose the champion.

Models are loaded back from MLflow exactly as a server would load them, so
the numbers describe the published artifact, not the in-memory network.
Headline metrics carry seeded bootstrap 95% intervals (``<metric>_ci_low`` and
``<metric>_ci_high`` columns). The champion is chosen on the selection split
(``val``); ``test`` and the holdouts are reported for what was chosen and never
decide anything, so their figures are not biased by the choice.
"""

from __future__ import annotations

import time

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from tqdm.auto import tqdm

from leukolab.data.reading.dataset import SmearDataset, load_manifest, load_split
from leukolab.metrics import HEADLINE
from leukolab.metrics.intervals import classification_intervals, interval_columns, mean_interval
from leukolab.metrics.scores import classification_metrics, segmentation_scores
from leukolab.predictor.smear_model import SmearModel
from leukolab.predictor.uri import load_smear_model
from leukolab.stages.records import Candidate, ExperimentRecord

def experiment_runs(run_dir) -> pd.DataFrame:
    """The experiment stages of a pipeline run: stage, experiment, task, MLflow run id and model URI."""
    rows = [
        {"stage": stage, "experiment": out.experiment, "task": out.task, "run_id": out.mlflow_run_id,
         "run_name": out.experiment, "model_uri": out.model_uri}
        for stage, out in ExperimentRecord.read_all(run_dir).items()
    ]
    if not rows:
        raise ValueError(f"no experiment runs found in {run_dir}: the pipeline run has no finished segment or classify "
                         "stage (run 10_segment or 20_classify for this run_dir first)")
    return pd.DataFrame(rows)


SELECTION_ROLE, REPORT_ROLE = "selection", "report (not used for selection)"


def evaluation_splits(dataset_dir, selection_split: str = "val") -> list[str]:
    """The selection split, ``test`` and every non-empty holdout split of the dataset."""
    counts = load_manifest(dataset_dir)["counts"]
    if not sum(counts.get(selection_split, {}).values()):
        raise ValueError(f"the selection split {selection_split!r} is empty or missing in {dataset_dir} "
                         f"(splits: {sorted(counts)}); the champion is chosen on it, never on test")
    holdouts = sorted(s for s in counts if s.startswith("holdout") and sum(counts[s].values()))
    return list(dict.fromkeys([selection_split, "test", *holdouts]))


def split_role(split: str, selection_split: str) -> str:
    """``selection`` for the split that chooses, ``report (not used for selection)`` for the others."""
    return SELECTION_ROLE if split == selection_split else REPORT_ROLE


def evaluate_model(model: SmearModel, dataset: SmearDataset, batch_size: int = 32, bootstrap_samples: int = 1000,
                   seed: int = 0) -> tuple[dict, dict]:
    """Metrics (with bootstrap intervals unless ``bootstrap_samples`` is 0) of a loaded model on a dataset, and its raw outputs."""
    model.forward(dataset.images[:1])  # warm-up, so the latency is that of a running server
    outputs: dict[str, list] = {}
    start = time.perf_counter()
    for first in range(0, len(dataset), batch_size):
        for key, value in model.forward(dataset.images[first:first + batch_size]).items():
            outputs.setdefault(key, []).append(value)
    seconds = time.perf_counter() - start
    outputs = {key: np.concatenate(values) for key, values in outputs.items()}
    metrics = {"images": len(dataset), "latency_ms_per_image": 1000 * seconds / max(len(dataset), 1)}
    if "probabilities" in outputs:
        labels, probabilities = dataset.labels.numpy(), outputs["probabilities"]
        metrics.update(classification_metrics(labels, probabilities, model.class_names))
        if bootstrap_samples:
            metrics.update(interval_columns(classification_intervals(labels, probabilities, model.class_names,
                                                                      bootstrap_samples, seed)))
    with_mask = dataset.has_mask.numpy()  # Dice and IoU on the images with a (plausible) mask only
    if "mask" in outputs:
        metrics["mask_images"] = int(with_mask.sum())
    if "mask" in outputs and with_mask.any():
        dice, iou = segmentation_scores(outputs["mask"][with_mask], dataset.masks.numpy()[with_mask])
        metrics.update({"dice": float(dice.mean()), "iou": float(iou.mean())})
        if bootstrap_samples:
            metrics.update(interval_columns({"dice": mean_interval(dice, bootstrap_samples, seed),
                                              "iou": mean_interval(iou, bootstrap_samples, seed)}))
    return metrics, outputs


def load_run_model(run) -> SmearModel:
    """A run's logged model, or an error naming the run and the URI."""
    try:
        return load_smear_model(run.model_uri)
    except Exception as error:
        raise RuntimeError(f"the model of run {run.run_id} ({run.experiment}) cannot be loaded from "
                           f"{run.model_uri}: {type(error).__name__}: {error}") from error


def evaluate_runs(runs: pd.DataFrame, dataset_dir, splits: list[str] | None = None, bootstrap_samples: int = 1000,
                  seed: int = 0, selection_split: str = "val") -> tuple[pd.DataFrame, dict]:
    """Evaluate each run's logged model on each split (default: the selection split, test and holdouts).

    Returns one row per run and split (its ``role``: see :func:`split_role`),
    and per split the ``dataset``, the ``class_names`` and each run's raw
    outputs under ``runs`` by run id.
    """
    evaluated = {}
    for split in splits or evaluation_splits(dataset_dir, selection_split):
        frame = load_split(dataset_dir, split)
        evaluated[split] = {"dataset": SmearDataset(frame, with_masks=True), "runs": {}}
    rows = []
    with torch.no_grad():
        for run in tqdm(list(runs.itertuples(index=False)), desc="evaluating runs"):
            model = load_run_model(run)
            for split, entry in evaluated.items():
                metrics, entry["runs"][run.run_id] = evaluate_model(model, entry["dataset"], bootstrap_samples=bootstrap_samples, seed=seed)
                entry["class_names"] = model.class_names
                rows.append({**run._asdict(), "split": split, "role": split_role(split, selection_split), **metrics})
    return pd.DataFrame(rows), evaluated


def reevaluate_version(model_name: str, version: str, dataset_dir, split: str = "test", bootstrap_samples: int = 1000,
                       seed: int = 0) -> dict:
    """Evaluate a registered version again on ``split``; the dataset must have the fingerprint it was evaluated on."""
    from leukolab.tracking import configure

    configure()
    registered = MlflowClient().get_model_version(model_name, version)
    expected, found = registered.tags.get("dataset_fingerprint"), load_manifest(dataset_dir)["fingerprint"]
    if expected and expected != found:
        raise ValueError(f"{model_name} version {version} was evaluated on dataset {expected}, not {found} ({dataset_dir})")
    frame = load_split(dataset_dir, split)
    dataset = SmearDataset(frame, with_masks=True)
    with torch.no_grad():
        model = load_smear_model(f"models:/{model_name}/{version}")
        return evaluate_model(model, dataset, bootstrap_samples=bootstrap_samples, seed=seed)[0]


def log_to_source_runs(table: pd.DataFrame) -> None:
    """Log each row's metrics back to its own experiment run as ``eval_<split>_<metric>``."""
    client, now = MlflowClient(), int(time.time() * 1000)
    for run_id, rows in table.groupby("run_id"):
        metrics = [Metric(f"eval_{row['split']}_{key}", float(value), now, 0)
                   for _, row in rows.iterrows() for key, value in row.items()
                   if isinstance(value, (float, int, np.number)) and not isinstance(value, bool) and pd.notna(value)]
        for first in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[first:first + 1000])


def comparison_table(table: pd.DataFrame, split: str) -> pd.DataFrame:
    """Headline metrics of every run on one split with the split's ``role``, each as ``value [low, high]`` where an interval exists."""
    rows = table[table["split"] == split]
    shown = {"run": list(rows["run_name"]), "task": list(rows["task"]), "split": list(rows["split"])}
    if "role" in rows:
        shown["role"] = list(rows["role"])
    for metric in HEADLINE:
        if metric in rows and rows[metric].notna().any():
            shown[metric] = [with_interval(row, metric) for _, row in rows.iterrows()]
    return pd.DataFrame(shown)


def with_interval(row: pd.Series, metric: str) -> str:
    value, low, high = row.get(metric), row.get(f"{metric}_ci_low"), row.get(f"{metric}_ci_high")
    if value is None or pd.isna(value):
        return ""
    return f"{value:.3f}" if low is None or pd.isna(low) else f"{value:.3f} [{low:.3f}, {high:.3f}]"


def choose_champion(table: pd.DataFrame, metric: str, tie_breaker: str = "latency_ms_per_image",
                    tasks=("classification", "joint"), split: str | None = None) -> pd.Series:
    """The best run among ``tasks`` on ``split`` by ``metric`` (higher is better), ties broken by ``tie_breaker`` (lower is better).

    ``split`` is the selection split (``val``): never the split whose figures are reported.
    """
    candidates = table[table["task"].isin(tasks)]
    if "split" in candidates:
        if split is None and candidates["split"].nunique() > 1:
            raise ValueError(f"the table holds several splits {sorted(candidates['split'].unique())}: name the one that "
                             "chooses (split='val')")
        if split is not None:
            if split not in set(candidates["split"]):
                raise ValueError(f"no run was evaluated on the selection split {split!r}")
            candidates = candidates[candidates["split"] == split]
    if candidates.empty:
        raise ValueError(f"no run of task {tasks} to choose a champion from")
    if metric not in candidates or candidates[metric].isna().all():
        raise ValueError(f"metric {metric!r} was not measured; choose one of {sorted(c for c in table.columns if table[c].dtype.kind == 'f')}")
    ranked = candidates.sort_values([metric, tie_breaker], ascending=[False, True])
    return ranked.iloc[0]


def candidate_summary(row: pd.Series | None, table: pd.DataFrame | None = None, report_split: str = "test") -> Candidate | None:
    """What the gate and the publish stage need of the run chosen on ``row``'s split.

    ``selection_split`` and ``selection_metrics`` are what chose it (the gate
    compares those); with ``table``, ``metrics`` are its figures on
    ``report_split`` (what the registry and the model card report) and
    ``metrics_by_split`` all of them. Without a table the row's split is both.
    """
    if row is None:
        return None
    metrics = _numeric(row)
    summary = {"run_id": row["run_id"], "experiment": row["experiment"], "task": row.get("task"), "model_uri": row["model_uri"],
               "selection_split": row.get("split"), "selection_metrics": metrics, "report_split": row.get("split"),
               "metrics": metrics}
    if table is not None:
        by_split = {split: _numeric(r) for split, r in table[table["run_id"] == row["run_id"]].set_index("split").iterrows()}
        if report_split not in by_split:
            raise ValueError(f"run {row['run_id']} was not evaluated on the report split {report_split!r} (only {sorted(by_split)})")
        summary.update(report_split=report_split, metrics=by_split[report_split], metrics_by_split=by_split)
    return summary


def _numeric(row: pd.Series) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if isinstance(v, (float, int, np.number)) and not isinstance(v, bool) and pd.notna(v)}


def log_comparison(table: pd.DataFrame, figures: dict) -> None:
    """The full evaluation table (JSON and CSV) and the figures, in the active MLflow run."""
    flat = table.drop(columns=["model_uri"])
    mlflow.log_table(flat, "evaluation/comparison.json")
    mlflow.log_text(flat.to_csv(index=False), "evaluation/comparison.csv")
    for name, figure in figures.items():
        mlflow.log_figure(figure, f"evaluation/{name}.png")
