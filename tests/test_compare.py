"""``leukolab compare``: two lineages written here, and the shared smoke run against one more run of its evaluation
with a changed parameter."""

from __future__ import annotations

import json

import pytest
from conftest import leukolab

from leukolab.pipeline.comparison import compare_runs, flatten, markdown_table
from leukolab.stages.records import EtlRecord, EvaluationRecord


def write_run(workspace, run_id: str, tasks: dict, **fields) -> None:
    folder = workspace / "runs" / run_id
    folder.mkdir(parents=True)
    lineage = {"run_id": run_id, "profile": "smoke", "run_dir": str(folder), "started": "2026-01-01T00:00:00",
               "status": "finished", "git_commit": "abc", "library_digest": "d1", "tasks": tasks, **fields}
    (folder / "lineage.json").write_text(json.dumps(lineage))


def evaluation_output(metrics_by_split: dict) -> dict:
    """An evaluation's output whose champion has ``metrics_by_split`` (val chose, test reports)."""
    champion = {"run_id": "r1", "experiment": "x", "task": "classification", "model_uri": "runs:/r1/model",
                "selection_split": "val", "selection_metrics": metrics_by_split["val"], "report_split": "test",
                "metrics": metrics_by_split["test"], "metrics_by_split": metrics_by_split}
    gate = {"alias": "champion", "reason": "no champion registered yet", "metric": "accuracy", "split": "val",
            "margin": 0.0, "candidate_score": 0.4, "current_version": None, "current_score": None}
    return EvaluationRecord(selection_split="val", report_split="test", dataset_dir="data/processed/d",
                            champion_metric="accuracy", champion=champion, gates={"champion": gate}, figures={},
                            table=[]).model_dump()


def test_compare_keeps_only_differing_parameters_and_names_reused_stages(tmp_path, monkeypatch):
    monkeypatch.setenv("LEUKOLAB_WORKSPACE", str(tmp_path))
    evaluation = evaluation_output({"test": {"accuracy": 0.5, "accuracy_ci_low": 0.25, "accuracy_ci_high": 0.75,
                                             "dice": float("nan")}, "val": {"accuracy": 0.4}})
    etl = EtlRecord(dataset_dir="data/processed/d", fingerprint="f1", counts={}).model_dump()
    write_run(tmp_path, "one", {
        "etl": {"status": "done", "key": "k1", "parameters": {"seed": 7}, "result": etl},
        "classify-x": {"status": "done", "key": "k2", "parameters": {"seed": 7, "experiment_overrides": {"optim": {"lr": 0.1, "wd": 0}}}},
        "evaluate": {"status": "done", "key": "k3", "result": evaluation}})
    better = json.loads(json.dumps(evaluation).replace("0.5", "0.625"))
    write_run(tmp_path, "two", {
        "etl": {"status": "cached", "cached_from": "one", "key": "k1", "parameters": {"seed": 7}, "result": etl},
        "classify-x": {"status": "done", "key": "k4", "parameters": {"seed": 7, "experiment_overrides": {"optim": {"lr": 0.01, "wd": 0}}}},
        "evaluate": {"status": "failed", "key": "k5", "result": better}}, library_digest="d2")

    comparison = compare_runs("one", "two")
    assert comparison.parameters.to_dict("records") == [
        {"task": "classify-x", "parameter": "experiment_overrides.optim.lr", "a": "0.1", "b": "0.01"}]
    provenance = comparison.provenance.set_index("field")
    assert provenance.loc["library digest", "changed"] and not provenance.loc["dataset fingerprint", "changed"]
    assert provenance.loc["dataset fingerprint", "b"] == "f1" and not provenance.loc["git commit", "changed"]
    stages = comparison.stages.set_index("task")
    assert stages.loc["etl", "b"] == "cached from one" and stages.loc["etl", "key"] == "same"
    assert (stages.loc["classify-x", "b"], stages.loc["classify-x", "key"]) == ("ran", "changed")
    assert stages.loc["evaluate", "b"] == "failed"
    metrics = comparison.metrics
    assert list(zip(metrics["split"], metrics["metric"])) == [("val", "accuracy"), ("test", "accuracy")]  # no NaN dice
    test_accuracy = metrics.iloc[1]
    assert test_accuracy["difference"] == pytest.approx(0.125) and test_accuracy["a_ci_low"] == 0.25
    assert "0.500 [0.250, 0.750]" in comparison.text() and "+0.125" in comparison.markdown()

    with pytest.raises(ValueError, match="no pipeline run 'three'"):
        compare_runs("one", "three")


def test_flatten_and_markdown_table():
    assert flatten({"a": {"b": 1, "c": {"d": [2]}}, "e": {}}) == {"a.b": 1, "a.c.d": [2], "e": {}}
    import pandas as pd

    assert markdown_table(pd.DataFrame({"x": ["a|b"], "y": [1]})) == "| x | y |\n| --- | --- |\n| a\\|b | 1 |"


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_compare_the_smoke_run_with_a_rerun_of_its_evaluation(smoke_run, monkeypatch):
    workspace, _ = smoke_run
    rerun = leukolab(workspace, "run", "--profile", "smoke", "--run-id", "smoke-compare", "--only", "evaluate",
                     "--param", "evaluate.bootstrap_samples=200")
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]

    monkeypatch.setenv("LEUKOLAB_WORKSPACE", str(workspace))
    comparison = compare_runs("smoke-1", "smoke-compare")
    assert comparison.parameters.to_dict("records") == [
        {"task": "evaluate", "parameter": "bootstrap_samples", "a": "1000 (default)", "b": "200"}]
    stages = comparison.stages.set_index("task")
    assert set(stages["a"]) == {"ran"}
    assert stages.loc["etl", "b"] == stages.loc["classify-simple-cnn", "b"] == "cached from smoke-1"
    assert (stages.loc["evaluate", "b"], stages.loc["evaluate", "key"]) == ("ran", "changed")
    assert stages.loc["publish", "b"] == "—"  # --only evaluate: nothing after it
    provenance = comparison.provenance.set_index("field")
    assert not provenance.loc[["dataset fingerprint", "git commit", "library digest"], "changed"].any()
    metrics = comparison.metrics.set_index(["model", "split", "metric"])
    for place in [("champion", "val", "macro_f1"), ("champion", "test", "accuracy"), ("segmenter", "test", "dice")]:
        row = metrics.loc[place]
        assert row[["a", "b", "a_ci_low", "b_ci_high"]].notna().all()
        assert row["difference"] == pytest.approx(0)  # the same models: only the intervals' resamples changed

    shown = leukolab(workspace, "compare", "smoke-1", "smoke-compare", "--markdown", timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "| evaluate | bootstrap_samples | 1000 (default) | 200 |" in shown.stdout
    assert "| task | parameter | A smoke-1 | B smoke-compare |\n| --- | --- | --- | --- |" in shown.stdout
    text = leukolab(workspace, "compare", "smoke-1", "no-such-run", timeout=120)
    assert text.returncode == 2 and "no pipeline run 'no-such-run'" in text.stderr
