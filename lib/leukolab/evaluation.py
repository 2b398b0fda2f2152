"""Evaluate every experiment run of a pipeline run on held-out splits and choose the champion.

Models are loaded back from MLflow exactly as a server would load them, so
the numbers describe the published artifact, not the in-memory network.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from leukolab.data.dataset import SmearDataset, load_split
from leukolab.metrics import classification_metrics, segmentation_metrics
from leukolab.pyfunc import SmearModel, load_smear_model
from leukolab.stages import read_outputs

EXPERIMENT_STAGES = ("segment", "classify")


def experiment_runs(run_dir) -> pd.DataFrame:
    """The experiment stages of a pipeline run: stage, experiment, task, MLflow run id and model URI."""
    rows = [
        {"stage": stage, "experiment": out["experiment"], "task": out["task"], "run_id": out["mlflow_run_id"],
         "run_name": out["experiment"], "model_uri": out["model_uri"]}
        for prefix in EXPERIMENT_STAGES
        for stage, out in read_outputs(run_dir, f"{prefix}-").items()
    ]
    if not rows:
        raise ValueError(f"no experiment runs found in {run_dir}: run 10_segment or 20_classify for this run_dir first")
    return pd.DataFrame(rows)


def evaluate_model(model: SmearModel, dataset: SmearDataset, batch_size: int = 32) -> tuple[dict, dict]:
    """Metrics of a loaded model on a dataset and its raw outputs (probabilities, masks)."""
    outputs: dict[str, list] = {}
    start = time.perf_counter()
    for first in range(0, len(dataset), batch_size):
        for key, value in model.forward(dataset.images[first:first + batch_size]).items():
            outputs.setdefault(key, []).append(value)
    seconds = time.perf_counter() - start
    outputs = {key: np.concatenate(values) for key, values in outputs.items()}
    metrics = {"latency_ms_per_image": 1000 * seconds / max(len(dataset), 1)}
    if "probabilities" in outputs:
        metrics.update(classification_metrics(dataset.labels.numpy(), outputs["probabilities"], model.class_names))
    if "mask" in outputs:
        metrics.update(segmentation_metrics(outputs["mask"], dataset.masks.numpy()))
    return metrics, outputs


def evaluate_runs(runs: pd.DataFrame, dataset_dir, split: str = "test") -> tuple[pd.DataFrame, dict]:
    """Evaluate each run's logged model on ``split``; returns the metrics table and each run's outputs."""
    frame = load_split(dataset_dir, split)
    with_masks = frame["mask"].notna().all()
    dataset = SmearDataset(frame, with_masks=with_masks)
    torch.set_grad_enabled(False)
    rows, outputs = [], {}
    for run in tqdm(list(runs.itertuples()), desc=f"evaluating on {split}"):
        try:
            model = load_smear_model(run.model_uri)
        except Exception as error:
            raise RuntimeError(f"the model of run {run.run_id} ({run.experiment}) cannot be loaded from {run.model_uri}: {error}") from error
        metrics, outputs[run.run_id] = evaluate_model(model, dataset)
        outputs["class_names"] = model.class_names
        rows.append({**run._asdict(), "split": split, **metrics})
    torch.set_grad_enabled(True)
    return pd.DataFrame(rows).drop(columns=["Index"]), {"labels": dataset.labels.numpy(), **outputs}


def choose_champion(table: pd.DataFrame, metric: str, tie_breaker: str = "latency_ms_per_image", tasks=("classification", "joint")) -> pd.Series:
    """The best run among ``tasks`` by ``metric`` (higher is better), ties broken by ``tie_breaker`` (lower is better)."""
    candidates = table[table["task"].isin(tasks)]
    if candidates.empty:
        raise ValueError(f"no run of task {tasks} to choose a champion from")
    if metric not in candidates or candidates[metric].isna().all():
        raise ValueError(f"metric {metric!r} was not measured; choose one of {sorted(c for c in table.columns if table[c].dtype.kind == 'f')}")
    ranked = candidates.sort_values([metric, tie_breaker], ascending=[False, True])
    return ranked.iloc[0]


def candidate_summary(row: pd.Series | None) -> dict | None:
    """What the publish stage needs of an evaluated run: ids, model URI and its measured metrics."""
    if row is None:
        return None
    metrics = {k: float(v) for k, v in row.items() if isinstance(v, float) and pd.notna(v)}
    return {"run_id": row["run_id"], "experiment": row["experiment"], "model_uri": row["model_uri"], "metrics": metrics}
