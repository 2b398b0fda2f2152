"""Champion selection rules: chosen on the selection split (val), reported on test."""

import json

import pandas as pd
import pytest

from leukolab.evaluation.compare import candidate_summary, choose_champion, comparison_table, evaluation_splits, split_role


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


@pytest.fixture
def two_splits():
    """Run A is best on val, run B best on test."""
    rows = []
    for run_id, val_f1, test_f1 in (("A", 0.93, 0.88), ("B", 0.90, 0.97)):
        for split, f1 in (("val", val_f1), ("test", test_f1)):
            rows.append({"run_id": run_id, "experiment": f"exp-{run_id}", "run_name": f"exp-{run_id}", "model_uri": f"m:/{run_id}",
                         "task": "classification", "split": split, "role": split_role(split, "val"), "macro_f1": f1,
                         "macro_f1_ci_low": f1 - 0.05, "macro_f1_ci_high": f1 + 0.02, "latency_ms_per_image": 5.0})
    return pd.DataFrame(rows)


def test_the_selection_split_chooses_even_when_another_run_is_best_on_test(two_splits):
    assert choose_champion(two_splits, "macro_f1", split="test").run_id == "B"  # what choosing on test would do
    champion = choose_champion(two_splits, "macro_f1", split="val")
    assert champion.run_id == "A"
    summary = candidate_summary(champion, two_splits)
    assert summary["selection_split"] == "val" and summary["selection_metrics"]["macro_f1"] == 0.93
    assert summary["report_split"] == "test" and summary["metrics"]["macro_f1"] == 0.88  # reported: A's test figure
    assert set(summary["metrics_by_split"]) == {"val", "test"}


def test_a_table_of_several_splits_needs_the_selection_split_named(two_splits):
    with pytest.raises(ValueError, match="several splits"):
        choose_champion(two_splits, "macro_f1")
    with pytest.raises(ValueError, match="selection split 'holdout_1'"):
        choose_champion(two_splits, "macro_f1", split="holdout_1")
    with pytest.raises(ValueError, match="report split 'holdout_1'"):
        candidate_summary(two_splits.iloc[0], two_splits, report_split="holdout_1")


def test_the_comparison_table_says_which_split_chose(two_splits):
    val, test = comparison_table(two_splits, "val"), comparison_table(two_splits, "test")
    assert set(val["role"]) == {"selection"} and set(test["role"]) == {"report (not used for selection)"}
    assert list(test["macro_f1"]) == ["0.880 [0.830, 0.900]", "0.970 [0.920, 0.990]"]


def test_evaluation_splits_put_the_selection_split_first(tmp_path):
    counts = {"train": {"a": 5}, "val": {"a": 2}, "test": {"a": 2}, "holdout_2": {"a": 1}, "holdout_1": {"a": 0}}
    (tmp_path / "manifest.json").write_text(json.dumps({"counts": counts}))
    assert evaluation_splits(tmp_path) == ["val", "test", "holdout_2"]
    with pytest.raises(ValueError, match="selection split 'holdout_1' is empty"):
        evaluation_splits(tmp_path, "holdout_1")
