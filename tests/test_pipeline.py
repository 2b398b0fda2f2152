"""The whole pipeline on the smoke profile, in a temporary workspace, through the real CLI: run, then run again."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import leukolab

pytestmark = pytest.mark.integration
NOTEBOOKS = ["etl", "segment-unet-mobilenet", "classify-simple-cnn", "evaluate", "publish", "serve"]


def test_smoke_run_keeps_every_executed_notebook_and_output(smoke_run):
    workspace, _ = smoke_run
    run_dir = workspace / "runs" / "smoke-1"
    names = sorted(p.name for p in run_dir.glob("*.ipynb"))
    assert [n.split("_", 1)[1][:-6] for n in names] == NOTEBOOKS
    for name in NOTEBOOKS:
        assert (run_dir / f"{name}.json").is_file()
    lineage = json.loads((run_dir / "lineage.json").read_text())
    assert lineage["status"] == "finished" and list(lineage["tasks"]) == NOTEBOOKS
    assert {t["status"] for t in lineage["tasks"].values()} == {"done"}


def test_a_second_run_with_nothing_changed_reuses_every_stage(smoke_run):
    workspace, first = smoke_run
    again = leukolab(workspace, "run", "--profile", "smoke", "--run-id", "smoke-2")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "(0 done, 6 cached)" in again.stdout and "champion: leukolab version 1 (@champion)" in again.stdout
    lineage = json.loads((workspace / "runs" / "smoke-2" / "lineage.json").read_text())
    assert {t["cached_from"] for t in lineage["tasks"].values()} == {"smoke-1"}
    assert not list((workspace / "runs" / "smoke-2").glob("*.ipynb"))


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


def test_the_smoke_run_audits_its_real_like_masks_and_chooses_on_val(smoke_run, monkeypatch):
    """Smoke segmentations are false-colour JPEGs, most of Pro's failed: the audit drops those masks (the images stay),
    warns of the shortcut, segmentation trains on plausible masks only, and the champion is chosen on val."""
    workspace, _ = smoke_run
    run_dir = workspace / "runs" / "smoke-1"
    manifest = json.loads((Path(json.loads((run_dir / "etl.json").read_text())["dataset_dir"]) / "manifest.json").read_text())
    per_class = manifest["masks"]["classes"]
    assert per_class["Pro"]["implausible"] >= 5 and per_class["Early"]["implausible"] == 0
    assert sum(manifest["counts"][split]["Pro"] for split in manifest["counts"]) == 10
    assert manifest["masks"]["shortcut_warning"] and manifest["leakage"]["grouped_exact"] == 0
    monkeypatch.setenv("LEUKOLAB_WORKSPACE", str(workspace))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from mlflow.tracking import MlflowClient

    from leukolab.tracking import configure

    configure()
    segment = json.loads((run_dir / "segment-unet-mobilenet.json").read_text())
    params = MlflowClient().get_run(segment["mlflow_run_id"]).data
    plausible = sum(c["ok"] for c in per_class.values())
    used = sum(params.metrics[f"mask_images_{split}"] for split in ("train", "val", "test"))
    assert 0 < used <= plausible < 40
    assert params.tags["data_loading"] == "streaming"  # a segmenter's stream holds only the plausible masks
    evaluation = json.loads((run_dir / "evaluate.json").read_text())
    assert (evaluation["selection_split"], evaluation["report_split"]) == ("val", "test")


def test_a_failing_stage_stops_the_run_and_says_where(tmp_path, monkeypatch):
    missing = tmp_path / "no-such-folder"
    result = leukolab(tmp_path, "run", "--profile", "smoke", "--run-id", "broken", "--param", f"etl.raw_dir={missing}")
    assert result.returncode != 0
    assert "stage 'etl' failed in cell" in result.stderr and f"raw_dir {missing} does not exist" in result.stderr
    assert str(tmp_path / "runs" / "broken" / "00_etl.ipynb") in result.stderr
    lineage = json.loads((tmp_path / "runs" / "broken" / "lineage.json").read_text())
    assert lineage["status"] == "failed" and lineage["tasks"]["etl"]["status"] == "failed"
    monkeypatch.setenv("LEUKOLAB_WORKSPACE", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from mlflow.tracking import MlflowClient

    from leukolab.tracking import configure

    configure()
    etl = MlflowClient().get_run(lineage["tasks"]["etl"]["mlflow_run_id"])  # opened before the work, so it exists
    assert etl.info.status == "FAILED" and "does not exist" in etl.data.tags["leukolab.error"]
    assert etl.data.params["spark_master"] == "local[2]" and etl.data.params["image_size"] == "64"


def test_the_published_champion_reevaluates_to_its_registered_metrics(smoke_run, monkeypatch):
    workspace, _ = smoke_run
    monkeypatch.setenv("LEUKOLAB_WORKSPACE", str(workspace))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    import mlflow
    from mlflow.tracking import MlflowClient

    from leukolab.evaluation.compare import reevaluate_version
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


def test_a_classify_run_holds_everything_and_its_model_predicts_a_jpeg_alone(smoke_run, tmp_path, monkeypatch):
    """Params, per-epoch metrics, plots, notebook, lineage tags; then the model in a bare process on a raw JPEG."""
    workspace, _ = smoke_run
    from mlflow.tracking import MlflowClient

    from PIL import Image

    from leukolab.data.synthetic.smears import image_rng, render_smear
    from leukolab.tracking import configure

    monkeypatch.setenv("LEUKOLAB_WORKSPACE", str(workspace))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    configure()
    classify = json.loads((workspace / "runs" / "smoke-1" / "classify-simple-cnn.json").read_text())
    client = MlflowClient()
    run = client.get_run(classify["mlflow_run_id"])
    assert {"training.lr", "training.schedule", "augmentation.rotate90", "loss.name", "model.architecture"} <= set(run.data.params)
    assert {"dataset_fingerprint", "git_commit", "git_dirty"} <= set(run.data.tags)
    assert run.data.tags["data_loading"] == "streaming"  # the smoke profile trains and evaluates from the Parquet stream
    for metric in ("train_loss", "val_macro_f1", "val_accuracy", "val_roc_auc_ovr", "lr"):
        assert client.get_metric_history(run.info.run_id, metric), metric
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/learning_curves.png", "plots/misclassified.png"} <= artifacts
    assert client.list_artifacts(run.info.run_id, "notebook")

    jpeg = tmp_path / "smear.jpg"
    Image.fromarray(render_smear(image_rng(3, "Pre", 0), "Pre", size=200)[0]).save(jpeg, quality=90)
    script = (
        "import sys, mlflow, pandas as pd\n"
        "model = mlflow.pyfunc.load_model(sys.argv[1])\n"
        "assert model.metadata.signature is not None and model.metadata.saved_input_example_info\n"
        "answer = model.predict(pd.DataFrame({'image': [open(sys.argv[2], 'rb').read()]}))\n"
        "import leukolab\n"
        "print(answer['predicted_class'][0], round(sum(answer[c][0] for c in answer if c.startswith('prob_')), 4))\n"
        "print(leukolab.__file__)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LEUKOLAB_WORKSPACE")}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{workspace / 'mlflow.db'}"
    bare = subprocess.run([sys.executable, "-c", script, classify["model_uri"], str(jpeg)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert bare.returncode == 0, bare.stderr[-3000:]
    answer, module = bare.stdout.splitlines()[-2:]
    predicted, total = answer.split()
    assert predicted in ("Benign", "Early", "Pre", "Pro") and total == "1.0"
    assert str(workspace / "mlartifacts") in module, "the model should import the library it carries, not this checkout's"
