"""Parameter loading and the pipeline plan."""

import pytest

from leukolab.config import available, deep_merge, load_named, parse_value
from leukolab.config.experiment import load_experiment
from leukolab.pipeline import plan


def test_deep_merge_ignores_none_and_merges_nested():
    assert deep_merge({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"b": 5}, "d": None}) == {"a": {"b": 5, "c": 2}, "d": 3}
    assert deep_merge({"training": {"epochs": 3}}, {"distributed": {"num_processes": None}}) == {"training": {"epochs": 3}, "distributed": {}}


def test_parse_value_reads_yaml_scalars():
    assert parse_value("3") == 3 and parse_value("0.5") == 0.5 and parse_value("true") is True
    assert parse_value("[a, b]") == ["a", "b"] and parse_value("local[2]") == "local[2]"


def test_unknown_names_list_the_choices():
    with pytest.raises(ValueError, match="simple-cnn"):
        load_named("experiments", "no-such-experiment")


def test_every_profile_plans_every_stage_and_every_experiment_exists():
    for profile in ("smoke", "default", "full", "real-like"):
        tasks = plan(profile).tasks
        assert [t.stage for t in tasks][0] == "etl" and [t.stage for t in tasks][-1] == "serve"
        for task in tasks:
            if "experiment" in task.parameters:
                load_experiment(task.parameters["experiment"])
    assert {"smoke", "default", "real"} <= set(available("profiles"))


def test_overrides_reach_every_stage_or_one_stage():
    tasks = {t.name: t for t in plan("smoke", {"seed": 11, "classify.epochs": 3}).tasks}
    assert tasks["etl"].parameters["seed"] == 11
    assert tasks["classify-simple-cnn"].parameters["epochs"] == 3
    assert tasks["segment-unet-mobilenet"].parameters["epochs"] == 1


def test_real_profile_needs_its_environment_variable(monkeypatch):
    monkeypatch.delenv("LEUKOLAB_RAW_DIR", raising=False)
    with pytest.raises(ValueError, match="LEUKOLAB_RAW_DIR"):
        plan("real")
    monkeypatch.setenv("LEUKOLAB_RAW_DIR", "/data/all")
    assert plan("real")["etl"].parameters["raw_dir"] == "/data/all"
