"""The whole pipeline on the smoke profile, in a temporary workspace, through the real CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
NOTEBOOKS = ["etl", "segment-unet-mobilenet", "classify-simple-cnn", "evaluate", "publish", "serve"]


def leukolab(workspace: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LEUKOLAB_WORKSPACE": str(workspace), "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "leukolab.cli", *args], env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    workspace = tmp_path_factory.mktemp("pipeline")
    result = leukolab(workspace, "run", "--profile", "smoke", "--run-id", "smoke-1")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workspace, result


def test_smoke_run_keeps_every_executed_notebook_and_output(smoke_run):
    workspace, _ = smoke_run
    run_dir = workspace / "runs" / "smoke-1"
    names = sorted(p.name for p in run_dir.glob("*.ipynb"))
    assert [n.split("_", 1)[1][:-6] for n in names] == NOTEBOOKS
    for name in NOTEBOOKS:
        assert (run_dir / f"{name}.json").is_file()
    summary = json.loads((run_dir / "pipeline.json").read_text())
    assert summary["status"] == "FINISHED" and [s["name"] for s in summary["stages"]] == NOTEBOOKS


def test_smoke_run_registers_a_champion_and_prints_it(smoke_run, monkeypatch):
    workspace, result = smoke_run
    assert "champion: leukolab version 1 (@champion)" in result.stdout
    monkeypatch.setenv("LEUKOLAB_WORKSPACE", str(workspace))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # earlier tests may leave another store there
    from mlflow.tracking import MlflowClient

    from leukolab.tracking import configure

    configure()
    client = MlflowClient()
    champion = client.get_model_version_by_alias("leukolab", "champion")
    assert champion.tags["pipeline_run_id"]
    parent = client.get_run(champion.tags["pipeline_run_id"])
    assert parent.data.tags["leukolab.pipeline_run_id"] == "smoke-1" and parent.info.status == "FINISHED"
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(r.data.tags["leukolab.stage"] for r in children) == sorted(["etl", "segment", "classify", "evaluate", "publish", "serve"])
    trained = next(r for r in children if r.data.tags["leukolab.stage"] == "classify")
    assert "notebook" in [a.path for a in client.list_artifacts(trained.info.run_id)]
    assert len(client.get_metric_history(trained.info.run_id, "val_macro_f1")) == 1


def test_a_failing_stage_stops_the_run_and_says_where(tmp_path):
    result = leukolab(tmp_path, "run", "--profile", "smoke", "--run-id", "broken", "--param", "etl.image_size=0")
    assert result.returncode != 0
    assert "stage 'etl' failed in cell" in result.stderr and "image_size must be at least 16" in result.stderr
    assert str(tmp_path / "runs" / "broken" / "00_etl.ipynb") in result.stderr
    assert json.loads((tmp_path / "runs" / "broken" / "pipeline.json").read_text())["status"] == "FAILED"


def test_the_published_champion_reevaluates_to_its_registered_metrics(smoke_run, monkeypatch):
    workspace, _ = smoke_run
    monkeypatch.setenv("LEUKOLAB_WORKSPACE", str(workspace))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    import mlflow
    from mlflow.tracking import MlflowClient

    from leukolab.evaluation import reevaluate_version
    from leukolab.tracking import configure

    configure()
    client = MlflowClient()
    champion = client.get_model_version_by_alias("leukolab", "champion")
    dataset_dir = json.loads((workspace / "runs" / "smoke-1" / "etl.json").read_text())["dataset_dir"]
    metrics = reevaluate_version("leukolab", champion.version, dataset_dir)
    for name in ("accuracy", "macro_f1"):
        assert round(metrics[name], 4) == float(champion.tags[f"test_{name}"])
        assert f"[{metrics[f'{name}_ci_low']:.4f}, {metrics[f'{name}_ci_high']:.4f}]" == champion.tags[f"test_{name}_ci95"]
    source = client.get_run(champion.tags["source_run_id"]).data.metrics
    assert source["eval_test_macro_f1"] == pytest.approx(metrics["macro_f1"])
    assert "## Known limitations" in mlflow.artifacts.load_text(champion.tags["model_card"])
