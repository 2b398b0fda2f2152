"""The session stand-in through the real CLI: one ETL run writes both split assignments, the classifier is also
trained on the acquisition-aware split, and the evaluation shows both figures, the probe table and the warning."""

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import leukolab

pytestmark = [pytest.mark.integration, pytest.mark.long]


@pytest.fixture(scope="module")
def sessions_run(tmp_path_factory):
    """The `sessions` profile, small (tiny images, one epoch), up to the evaluation: (workspace, run folder)."""
    workspace = tmp_path_factory.mktemp("sessions")
    result = leukolab(workspace, "run", "--profile", "sessions", "--run-id", "sessions-1", "--until", "evaluate",
                      "--param", "images_per_class=40", "--param", "image_size=32", "--param", "epochs=1",
                      "--param", "synthetic_options={sessions: {size: 8, class_bias: 3}, image_size: 64}",
                      "--param", "probe_samples=200", "--param", "bootstrap_samples=200", timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workspace, workspace / "runs" / "sessions-1"


def test_one_etl_run_writes_both_assignments_and_the_report_draws_the_blocks(sessions_run):
    _, run = sessions_run
    dataset_dir = Path(json.loads((run / "etl.json").read_text())["dataset_dir"])
    manifest = json.loads((dataset_dir / "manifest.json").read_text())
    section = manifest["acquisition"]
    assert section["available"] and section["straddling_images"] == 0 and section["key"] == "the last number in the file name"
    assert set(section["counts"]) == {"train", "val", "test", "embargo"}
    assert sum(sum(c.values()) for c in section["counts"].values()) == sum(sum(c.values()) for c in manifest["counts"].values())
    etl_notebook = next(run.glob("*_etl.ipynb")).read_text()
    assert "acquisition key: the last number in the file name" in etl_notebook and "balanced accuracy (acquisition)" in etl_notebook


def test_the_evaluation_shows_both_figures_the_probes_and_the_warning(sessions_run):
    workspace, run = sessions_run
    evaluation = json.loads((run / "evaluate.json").read_text())
    aware = evaluation["acquisition_aware"]
    assert aware["split_strategy"] == "acquisition" and aware["selection"] and evaluation["selection_strategy"] == "acquisition"
    for metric in ("accuracy", "balanced_accuracy", "macro_f1"):
        assert aware["metrics"][f"{metric}_ci_low"] <= aware["metrics"][metric] <= aware["metrics"][f"{metric}_ci_high"]
        assert metric in evaluation["champion"]["metrics"]  # the image-level figure
    probes = {(p["name"], p["split_strategy"]): p for p in evaluation["shortcut_probes"]}
    assert len(probes) == 8
    background = probes[("background_colour", "acquisition")]
    assert background["balanced_accuracy"] > background["chance"] + 0.25  # the planted shortcut, on unseen sessions too
    assert "SHORTCUT WARNING" in evaluation["shortcut_warning"]

    notebook = next(run.glob("*_evaluate.ipynb")).read_text()
    assert "image-level (grouped split)" in notebook and "acquisition-aware (blocks + embargo)" in notebook
    assert "SHORTCUT WARNING" in notebook and "probe: background_colour" in notebook
    tags = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}").get_run(evaluation["mlflow_run_id"]).data.tags
    assert "background_colour" in tags["shortcut_warning"] and tags["selection_strategy"] == "acquisition"
