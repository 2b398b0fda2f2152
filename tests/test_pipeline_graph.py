"""The stage graph, task selection, stage keys and the DAG picture (no notebook runs)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
import yaml
from PIL import Image

from leukolab.pipeline.dag import dag_text, depths, draw_dag
from leukolab.config.pipeline import load_profile
from leukolab.pipeline.graph import plan, select
from leukolab.pipeline.keys import notebook_digest, output_digest, path_digest, task_key
from leukolab.pipeline.parameters import notebook_parameters

SMOKE_TASKS = ["etl", "segment-unet-mobilenet", "classify-simple-cnn", "evaluate", "publish", "serve"]


def test_the_smoke_profile_fans_out_its_experiments():
    smoke = plan("smoke", {"epochs": 3, "classify.epochs": 2})
    assert [t.name for t in smoke.tasks] == SMOKE_TASKS
    assert smoke["evaluate"].after == ["segment-unet-mobilenet", "classify-simple-cnn"]
    assert smoke["classify-simple-cnn"].parameters["experiment"] == "simple-cnn"
    assert smoke["classify-simple-cnn"].parameters["epochs"] == 2 and smoke["segment-unet-mobilenet"].parameters["epochs"] == 3
    assert smoke["classify-simple-cnn"].deps == [Path(smoke.pipeline_file).parent / "experiments/simple-cnn.yaml"]
    assert smoke["etl"].deps == []  # no raw_dir: synthetic data, nothing to hash
    assert smoke["etl"].notebook.is_file() and smoke["etl"].timeout > 0


def test_a_raw_folder_is_a_dependency_of_the_etl(tmp_path, monkeypatch):
    monkeypatch.setenv("LEUKOLAB_RAW_DIR", str(tmp_path))
    assert plan("real")["etl"].deps == [tmp_path]
    # the recipe the acquisition-aware val split chose (docs/acquisition.md), for this profile's classifier only
    overrides = plan("real")["classify-resnet10t-classifier"].parameters["overrides"]
    assert overrides["preprocessing"] == {"stain_normalization": "reinhard"}
    monkeypatch.delenv("LEUKOLAB_RAW_DIR")
    with pytest.raises(ValueError, match="names an environment variable that is not set"):
        plan("real")


def test_a_stage_must_come_after_the_stages_it_needs(tmp_path):
    pipeline = {"stages": {"b": {"notebook": "b.ipynb", "after": ["a"]}, "a": {"notebook": "a.ipynb"}}}
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    with pytest.raises(ValueError, match=r"stage 'b' runs after: unknown stage `a`.*it must be a stage above this one"):
        plan("smoke", pipeline_file=tmp_path / "pipeline.yaml")


def test_selection_by_force_from_until_and_only():
    full = plan("full")
    everything = select(full)
    assert everything.names == [t.name for t in full.tasks] and not everything.forced and not everything.reuse_only
    experiments = load_profile("full").experiments
    assert select(full, force=["classify"]).forced == {f"classify-{name}" for name in experiments["classify"]}
    assert select(full, from_stage="evaluate").forced == {"evaluate", "publish", "serve"}
    assert select(full, from_stage="classify-simple-cnn").forced == {"classify-simple-cnn", "evaluate", "publish", "serve"}
    assert select(full, until="segment").names == ["etl", *(f"segment-{name}" for name in experiments["segment"])]
    only = select(full, only="evaluate")
    assert only.names == [t.name for t in full.tasks][:-2] and only.reuse_only == set(only.names) - {"evaluate"}
    with pytest.raises(ValueError, match="no stage or task named 'train'"):
        select(full, force=["train"])


def _notebook(path: Path, source: str, output: str | None = None) -> Path:
    cell = nbformat.v4.new_code_cell(source, execution_count=3 if output else None)
    if output:
        cell.outputs = [nbformat.v4.new_output("stream", text=output)]
    nbformat.write(nbformat.v4.new_notebook(cells=[cell], metadata={"any": output}), path)
    return path


def test_a_notebook_key_is_its_source_not_its_outputs(tmp_path):
    clean = notebook_digest(_notebook(tmp_path / "a.ipynb", "x = 1"))
    assert notebook_digest(_notebook(tmp_path / "b.ipynb", "x = 1", output="1")) == clean
    assert notebook_digest(_notebook(tmp_path / "c.ipynb", "x = 2")) != clean


def test_declared_parameters_are_what_papermill_finds():
    import papermill

    for task in plan("full").tasks:
        assert set(notebook_parameters(task.notebook)) == set(papermill.inspect_notebook(str(task.notebook)))


def test_output_digests_leave_out_where_a_result_was_logged():
    assert output_digest({"score": 1, "mlflow_run_id": "abc"}) == output_digest({"score": 1, "mlflow_run_id": "def"})
    assert output_digest({"score": 1}) != output_digest({"score": 2})


def test_a_folder_digest_changes_when_a_file_is_added_or_rewritten(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "a.jpg").write_bytes(b"1")
    before = path_digest(tmp_path / "raw")
    (tmp_path / "raw" / "b.jpg").write_bytes(b"2")
    assert path_digest(tmp_path / "raw") != before
    assert path_digest(tmp_path / "missing") == "missing"


def test_a_task_key_covers_parameters_deps_and_upstream(tmp_path):
    notebook = _notebook(tmp_path / "a.ipynb", "x = 1")
    dep = tmp_path / "experiment.yaml"
    dep.write_text("epochs: 1")
    key = task_key(notebook, {"epochs": 1}, [dep], {"etl": ("k1", {"fingerprint": "f"})})
    assert key == task_key(notebook, {"epochs": 1}, [dep], {"etl": ("k1", {"fingerprint": "f", "mlflow_run_id": "r"})})
    assert key != task_key(notebook, {"epochs": 2}, [dep], {"etl": ("k1", {"fingerprint": "f"})})
    assert key != task_key(notebook, {"epochs": 1}, [dep], {"etl": ("k2", {"fingerprint": "f"})})
    assert key != task_key(notebook, {"epochs": 1}, [dep], {"etl": ("k1", {"fingerprint": "g"})})
    dep.write_text("epochs: 2")
    assert key != task_key(notebook, {"epochs": 1}, [dep], {"etl": ("k1", {"fingerprint": "f"})})


def test_the_dag_as_text_and_picture(tmp_path):
    full = plan("full")
    assert depths(full) == {"etl": 0, **{t.name: 1 for t in full.tasks if t.stage in ("segment", "classify")},
                            "evaluate": 2, "publish": 3, "serve": 4}
    text = dag_text(full)
    assert "classify-joint-unet-resnet18" in text and "after: etl" in text
    png = draw_dag(full, tmp_path / "dag.png")
    with Image.open(png) as picture:
        assert picture.format == "PNG" and picture.width > picture.height > 200
