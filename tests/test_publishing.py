"""Evaluation of logged models, the champion gate, publishing with a model card, and clear errors (real MLflow)."""

import mlflow
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from leukolab import tracking
from leukolab.config.experiment import Experiment
from leukolab.data.reading.dataset import SmearDataset
from leukolab.data.synthetic.smears import smear_table
from leukolab.evaluation.compare import candidate_summary, evaluate_model, experiment_runs, load_run_model
from leukolab.evaluation.gate import gate
from leukolab.models.factory import build_model
from leukolab.predictor.smear_model import log_smear_model
from leukolab.predictor.uri import load_smear_model
from leukolab.processes.background import free_port
from leukolab.publishing.provenance import PromotionRefused
from leukolab.publishing.registry import publish

pytestmark = pytest.mark.integration
MODEL = "leukolab-gate-test"


@pytest.fixture(scope="module")
def dataset():
    return SmearDataset(smear_table(4, 64, seed=11), with_masks=True)


@pytest.fixture(scope="module")
def logged_runs(model_env):
    """Two runs whose models have identical weights: neither is better than the other."""
    tracking.configure()  # this module's store, whatever an earlier test set as mlflow's tracking URI
    experiment = Experiment.model_validate({"task": "joint", "model": {"architecture": "Unet", "encoder": "resnet18", "encoder_weights": None}})
    meta = {"experiment": experiment.model_copy(update={"name": "gate-test"}), "class_names": model_env["class_names"], "image_size": 64,
            "mean": [0.5] * 3, "std": [0.25] * 3, "temperature": 1.0}
    runs = []
    for name in ("first", "second"):
        torch.manual_seed(0)
        network = build_model(experiment, 4)
        with mlflow.start_run(run_name=name, tags={"dataset_fingerprint": "gate-fingerprint"}) as run:
            info = log_smear_model(network, meta, [model_env["example_image"]])
        runs.append({"run_id": run.info.run_id, "experiment": "gate-test", "run_name": name, "task": "joint",
                     "stage": f"classify-{name}", "model_uri": info.model_uri})
    return pd.DataFrame(runs)


MANIFEST = {"dataset": "synthetic-gate-test", "fingerprint": "gate-fingerprint", "layout": "original_segmented",
            "classes": ["Benign", "Early", "Pre", "Pro"], "image_size": 64, "parameters": {"seed": 11},
            "counts": {"test": {"Benign": 4, "Early": 4, "Pre": 4, "Pro": 4}},
            "leakage": {"grouped_exact": 0, "grouped_near": 0, "grouped_patient": None, "grouped_test_images": 16}}
EVALUATION = {"split_strategy": "grouped", "selection_strategy": "grouped", "acquisition_aware": None,
              "shortcut_probes": [{"name": "background_colour", "split_strategy": "grouped", "balanced_accuracy": 0.3,
                                   "ci_low": 0.2, "ci_high": 0.4, "chance": 0.25}], "shortcut_warning": None}
"""What 30_evaluate hands on that the promotion gate needs (a dataset without an acquisition key)."""


def test_evaluation_has_intervals_and_is_reproducible(logged_runs, dataset):
    model = load_run_model(next(logged_runs.itertuples()))
    first, outputs = evaluate_model(model, dataset, bootstrap_samples=200, seed=3)
    again, _ = evaluate_model(model, dataset, bootstrap_samples=200, seed=3)
    assert {k: v for k, v in first.items() if "latency" not in k} == {k: v for k, v in again.items() if "latency" not in k}
    for name in ("accuracy", "macro_f1", "dice", "iou"):
        assert first[f"{name}_ci_low"] <= first[name] <= first[f"{name}_ci_high"]
    assert 0 <= first["ece"] <= 1 and outputs["probabilities"].shape == (16, 4)


def test_a_candidate_that_is_not_better_becomes_challenger(logged_runs, dataset, model_env):
    table = pd.DataFrame([{**run, "split": split, **evaluate_model(load_run_model(pd.Series(run)), dataset, 100)[0]}
                          for run in logged_runs.to_dict("records") for split in ("val", "test")])
    first, second = (candidate_summary(row, table) for _, row in table[table["split"] == "val"].iterrows())
    classes = model_env["class_names"]

    decision = gate(first, MODEL, "macro_f1", dataset, classes, margin=0.01)
    assert decision["alias"] == "champion" and "no " in decision["reason"]
    with pytest.raises(PromotionRefused, match="no shortcut-probe table"):
        publish(first, MODEL, decision, MANIFEST, "pipeline-a")  # no evaluation provenance: nothing registered
    assert not MlflowClient().search_model_versions(f"name='{MODEL}'")
    champion = publish(first, MODEL, decision, MANIFEST, "pipeline-a", evaluation=EVALUATION)

    decision = gate(second, MODEL, "macro_f1", dataset, classes, margin=0.01)
    assert decision["alias"] == "challenger" and decision["current_score"] == pytest.approx(second["metrics"]["macro_f1"])
    assert decision["split"] == "val" and "macro_f1 on val" in decision["reason"]
    external = [{"dataset": "synthetic-gate-test", "kind": "in-domain", "split": "test", "images": 16, **second["metrics"]},
                {"dataset": "shifted-stain", "kind": "external", "split": "all", "images": 12, "accuracy": 0.5, "macro_f1": 0.4,
                 "ece": 0.2}]
    challenger = publish(second, MODEL, decision, MANIFEST, "pipeline-b", external=external)

    client = MlflowClient()
    assert client.get_model_version_by_alias(MODEL, "champion").version == champion["version"]
    assert client.get_model_version_by_alias(MODEL, "challenger").version == challenger["version"] != champion["version"]
    version = client.get_model_version(MODEL, challenger["version"])
    assert "Not a medical device" in version.description and "not better" in version.tags["gate"]
    assert version.tags["test_macro_f1_ci95"].startswith("[") and version.tags["pipeline_run_id"] == "pipeline-b"
    card = mlflow.artifacts.load_text(version.tags["model_card"])
    assert "## Performance" in card and "| Benign |" in card
    assert version.tags["selection_split"] == "val" and version.tags["report_split"] == "test"
    assert "### val: selection" in card and "### test: reported, not used for selection" in card
    assert "on the **val** split" in card and "| shifted-stain | external | all | 12 | 0.500 |" in card

    # with no margin an equal score is enough to take the alias
    assert gate(second, MODEL, "macro_f1", dataset, classes, margin=0.0)["alias"] == "champion"


def test_the_referral_threshold_travels_with_the_version(logged_runs, dataset, model_env):
    from leukolab.evaluation.selective import select_referral
    from leukolab.predictor.decision import threshold_from_tags
    from leukolab.predictor.uri import resolve_model

    name, run = "leukolab-referral-test", logged_runs.to_dict("records")[0]
    metrics, outputs = evaluate_model(load_run_model(pd.Series(run)), dataset, bootstrap_samples=0)
    table = pd.DataFrame([{**run, "split": split, **metrics} for split in ("val", "test")])
    candidate = candidate_summary(table[table["split"] == "val"].iloc[0], table)
    both = (dataset.labels.numpy(), outputs["probabilities"])
    referral, _ = select_referral(both, both, model_env["class_names"], 0.5, samples=50)

    decision = gate(candidate, name, "macro_f1", dataset, model_env["class_names"])
    published = publish(candidate, name, decision, MANIFEST, "pipeline-r", referral=referral, evaluation=EVALUATION)
    version = MlflowClient().get_model_version(name, published["version"])
    assert threshold_from_tags(version.tags) == referral["threshold"] and version.tags["referral_target_risk"] == "0.5"
    assert version.tags["referral_val_coverage"] == f"{referral['selection']['coverage']:.4f}"
    card = mlflow.artifacts.load_text(version.tags["model_card"])
    assert "## Referral (abstain and refer)" in card and f"**{referral['threshold']:.4f}**" in card
    per_class = referral["report"]["per_class"]["Benign"]
    assert f"| Benign | {per_class['images']} | {per_class['referred']} | {per_class['coverage']:.3f} [" in card
    assert resolve_model(f"models:/{name}@champion")[1].referral_threshold == referral["threshold"]

    # the same run again (a new target risk): the registered version gets the new threshold, no new version
    stricter, _ = select_referral(both, both, model_env["class_names"], 0.0, samples=0)
    again = gate(candidate, name, "macro_f1", dataset, model_env["class_names"])
    assert again.get("unchanged") and publish(candidate, name, again, MANIFEST, "pipeline-r", referral=stricter)["version"] == published["version"]
    tags = MlflowClient().get_model_version(name, published["version"]).tags
    assert threshold_from_tags(tags) == stricter["threshold"] and tags["referral_target_risk"] == "0.0"


def test_an_override_promotes_without_provenance_and_is_recorded(logged_runs, dataset, model_env):
    name, run = "leukolab-override-test", logged_runs.to_dict("records")[0]
    metrics, _ = evaluate_model(load_run_model(pd.Series(run)), dataset, bootstrap_samples=0)
    table = pd.DataFrame([{**run, "split": split, **metrics} for split in ("val", "test")])
    candidate = candidate_summary(table[table["split"] == "val"].iloc[0], table)
    decision = gate(candidate, name, "macro_f1", dataset, model_env["class_names"])
    with_key = {**MANIFEST, "acquisition": {"available": True, "straddling_images": 0}}
    with pytest.raises(PromotionRefused, match="no acquisition-aware figure"):
        publish(candidate, name, decision, with_key, "pipeline-o", evaluation=EVALUATION)
    published = publish(candidate, name, decision, with_key, "pipeline-o", evaluation=EVALUATION,
                        promotion_override="validated on lab B's sessions")
    version = MlflowClient().get_model_version(name, published["version"])
    assert published["alias"] == "champion" and version.tags["promotion_override"] == "validated on lab B's sessions"
    assert "acquisition-aware figure" in version.tags["promotion_problems"]
    card = mlflow.artifacts.load_text(version.tags["model_card"])
    assert "## Promotion override" in card and "## Shortcut probes" in card and "| background_colour | grouped | 0.300" in card


def test_no_experiment_runs_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no experiment runs found"):
        experiment_runs(tmp_path)


def test_an_unloadable_model_names_the_run(model_env, tmp_path):
    runs = pd.DataFrame([{"run_id": "0123abcd", "experiment": "broken", "run_name": "broken", "task": "classification",
                          "stage": "classify-broken", "model_uri": "runs:/0123abcd/model"}])
    with pytest.raises(RuntimeError, match="model of run 0123abcd \\(broken\\) cannot be loaded from runs:/0123abcd/model"):
        load_run_model(next(runs.itertuples()))


def test_an_unreachable_registry_names_the_tracking_uri(monkeypatch):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(ConnectionError, match=f"MLflow tracking server {uri} is not reachable"):
        load_smear_model("models:/leukolab@champion")


@pytest.mark.parametrize("module", ["leukolab.pyfunc", "leukolab.publishing.model"])
def test_models_published_before_the_packages_still_load_their_class(module):
    """Versions published before the library's packages name ``leukolab.pyfunc``, those before ``leukolab.predictor``
    name ``leukolab.publishing.model``, as the module of their pickled class."""
    import pickle

    from leukolab.predictor.smear_model import SmearModel

    old = pickle.dumps(SmearModel(), protocol=0).replace(b"leukolab.predictor.smear_model", module.encode())
    assert module.encode() in old and isinstance(pickle.loads(old), SmearModel)


def test_a_tracking_server_gets_bounded_retries_unless_the_environment_sets_its_own(monkeypatch):
    import os

    from leukolab.tracking import HTTP_RETRIES, configure

    for name in HTTP_RETRIES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    port = free_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    with pytest.raises(ConnectionError):
        configure()
    assert {name: os.environ[name] for name in HTTP_RETRIES} == {**HTTP_RETRIES, "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
