"""The evaluate stage as library calls (``leukolab.evaluation.stage``): real models logged to MLflow, a processed
dataset on disk, the stage's record handed on; and the notebook's parameters, which are the settings' defaults."""

import ast
import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from leukolab.data.synthetic.smears import CLASS_NAMES, smear_table
from leukolab.evaluation.stage import EvaluationSettings, run_evaluation, track_evaluation
from leukolab.pipeline.parameters import notebook_parameters
from leukolab.stages.records import EtlRecord, EvaluationRecord, ExperimentRecord

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "30_evaluate.ipynb"
CHAMPION_FIGURES = {"comparison", "segmentation", "reliability", "confusion_matrix", "failure_cases", "roc",
                    "precision_recall", "heatmaps", "risk_coverage"}


@pytest.fixture(scope="module")
def run_dir(model_env, classifier_uri, segmentation_model_uri, tmp_path_factory):
    """A pipeline run's folder after its ETL and two experiment stages: a classifier and a segmenter, each logged
    to MLflow, and a dataset of 2 val and 2 test smears per class."""
    root = tmp_path_factory.mktemp("evaluate-stage")
    frame = smear_table(4, 64, seed=13)
    frame["split"] = np.where(frame.groupby("label").cumcount() < 2, "val", "test")
    dataset = root / "dataset"
    (dataset / "data").mkdir(parents=True)
    frame.to_parquet(dataset / "data" / "part-00000.parquet", index=False)
    counts = {split: {name: 2 for name in CLASS_NAMES} for split in ("val", "test")}
    (dataset / "manifest.json").write_text(json.dumps({"dataset": "evaluate-stage-test", "fingerprint": "stage-fingerprint",
                                                       "classes": list(CLASS_NAMES), "counts": counts, "image_size": 64}))
    folder = root / "run"
    EtlRecord(dataset_dir=str(dataset), fingerprint="stage-fingerprint", counts=counts).write(folder)
    for stage, experiment, task, uri in (("classify", "cnn", "classification", classifier_uri),
                                         ("segment", "unet", "segmentation", segmentation_model_uri)):
        ExperimentRecord(experiment=experiment, task=task, model_uri=uri, val_metrics={}, test_metrics={},
                         mlflow_run_id=mlflow.models.get_model_info(uri).run_id).write(folder, f"{stage}-{experiment}")
    return folder


@pytest.mark.integration
def test_the_stage_chooses_on_val_gates_refers_and_hands_on_its_record(run_dir):
    settings = EvaluationSettings(model_name="leukolab-stage-test", segmenter_name="leukolab-stage-test-segmenter",
                                  bootstrap_samples=20, probe_samples=0, target_risk=0.5)
    with mlflow.start_run() as run:
        evaluation = run_evaluation(settings, run_dir)
        record = track_evaluation(run_dir, evaluation)
    assert (record.champion["experiment"], record.segmenter["experiment"]) == ("cnn", "unet")
    assert (record.champion["selection_split"], record.champion["report_split"]) == ("val", "test")
    assert {role: gate["alias"] for role, gate in record.gates.items()} == {"champion": "champion", "segmenter": "champion"}
    assert record.referral["selection_split"] == "val" and record.referral["target_risk"] == 0.5
    assert set(record.figures) == CHAMPION_FIGURES and all(Path(path).is_file() for path in record.figures.values())
    assert {row["split"] for row in record.table} == {"val", "test"} and "model_uri" not in record.table[0]
    assert (record.ood, record.external, record.shortcut_probes, record.selection_strategy) == (None, [], [], "grouped")

    record.write(run_dir)
    again = EvaluationRecord.read(run_dir)
    assert json.dumps(again.model_dump(), sort_keys=True) == json.dumps(record.model_dump(), sort_keys=True)
    logged = MlflowClient().get_run(run.info.run_id).data
    assert logged.tags["champion_run_id"] == record.champion["run_id"] and logged.tags["selection_split"] == "val"
    assert "referral_threshold" in logged.metrics and "champion_test_macro_f1" in logged.metrics
    assert "eval_test_macro_f1" in MlflowClient().get_run(record.champion["run_id"]).data.metrics


def test_the_notebook_declares_the_settings_defaults():
    declared = notebook_parameters(NOTEBOOK)
    assert set(EvaluationSettings.model_fields) <= set(declared)
    given = {name: ast.literal_eval(declared[name].value) for name in EvaluationSettings.model_fields}
    assert EvaluationSettings(**given) == EvaluationSettings()
