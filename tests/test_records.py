"""Stage records: outputs written before the records existed read back through today's classes and are written again
byte for byte; the run comparison reads such a run's lineage; what a stage without a record of its own hands on."""

import json
import shutil
from pathlib import Path

import pytest

from leukolab.pipeline.comparison import compare_runs
from leukolab.stages.records import (EtlRecord, EvaluationRecord, ExperimentRecord, PublishRecord, ServeRecord,
                                     StageRecord, record_type, resolve_dataset)

OLD = Path(__file__).parent / "stage-records"
"""The outputs and lineage of a smoke run (`leukolab run --profile smoke`) made at 927b5ba, before the records."""
OUTPUTS = sorted(path.stem for path in OLD.glob("*.json") if path.stem != "lineage")


def test_every_stage_of_the_pipeline_has_an_output_here():
    assert {name.split("-")[0] for name in OUTPUTS} == {"etl", "segment", "classify", "evaluate", "publish", "serve"}


@pytest.mark.parametrize("name", OUTPUTS)
def test_an_output_written_before_the_records_reads_and_is_written_again_unchanged(name, tmp_path):
    stage = name.split("-")[0]
    record = record_type(stage).read(OLD, name)
    assert type(record) in (EtlRecord, ExperimentRecord, EvaluationRecord, PublishRecord, ServeRecord)
    assert record.mlflow_run_id == json.loads((OLD / f"{name}.json").read_text())["mlflow_run_id"]
    assert record.write(tmp_path, name).read_text() == (OLD / f"{name}.json").read_text()


def test_records_are_read_by_name_and_say_which_stage_is_missing(tmp_path):
    evaluation = EvaluationRecord.read(OLD)
    assert evaluation.champion["experiment"] == "simple-cnn" and evaluation.gates["champion"]["alias"]
    assert resolve_dataset(None, OLD) == Path(EtlRecord.read(OLD).dataset_dir)
    assert list(ExperimentRecord.read_all(OLD)) == ["segment-unet-mobilenet", "classify-simple-cnn"]
    with pytest.raises(FileNotFoundError, match="run the 'publish' stage"):
        PublishRecord.read(tmp_path)
    with pytest.raises(ValueError, match="<stage>-<experiment>"):
        ExperimentRecord.read(OLD, "classify-simple-cnn").write(tmp_path)


def test_a_stage_without_a_record_of_its_own_hands_on_its_mlflow_run():
    assert record_type("report") is StageRecord
    assert StageRecord.model_validate({"best": "a", "mlflow_run_id": "r"}).mlflow_run_id == "r"
    assert StageRecord.from_output({}) is None and PublishRecord.from_output(None) is None


def test_compare_reads_a_lineage_written_before_the_records(tmp_path, monkeypatch):
    monkeypatch.setenv("LEUKOLAB_WORKSPACE", str(tmp_path))
    for run in ("a", "b"):
        (tmp_path / "runs" / run).mkdir(parents=True)
        shutil.copy(OLD / "lineage.json", tmp_path / "runs" / run / "lineage.json")
    provenance = compare_runs("a", "b").provenance.set_index("field")["a"]
    evaluation, publish = EvaluationRecord.read(OLD), PublishRecord.read(OLD)
    assert provenance["champion"] == f"simple-cnn -> {publish.model_name} version {publish.version}"
    assert provenance["dataset fingerprint"] == EtlRecord.read(OLD).fingerprint
    assert provenance["referral threshold"] == f"{evaluation.referral['threshold']:.4f}"
