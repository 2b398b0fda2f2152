"""Typed parameters refuse typos: overrides, profiles, the stage graph and experiment YAMLs, each with its key named."""

import shutil

import pytest
import yaml

from leukolab import cli
from leukolab.config import PARAMS_DIR
from leukolab.config.errors import ConfigError
from leukolab.config.experiment import load_experiment, parse_experiment, stage_experiment
from leukolab.pipeline import plan

SIMPLE = {"task": "classification", "model": {"architecture": "SimpleCNN"}}


@pytest.mark.parametrize(("override", "named", "suggested"), [
    ({"clasify.epochs": 2}, "clasify", "classify"),
    ({"force": True}, "force", None),
    ({"imagesize": 64}, "imagesize", "image_size"),
    ({"classify.trainig.lr": 0.1}, "trainig", "training"),
    ({"classify.training.lrr": 0.1}, "training.lrr", "lr"),
    ({"evaluate.champion_metrc": "accuracy"}, "champion_metrc", "champion_metric"),
])
def test_a_misspelled_override_stops_the_plan_naming_the_key(override, named, suggested):
    with pytest.raises(ConfigError) as error:
        plan("smoke", override)
    assert f"`{named}`" in str(error.value)
    assert suggested is None or f"did you mean `{suggested}`" in str(error.value)


def test_a_misspelled_override_stops_leukolab_run_before_any_stage(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LEUKOLAB_WORKSPACE", str(tmp_path))
    assert cli.main(["run", "--profile", "smoke", "--param", "clasify.epochs=2"]) == 2
    assert "unknown stage `clasify` (did you mean `classify`?)" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_values_are_checked_against_their_schema_before_anything_runs():
    with pytest.raises(ConfigError, match="`image_size`: Input should be a valid integer"):
        plan("smoke", {"image_size": "big"})
    with pytest.raises(ConfigError, match="`training.lr`: Input should be a valid number"):
        plan("smoke", {"classify.training.lr": "fast"})
    with pytest.raises(ConfigError, match="`run_dir` is set by the runner"):
        plan("smoke", {"run_dir": "elsewhere"})


def test_experiment_keys_reach_the_experiment_stages_as_overrides():
    tasks = {t.name: t for t in plan("smoke", {"classify.training.lr": 0.01, "classify.epochs": 2}).tasks}
    classify = tasks["classify-simple-cnn"].parameters
    streaming = {"data": {"loading": "streaming"}}  # the smoke profile's own experiment keys, merged with the CLI's
    assert classify["overrides"] == {"training": {"lr": 0.01}, **streaming} and classify["epochs"] == 2
    assert tasks["segment-unet-mobilenet"].parameters["overrides"] == streaming
    trained = stage_experiment("simple-cnn", classify["overrides"], epochs=classify["epochs"], seed=None)
    assert (trained.training.lr, trained.training.epochs, trained.seed) == (0.01, 2, load_experiment("simple-cnn").seed)


@pytest.mark.parametrize(("profile", "named", "suggested"), [
    ({"paramters": {"seed": 1}}, "paramters", "parameters"),
    ({"parameters": {"imge_size": 64}}, "imge_size", "image_size"),
    ({"stage_parameters": {"segmnt": {"epochs": 1}}}, "segmnt", "segment"),
    ({"stage_parameters": {"segment": {"epoch": 1}}}, "epoch", "epochs"),
    ({"experiments": {"clasify": ["simple-cnn"]}}, "clasify", "classify"),
    ({"experiments": {"classify": ["simple-cnm"]}}, "simple-cnm", "simple-cnn"),
])
def test_a_misspelled_profile_key_names_its_file_and_key(tmp_path, profile, named, suggested):
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(profile))
    with pytest.raises(ConfigError) as error:
        plan(str(path))
    assert f"`{named}`" in str(error.value) and f"did you mean `{suggested}`" in str(error.value)


def test_a_misspelled_experiment_yaml_names_its_file_and_key(tmp_path, monkeypatch):
    params = tmp_path / "params"
    shutil.copytree(PARAMS_DIR, params)
    experiment = yaml.safe_load((params / "experiments" / "simple-cnn.yaml").read_text())
    experiment["trainig"] = experiment.pop("training")
    (params / "experiments" / "simple-cnn.yaml").write_text(yaml.safe_dump(experiment))
    monkeypatch.setattr("leukolab.config.PARAMS_DIR", params)
    with pytest.raises(ConfigError, match=r"params/experiments/simple-cnn\.yaml.*unknown key `trainig` \(did you mean `training`\?\)"):
        plan("smoke")


def test_a_misspelled_stage_graph_key_names_the_file(tmp_path):
    pipeline = yaml.safe_load((PARAMS_DIR / "pipeline.yaml").read_text())
    pipeline["stages"]["etl"]["timout"] = pipeline["stages"]["etl"].pop("timeout")
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    with pytest.raises(ConfigError, match=r"pipeline\.yaml: unknown key `stages\.etl\.timout` \(did you mean `timeout`\?\)"):
        plan("smoke", pipeline_file=tmp_path / "pipeline.yaml")


def test_experiment_defaults_live_in_the_schema():
    experiment = parse_experiment(SIMPLE)
    assert experiment.seed == 42 and experiment.training.epochs == 10 and experiment.monitor == "val_macro_f1"
    with pytest.raises(ConfigError, match="did you mean `training`"):
        parse_experiment({**SIMPLE, "trainig": {}})


def test_leukolab_params_lists_types_and_defaults(capsys):
    assert cli.main(["params", "etl"]) == 0
    etl = capsys.readouterr().out
    assert any(line.split()[:3] == ["image_size", "int", "96"] for line in etl.splitlines())
    assert cli.main(["params", "classify"]) == 0
    classify = capsys.readouterr().out
    assert any(line.split()[:3] == ["training.lr", "float", "0.001"] for line in classify.splitlines())
    assert cli.main(["params", "clasify"]) == 2
    assert "did you mean `classify`" in capsys.readouterr().err


@pytest.mark.parametrize("item", ["classify.spark_master=spark://127.0.0.1:7077",
                                  "classify.distributed.master=spark://127.0.0.1:7077", "spark_master=spark://127.0.0.1:7077"])
def test_the_training_cluster_is_set_from_the_command_line(item):
    the_plan = plan("smoke", cli._overrides([item, "classify.num_processes=2"]))
    task = the_plan["classify-simple-cnn"].parameters
    trained = stage_experiment(task["experiment"], task.get("overrides"), spark_master=task.get("spark_master"),
                               num_processes=task["num_processes"])
    assert (trained.distributed.master, trained.distributed.num_processes) == ("spark://127.0.0.1:7077", 2)
    bare = not item.startswith("classify.")
    assert the_plan["etl"].parameters.get("spark_master") == ("spark://127.0.0.1:7077" if bare else None)
    assert (the_plan["segment-unet-mobilenet"].parameters.get("spark_master") is not None) == bare
