"""How stages hand results on: output JSONs in a run's folder."""

import os

import pytest

from leukolab.stages import latest_run_with, read_output, write_output


def test_outputs_round_trip_and_a_missing_one_names_its_stage(tmp_path):
    write_output(tmp_path / "run", "classify-simple-cnn", {"model_uri": "runs:/x/model"})
    assert read_output(tmp_path / "run", "classify-simple-cnn") == {"model_uri": "runs:/x/model"}
    with pytest.raises(FileNotFoundError, match="run the 'etl' stage"):
        read_output(tmp_path / "run", "etl")


def test_latest_run_with_a_stage_output_or_the_default(tmp_path, monkeypatch):
    monkeypatch.setenv("LEUKOLAB_WORKSPACE", str(tmp_path))
    assert latest_run_with("etl") == tmp_path / "runs" / "interactive"
    older = write_output("runs/a", "etl", {})
    write_output("runs/b", "etl", {})
    write_output("runs/c", "evaluate", {})
    os.utime(older, (older.stat().st_atime, older.stat().st_mtime + 60))
    assert latest_run_with("etl") == tmp_path / "runs" / "a"
