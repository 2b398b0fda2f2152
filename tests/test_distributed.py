"""Distributed training: two DDP processes through Spark's TorchDistributor on ``local[2]``, streaming their shards
from the Parquet (``tests/test_cluster.py`` covers the in-memory path)."""

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from conftest import check_disjoint_rank_shards
from leukolab import tracking
from leukolab.config.experiment import load_experiment
from leukolab.data.etl.job import run_etl
from leukolab.data.etl.params import EtlParams
from leukolab.data.reading.dataset import load_datasets, load_manifest
from leukolab.data.synthetic.folder import generate_dataset
from leukolab.models.factory import build_model
from leukolab.training.distributed import fit_distributed
from leukolab.training.loop import evaluate

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workspace = tmp_path_factory.mktemp("distributed-workspace")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LEUKOLAB_WORKSPACE", str(workspace))
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workspace / 'mlflow.db'}")
        from leukolab.data.spark import spark_session

        spark = spark_session("local[2]")
        raw = generate_dataset(workspace / "raw", 8, image_size=64, seed=3)
        dataset_dir = run_etl(spark, raw, workspace / "processed", EtlParams(image_size=32, min_side=16, seed=3))
        experiment = load_experiment("simple-cnn", {"training": {"epochs": 2}, "model": {"width": 8},
                                                    "distributed": {"num_processes": 2},
                                                    "data": {"loading": "streaming"}})
        tracking.configure()
        manifest = load_manifest(dataset_dir)
        model = build_model(experiment, len(manifest["classes"]))
        with mlflow.start_run() as run:
            result = fit_distributed(model, experiment, dataset_dir, 2, workspace / "checkpoints", spark=spark)
        spark.stop()
        yield {"run_id": run.info.run_id, "result": result, "model": model, "manifest": manifest,
               "checkpoints": workspace / "checkpoints", "dataset_dir": dataset_dir, "experiment": experiment}


def test_each_rank_trains_on_its_own_shard(trained):
    check_disjoint_rank_shards(trained)


def test_rank_zero_logs_the_run_once_per_epoch(trained):
    client = MlflowClient()
    history = client.get_metric_history(trained["run_id"], "val_macro_f1")
    assert [m.step for m in history] == [row["epoch"] for row in trained["result"].history] == [1, 2]
    logged = {a.path for a in client.list_artifacts(trained["run_id"], "distributed")}
    assert logged == {"distributed/rank-0.json", "distributed/rank-1.json"}
    assert client.get_run(trained["run_id"]).data.params["distributed.backend"] == "gloo"


def test_best_weights_come_back_to_the_driver(trained):
    manifest, result = trained["manifest"], trained["result"]
    val = load_datasets(trained["dataset_dir"], ("val",), "classification")["val"]
    metrics = evaluate(trained["model"], val, manifest["train_mean"], manifest["train_std"], manifest["classes"], "classification")
    assert metrics["macro_f1"] == pytest.approx(result.best_score)
