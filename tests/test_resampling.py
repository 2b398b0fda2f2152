"""Cross-validation folds and repeated seeds: fold assignment, the t-interval summary, child runs of an experiment."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from leukolab.data.synthetic.smears import smear_table
from leukolab.experiments.resampling import fold_assignment, resampling_summary, resampling_table, summarize
from leukolab.stages.records import ExperimentRecord


def grouped_frame(per_class: int = 10, group_size: int = 2) -> pd.DataFrame:
    """Rows of 4 classes, ``group_size`` consecutive rows of a class sharing a ``group_id``."""
    rows = [{"label": label, "group_id": label * 1000 + i // group_size} for label in range(4) for i in range(per_class)]
    return pd.DataFrame(rows)


def test_folds_keep_groups_together_and_hold_every_class():
    frame = grouped_frame()
    folds = fold_assignment(frame, 3, seed=0)
    assert set(folds) == {0, 1, 2}
    assert (frame.assign(fold=folds).groupby("group_id")["fold"].nunique() == 1).all()
    for fold in range(3):
        assert set(frame["label"][folds == fold]) == {0, 1, 2, 3}


def test_folds_are_deterministic_by_seed():
    frame = grouped_frame(per_class=12)
    assert np.array_equal(fold_assignment(frame, 3, seed=5), fold_assignment(frame, 3, seed=5))
    assert not np.array_equal(fold_assignment(frame, 3, seed=5), fold_assignment(frame, 3, seed=6))


def test_too_many_folds_are_a_clear_error():
    with pytest.raises(ValueError, match="at least 2"):
        fold_assignment(grouped_frame(), 1, seed=0)
    with pytest.raises(ValueError, match="only 8 groups"):
        fold_assignment(grouped_frame(per_class=4), 9, seed=0)
    with pytest.raises(ValueError, match="no image of label"):
        fold_assignment(grouped_frame(per_class=4, group_size=4), 3, seed=0)  # one group per class, three folds


def test_summary_is_the_mean_sample_std_and_the_student_t_interval():
    summary = summarize([1, 2, 3, 4, 5])
    # t(0.975, 4 df) = 2.7764; std = sqrt(2.5); half-width = 2.7764 * 1.5811 / sqrt(5) = 1.9632
    assert summary["mean"] == pytest.approx(3.0) and summary["std"] == pytest.approx(1.58114, abs=1e-5)
    assert (summary["ci_low"], summary["ci_high"]) == pytest.approx((1.0368, 4.9632), abs=1e-4)
    assert summary["n"] == 5
    flat = summarize([0.9, 0.9, 0.9])
    assert (flat["ci_low"], flat["ci_high"]) == pytest.approx((0.9, 0.9))
    with pytest.raises(ValueError, match="at least 2"):
        summarize([0.9])


def record(experiment: str, val: dict, test: dict, resampling: dict | None = None) -> ExperimentRecord:
    """An experiment stage's record with these figures."""
    return ExperimentRecord(experiment=experiment, task="classification", model_uri=f"runs:/{experiment}/model",
                            val_metrics=val, test_metrics=test, resampling=resampling)


def test_table_puts_the_single_split_beside_the_resampled_interval():
    summary = {"accuracy": {"mean": 0.9, "std": 0.01, "ci_low": 0.88, "ci_high": 0.92, "n": 5}}
    outputs = {"classify-a": record("a", {"accuracy": 0.95}, {"accuracy": 0.93}, {"folds": {"k": 5, "summary": summary}}),
               "classify-b": record("b", {"accuracy": 0.5}, {"accuracy": 0.5})}
    table = resampling_table(outputs)
    assert table.to_dict("records") == [{"experiment": "a", "metric": "accuracy", "single split, val": 0.95,
                                         "single split, test": 0.93, "5 folds (train+val)": "0.900 [0.880, 0.920]"}]
    assert resampling_table({"classify-b": outputs["classify-b"]}).empty
    assert resampling_summary(outputs["classify-a"].resampling).to_dict("records") == [
        {"resampling": "5 folds (train+val)", "metric": "accuracy", **summary["accuracy"]}]
    assert resampling_summary(None).empty


MEAN, STD = [0.75, 0.65, 0.68], [0.15, 0.17, 0.15]


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    """A processed dataset as the ETL lays it out (``data/*.parquet`` with ``split`` and ``group_id``, a manifest):
    per class 6 train images in pairs, 3 val (a pair and one), 3 test. Acquisition-aware (embargo 1): per class
    ranks 0-5 train, 6-7 val, 8 embargo, 9-11 test, in blocks of 3."""
    root = tmp_path_factory.mktemp("resampling-dataset")
    frame = smear_table(12, 32, seed=5)
    index = frame.groupby("label").cumcount()
    frame["split"] = np.select([index < 6, index < 9], ["train", "val"], "test")
    frame["group_id"] = frame["label"] * 100 + np.where(index < 8, index // 2, index)
    frame["acquisition_split"] = np.select([index < 6, index < 8, index < 9], ["train", "val", "embargo"], "test")
    frame["acquisition_rank"], frame["acquisition_block"] = index, frame["label"] * 4 + index // 3
    (root / "data").mkdir()
    pq.write_table(pa.Table.from_pandas(frame), root / "data" / "part-00000.parquet")
    (root / "manifest.json").write_text(json.dumps({
        "dataset": "resampling-test", "fingerprint": "resampling-fingerprint", "image_size": 32,
        "classes": ["Benign", "Early", "Pre", "Pro"], "train_mean": MEAN, "train_std": STD,
        "acquisition": {"available": True, "embargo": 1, "blocks": 4}}))
    return root


@pytest.mark.integration
def test_folds_and_seeds_run_as_child_runs_with_a_summary(dataset_dir, tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    from leukolab import tracking
    from leukolab.config.experiment import load_experiment
    from leukolab.experiments.run import run_experiment

    monkeypatch.setenv("LEUKOLAB_WORKSPACE", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracking.configure()
    experiment = load_experiment("simple-cnn", {"training": {"epochs": 1, "batch_size": 8}, "model": {"width": 8},
                                                "cv_folds": 2, "seeds": [1, 2]})
    with mlflow.start_run(run_name="simple-cnn") as parent:
        result = run_experiment(experiment, dataset_dir)

    client = MlflowClient()
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(r.info.run_name for r in children) == ["simple-cnn fold 1/2", "simple-cnn fold 2/2",
                                                         "simple-cnn seed 1", "simple-cnn seed 2"]
    for child in children:
        assert child.info.status == "FINISHED" and child.data.params["model.width"] == "8"
        assert not [a for a in client.list_artifacts(child.info.run_id)]  # no model of its own
    fold = next(r for r in children if r.info.run_name == "simple-cnn fold 1/2")
    assert "heldout_accuracy" in fold.data.metrics and not any(k.startswith("val_") for k in fold.data.metrics)
    seed = next(r for r in children if r.info.run_name == "simple-cnn seed 2")
    assert seed.data.params["seed"] == "2" and {"val_macro_f1", "test_macro_f1"} <= set(seed.data.metrics)

    folds, seeds = result.resampling["folds"], result.resampling["seeds"]
    assert sum(r["heldout_images"] for r in folds["runs"]) == 36  # train+val only: the 12 test images stay out
    assert all(r["train_images"] + r["heldout_images"] == 36 for r in folds["runs"])
    accuracies = [r["heldout"]["accuracy"] for r in folds["runs"]]
    assert folds["summary"]["accuracy"] == summarize(accuracies)
    assert set(folds["summary"]) == {"accuracy", "balanced_accuracy", "macro_f1", "roc_auc_ovr"}
    assert (folds["strategy"], folds["embargo"], folds["pooled"]["images"], folds["pooled"]["clusters"]) == (
        "grouped", 0, 36, "group_id")
    assert folds["pooled"]["balanced_accuracy_ci_low"] <= folds["pooled"]["balanced_accuracy"]
    assert seeds["summary"]["test"]["macro_f1"]["n"] == 2
    summary = resampling_summary(result.resampling)
    assert sorted(set(summary["resampling"])) == ["2 folds (train+val)", "2 folds, pooled out-of-fold", "2 seeds, test",
                                                  "2 seeds, val"]
    assert len(summary) == 15
    table = resampling_table({"classify-simple-cnn": record("simple-cnn", result.val_metrics, result.test_metrics,
                                                            result.resampling)})
    assert list(table["metric"]) == ["accuracy", "balanced_accuracy", "macro_f1", "roc_auc_ovr"]
    assert {"2 folds (train+val)", "2 folds, pooled out-of-fold", "2 seeds, val", "2 seeds, test"} <= set(table.columns)


@pytest.mark.integration
def test_blocked_folds_withhold_the_embargo_and_pool_every_out_of_fold_prediction(dataset_dir, tmp_path, monkeypatch):
    """``cv_strategy: acquisition``: per class the acquisition-aware train+val+embargo (ranks 0-8) in two contiguous
    folds (0-4, 5-8), each withholding its neighbour from training (embargo 1); test (9-11) is never read."""
    import mlflow

    from leukolab import tracking
    from leukolab.config.experiment import load_experiment
    from leukolab.experiments.resampling import run_resampling

    monkeypatch.setenv("LEUKOLAB_WORKSPACE", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracking.configure()
    experiment = load_experiment("simple-cnn", {"training": {"epochs": 1, "batch_size": 8}, "model": {"width": 8},
                                                "cv_folds": 2, "cv_strategy": "acquisition"})
    with mlflow.start_run(run_name="simple-cnn") as parent:
        folds = run_resampling(experiment, dataset_dir)["folds"]
    child = mlflow.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
                               output_format="list")[0]
    assert (child.data.params["resample.cv_strategy"], child.data.params["resample.embargo"]) == ("acquisition", "1")
    assert [(r["heldout_images"], r["embargoed_images"], r["train_images"]) for r in folds["runs"]] == [(20, 4, 12), (16, 4, 16)]
    assert (folds["strategy"], folds["embargo"], folds["pooled"]["images"], folds["pooled"]["clusters"]) == (
        "acquisition", 1, 36, "acquisition_block")
    assert {"accuracy", "balanced_accuracy_ci_low", "balanced_accuracy_ci_high"} <= set(folds["pooled"])
    assert set(resampling_summary({"folds": folds})["resampling"]) == {
        "2 blocked folds, embargo 1 (train+val)", "2 blocked folds, embargo 1, pooled out-of-fold"}


@pytest.mark.integration
def test_a_preprocessed_experiment_publishes_a_model_that_answers_as_it_was_scored(dataset_dir, tmp_path, monkeypatch):
    """Stain normalisation and a border crop, fitted on train: the logged model, loaded by URI, carries them and gives
    the test images the probabilities the experiment scored them with; the folds and the acquisition-aware child run
    train with them too."""
    import mlflow
    from scipy.special import softmax

    from leukolab import tracking
    from leukolab.config.experiment import load_experiment
    from leukolab.data.reading.dataset import SmearDataset, load_split
    from leukolab.experiments.run import run_experiment
    from leukolab.predictor.uri import load_smear_model
    from leukolab.training.loop import predict

    monkeypatch.setenv("LEUKOLAB_WORKSPACE", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracking.configure()
    experiment = load_experiment("simple-cnn", {"training": {"epochs": 1, "batch_size": 8}, "model": {"width": 8},
                                                "inference": {"tta": False}, "cv_folds": 2, "acquisition_aware": True,
                                                "preprocessing": {"stain_normalization": "reinhard", "border_crop": 0.1}})
    with mlflow.start_run(run_name="simple-cnn"):
        result = run_experiment(experiment, dataset_dir)
    model = load_smear_model(result.model_uri)
    assert model.meta.stain_target is not None and model.meta.preprocessing.border_crop == 0.1
    assert model.meta.mean != MEAN  # the colour statistics of the preprocessed train split, not the manifest's
    assert model.meta.arriving_colour == MEAN  # the drift gauge's reference: train as it arrives, unprocessed
    test = SmearDataset(load_split(dataset_dir, "test"))
    served = model.forward(test.images)["logits"] * model.meta.temperature
    scored = predict(result.model, result.test_set.images, model.meta.mean, model.meta.std)["logits"]
    assert np.allclose(softmax(served, axis=1), softmax(scored, axis=1), atol=1e-5)
    assert result.resampling["folds"]["pooled"]["images"] == 36 and result.acquisition_aware["available"]
