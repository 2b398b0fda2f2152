"""``leukolab sweep``: the search space (defaults, files, their errors), the study (resume, dead trials asked again),
pruning that stops training, and a real two-trial study through the CLI on the smoke run's workspace."""

import json
import uuid

import optuna
import pytest
from optuna.trial import TrialState

from conftest import leukolab
from leukolab import CLASS_NAMES
from leukolab.config import PARAMS_DIR, load_named
from leukolab.config.errors import ConfigError
from leukolab.config.experiment import load_experiment
from leukolab.data.reading.dataset import SmearDataset
from leukolab.data.synthetic.smears import smear_table
from leukolab.models.factory import build_model
from leukolab.sweep.space import as_overrides, check_values, default_space, parse_space
from leukolab.sweep.study import finished_count, open_study, recover, storage_url, study_lock
from leukolab.sweep.trial import PRUNED_AT, epoch_reporter
from leukolab.tracking import flatten
from leukolab.training.loop import fit

SETTINGS = {"profile": "smoke", "experiment": "simple-cnn", "space": {"training.lr": {"low": 0.001, "high": 0.1, "log": True}}}
LR = {"training.lr": optuna.distributions.FloatDistribution(0.001, 0.1, log=True)}


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    monkeypatch.setenv("LEUKOLAB_WORKSPACE", str(tmp_path))
    return tmp_path


def test_the_default_space_lies_around_the_experiments_own_values():
    experiment = load_experiment("resnet18-classifier", {"training": {"batch_size": 32}, "augmentation": {"mixup": 0.0}})
    space = default_space(experiment)
    lr = space["training.lr"]
    assert (lr.low, lr.high, lr.log) == pytest.approx((experiment.training.lr / 10, experiment.training.lr * 10, True))
    assert space["training.batch_size"].choices == (16, 32, 64)
    assert space["training.weight_decay"].log
    strengths = {key for key in space if key.startswith("augmentation.")}
    on = {f"augmentation.{k}" for k, v in experiment.augmentation.model_dump().items() if type(v) is float and v > 0}
    assert strengths == on and "augmentation.mixup" not in strengths
    assert space["augmentation.brightness"].high == pytest.approx(2 * experiment.augmentation.brightness)


def test_a_space_file_becomes_distributions_and_a_trial_its_overrides():
    space = parse_space({"training.lr": {"low": 1e-4, "high": 1e-2, "log": True}, "training.batch_size": {"choices": [8, 16]},
                         "early_stopping.patience": {"low": 2, "high": 6}, "loss.name": {"choices": ["focal", "cross_entropy"]}},
                        "space.yaml")
    assert isinstance(space["training.lr"].distribution(), optuna.distributions.FloatDistribution)
    assert isinstance(space["early_stopping.patience"].distribution(), optuna.distributions.IntDistribution)
    assert space["training.batch_size"].distribution().choices == (8, 16)
    assert as_overrides({"training.lr": 0.003, "training.batch_size": 8, "seed": 1}) == \
        {"training": {"lr": 0.003, "batch_size": 8}, "seed": 1}


@pytest.mark.parametrize("entries, message", [
    ({"training.lrr": {"low": 0.1, "high": 1}}, "space.yaml: unknown key `training.lrr` (did you mean `lr`?)"),
    ({"trainig.lr": {"low": 0.1, "high": 1}}, "unknown key `trainig` (did you mean `training`?)"),
    ({"training": {"low": 0.1, "high": 1}}, "`training` is a section; search one of its keys: epochs, batch_size"),
    ({"training.lr": {"low": 0.1, "hgh": 1}}, "space.yaml: training.lr: unknown key `hgh` (did you mean `high`?)"),
    ({"training.lr": {"low": 0.1}}, "a range needs both low and high"),
    ({"training.lr": {"low": 1, "high": 0.1}}, "low (1) must be below high (0.1)"),
    ({"training.lr": {"low": 0, "high": 0.1, "log": True}}, "a log range needs low above 0"),
    ({"training.batch_size": {"low": 8.5, "high": 32}}, "low and high must be integers"),
    ({"augmentation.flip": {"low": 0, "high": 1}}, "not a number, so it takes choices"),
    ({"model.decoder_channels": {"choices": [[64, 32]]}}, "choices must be a non-empty list of numbers"),
    ({"training.lr": 0.1}, "give {low, high, log} or {choices}"),
    ({}, "the space is empty"),
])
def test_a_bad_space_file_is_refused_with_the_key_and_a_suggestion(entries, message):
    with pytest.raises(ConfigError) as caught:
        parse_space(entries, "space.yaml")
    assert message in str(caught.value)


def test_bounds_are_checked_against_the_experiment_schema():
    values = load_named("experiments", "simple-cnn")
    check_values(parse_space({"model.dropout": {"low": 0.0, "high": 0.5}}, "s"), values, "s")
    with pytest.raises(ConfigError, match=r"s: model.dropout=1.0: `model.dropout`: Input should be less than 1"):
        check_values(parse_space({"model.dropout": {"low": 0.1, "high": 1.0}}, "s"), values, "s")


def test_a_study_resumes_with_its_settings_and_refuses_other_ones(workspace):
    study = open_study("s", SETTINGS, seed=0)
    study.tell(study.ask(LR), 0.5)
    again = open_study("s", SETTINGS, seed=0)
    assert finished_count(again) == 1 and (workspace / "sweeps" / "s.db").is_file()
    assert storage_url("s") == f"sqlite:///{workspace / 'sweeps' / 's.db'}"
    with pytest.raises(ConfigError, match="searched another space"):
        open_study("s", {**SETTINGS, "space": {"training.lr": {"low": 0.01, "high": 0.1, "log": True}}}, seed=0)
    with study_lock("s"), pytest.raises(ConfigError, match="being swept by another process"):
        with study_lock("s"):
            pass
    with pytest.raises(ConfigError, match="letters, digits"):
        with study_lock("../x"):
            pass


def test_trials_left_running_by_a_dead_sweep_fail_and_are_asked_again(workspace):
    study = open_study("s", SETTINGS, seed=0)
    study.tell(study.ask(LR), 0.5)
    dead = study.ask(LR)  # its sweep died: nobody will tell it
    resumed = open_study("s", SETTINGS, seed=0)
    assert recover(resumed) == [dead.number]
    assert resumed.trials[dead.number].state == TrialState.FAIL and finished_count(resumed) == 1
    retry = resumed.ask(LR)
    assert retry.params == dead.params and retry.user_attrs == {"retry_of": dead.number}
    assert recover(resumed) == [retry.number]  # still running here, so it would be asked once more


def test_a_pruned_trial_stops_training_at_the_epoch_it_is_pruned(workspace):
    study = open_study("s", SETTINGS, seed=0)
    for _ in range(2):  # two earlier trials that did far better at every epoch
        trial = study.ask(LR)
        for epoch in range(1, 6):
            trial.report(2.0, epoch)
        study.tell(trial, 2.0)
    trial = study.ask(LR)
    reporter = epoch_reporter({"storage": storage_url("s"), "study": "s", "trial_id": trial._trial_id,
                               "metric": "val_macro_f1"})
    data = SmearDataset(smear_table(2, 32, 4))
    experiment = load_experiment("simple-cnn", {"training": {"epochs": 6, "batch_size": 8}, "model": {"width": 4}})
    epochs_seen = []
    with pytest.raises(optuna.TrialPruned, match="pruned after epoch 3"):
        fit(build_model(experiment, 4), data, data, experiment, [0.7] * 3, [0.2] * 3, CLASS_NAMES,
            on_epoch_end=lambda epoch, metrics: (epochs_seen.append(epoch), reporter(epoch, metrics)))
    frozen = study.trials[trial.number]
    assert epochs_seen == [1, 2, 3] and sorted(frozen.intermediate_values) == [1, 2, 3]
    assert frozen.user_attrs[PRUNED_AT] == 3
    assert epoch_reporter(None) is None


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_a_sweep_runs_trials_under_one_mlflow_run_writes_the_best_experiment_and_resumes(smoke_run, tmp_path, monkeypatch):
    workspace, _ = smoke_run
    space = tmp_path / "space.yaml"
    space.write_text("training.lr: {low: 1.0e-4, high: 1.0e-2, log: true}\ntraining.batch_size: {choices: [8, 16]}\n")
    name = f"simple-cnn-sweeptest-{uuid.uuid4().hex[:8]}"
    best = PARAMS_DIR / "experiments" / f"{name}.yaml"
    args = ["sweep", "--profile", "smoke", "--experiment", "simple-cnn", "--space", str(space), "--study", "t",
            "--out", str(best)]
    try:
        first = leukolab(workspace, *args, "--trials", "2", "--jobs", "2", timeout=420)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        assert "2 trials in" in first.stdout and "best: trial" in first.stdout
        header = best.read_text().splitlines()[0]
        assert header.startswith("# Best trial") and "sweep study `t`" in header and "val macro_f1" in header
        swept, original = (flatten(load_experiment(n).model_dump()) for n in (name, "simple-cnn"))
        assert {k for k in original if swept[k] != original[k]} <= {"name", "training.lr", "training.batch_size"}

        again = leukolab(workspace, *args, "--trials", "3", timeout=300)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        assert "1 trial in" in again.stdout
        study = optuna.load_study(study_name="t", storage=f"sqlite:///{workspace / 'sweeps' / 't.db'}")
        assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    finally:
        best.unlink(missing_ok=True)

    monkeypatch.setenv("LEUKOLAB_WORKSPACE", str(workspace))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from mlflow.tracking import MlflowClient

    from leukolab.tracking import configure

    configure()
    client = MlflowClient()
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["leukolab.sweep"] == "t"
    assert parent.data.params["objective"] == "val_macro_f1"
    assert parent.data.metrics["best_val_macro_f1"] == pytest.approx(study.best_value)
    trials = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(int(r.data.tags["leukolab.sweep.trial"]) for r in trials) == [0, 1, 2]
    for run in trials:
        trial = study.trials[int(run.data.tags["leukolab.sweep.trial"])]
        assert run.data.metrics["sweep_objective"] == pytest.approx(trial.value)
        assert float(run.data.params["training.lr"]) == pytest.approx(trial.params["training.lr"])
        assert json.loads(run.data.tags["leukolab.sweep.params"]) == trial.params
    assert {"sweep/trials.csv", f"sweep/{name}.yaml"} <= {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
