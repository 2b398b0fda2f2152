"""Champion selection rules."""

import pandas as pd
import pytest

from leukolab.evaluation import candidate_summary, choose_champion


@pytest.fixture
def table():
    return pd.DataFrame([
        {"run_id": "a", "experiment": "simple-cnn", "model_uri": "m:/a", "task": "classification", "macro_f1": 0.90, "latency_ms_per_image": 5.0},
        {"run_id": "b", "experiment": "resnet18", "model_uri": "m:/b", "task": "classification", "macro_f1": 0.95, "latency_ms_per_image": 30.0},
        {"run_id": "c", "experiment": "joint", "model_uri": "m:/c", "task": "joint", "macro_f1": 0.95, "latency_ms_per_image": 20.0},
        {"run_id": "d", "experiment": "unet", "model_uri": "m:/d", "task": "segmentation", "macro_f1": float("nan"), "latency_ms_per_image": 9.0},
    ])


def test_best_metric_wins_and_ties_go_to_the_faster_model(table):
    assert choose_champion(table, "macro_f1").run_id == "c"


def test_segmenters_compete_among_themselves(table):
    assert choose_champion(table, "latency_ms_per_image", tasks=("segmentation",)).run_id == "d"


def test_unmeasured_metric_and_missing_task_are_clear_errors(table):
    with pytest.raises(ValueError, match="was not measured"):
        choose_champion(table, "dice")
    with pytest.raises(ValueError, match="no run of task"):
        choose_champion(table[table["task"] == "segmentation"], "macro_f1")


def test_candidate_summary_keeps_measured_metrics_only(table):
    summary = candidate_summary(table.iloc[3])
    assert summary["run_id"] == "d" and summary["metrics"] == {"latency_ms_per_image": 9.0}
    assert candidate_summary(None) is None
