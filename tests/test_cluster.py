"""A real Spark standalone cluster on 127.0.0.1 (`leukolab cluster`): the ETL writes on it exactly what ``local[2]``
writes, and data-parallel training runs on it as barrier tasks, its master set the way the CLI sets it.

One cluster (a master, one worker of 2 cores) serves the module; it is stopped, with every process it started, also
when a test fails, and the module checks that nothing of it is left.
"""

import json
import os
import shutil
import time

import mlflow
import pandas as pd
import psutil
import pytest
from mlflow.tracking import MlflowClient

from conftest import check_disjoint_rank_shards
from leukolab import cli, tracking
from leukolab.cluster import ClusterError, master_status, read_state, standalone_cluster, start_cluster
from leukolab.config.experiment import SHORTCUTS, stage_experiment
from leukolab.data.etl.job import run_etl
from leukolab.data.etl.params import EtlParams
from leukolab.data.reading.dataset import load_manifest, load_split
from leukolab.data.spark import spark_session
from leukolab.data.synthetic.folder import generate_dataset
from leukolab.models.factory import build_model
from leukolab.pipeline import plan
from leukolab.training.distributed import fit_distributed

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
PARAMS = EtlParams(image_size=32, min_side=16, seed=5)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster-workspace")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LEUKOLAB_WORKSPACE", str(root))
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        yield root


@pytest.fixture(scope="module")
def cluster(workspace):
    """The running cluster's state (``master_url``, ``web_ui``, pids); after the module, no process of it may be left."""
    directory = workspace / "cluster"
    state = None
    try:
        with standalone_cluster(workers=1, cores=2, memory="2g", directory=directory, timeout=180):
            state = read_state(directory)
            yield state
    finally:
        groups = {p["pid"] for p in state["processes"]} if state else set()
        left = [p.info for p in psutil.process_iter(["pid", "name", "cmdline"])
                if _group(p.pid) in groups or _daemon_of(p.info["cmdline"] or [], str(directory))]
        assert not left, f"cluster processes left running: {left}"


def _group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _daemon_of(cmdline: list[str], directory: str) -> bool:
    text = " ".join(cmdline)
    return "org.apache.spark.deploy." in text and directory in text


@pytest.mark.parametrize(("options", "error"), [({"workers": 0}, "at least one worker"),
                                                 ({"memory": "lots"}, "memory is a size")])
def test_a_bad_cluster_size_is_refused_before_anything_starts(tmp_path, options, error):
    with pytest.raises(ClusterError, match=error):
        start_cluster(directory=tmp_path, **options)
    assert not (tmp_path / "logs").exists()


def test_without_a_cluster_status_says_so_and_down_does_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LEUKOLAB_WORKSPACE", str(tmp_path))
    assert cli.main(["cluster", "status"]) == 1
    assert cli.main(["cluster", "down"]) == 0
    assert capsys.readouterr().out.splitlines() == ["no cluster is running (`leukolab cluster up` starts one)",
                                                    "no cluster is running"]


@pytest.fixture(scope="module")
def etl_runs(workspace, cluster):
    """The same raw smears (200, with a planted byte copy) through the ETL on ``local[2]`` and on the cluster."""
    raw = generate_dataset(workspace / "raw", 50, image_size=64, seed=5)
    original = next((raw / "Original" / "Pro").iterdir())
    shutil.copy(original, original.with_name("Pro_copy.jpg"))
    runs = {}
    for name, master in (("local", "local[2]"), ("cluster", cluster["master_url"])):
        started = time.perf_counter()
        spark = spark_session(master)
        try:
            session_ready = time.perf_counter()
            dataset_dir = run_etl(spark, raw, workspace / f"processed-{name}", PARAMS)
            finished = time.perf_counter()
        finally:
            spark.stop()
        runs[name] = {"dataset_dir": dataset_dir, "session_s": session_ready - started, "etl_s": finished - session_ready}
        print(f"ETL on {master}: session {session_ready - started:.1f} s, run_etl {finished - session_ready:.1f} s")
    return runs


@pytest.mark.long
def test_the_cluster_answers_the_cli(workspace, cluster, capsys):
    assert cli.main(["cluster", "status"]) == 0
    printed = capsys.readouterr().out
    assert f"master {cluster['master_url']} (ALIVE)" in printed and "0/2 cores" in printed and "1 alive workers" in printed
    assert cli.main(["cluster", "up"]) == 1
    assert "already running" in capsys.readouterr().err


@pytest.mark.long
def test_the_etl_on_the_cluster_writes_what_local_writes(etl_runs, cluster):
    local, remote = (load_manifest(etl_runs[name]["dataset_dir"]) for name in ("local", "cluster"))
    assert remote["files"] == local["files"] and local["files"]["in"] == 401
    assert remote["counts"] == local["counts"]
    assert remote["duplicate_groups"] == local["duplicate_groups"] and any(
        "Original/Pro/Pro_copy.jpg" in json.dumps(group) for group in local["duplicate_groups"])
    assert remote["fingerprint"] == local["fingerprint"]
    assert remote == local
    pd.testing.assert_frame_equal(load_split(etl_runs["cluster"]["dataset_dir"]), load_split(etl_runs["local"]["dataset_dir"]))
    assert "leukolab-etl" in {app["name"] for app in master_status(cluster)["completedapps"]}


@pytest.fixture(scope="module")
def trained(workspace, cluster, etl_runs):
    """Two-process training on the cluster, its experiment built from the overrides `leukolab run --param` gives."""
    overrides = cli._overrides([f"classify.spark_master={cluster['master_url']}", "classify.num_processes=2",
                                "classify.epochs=2", "classify.model.width=8",
                                "classify.data.loading=memory"])  # the smoke profile streams; test_distributed covers that
    task = plan("smoke", overrides)["classify-simple-cnn"].parameters
    experiment = stage_experiment(task["experiment"], task.get("overrides"),
                                  **{key: task.get(key) for key in SHORTCUTS if key in task})
    dataset_dir = etl_runs["cluster"]["dataset_dir"]
    tracking.configure()
    model = build_model(experiment, len(load_manifest(dataset_dir)["classes"]))
    started = time.perf_counter()
    try:
        with mlflow.start_run() as run:
            result = fit_distributed(model, experiment, dataset_dir, experiment.distributed.num_processes,
                                     workspace / "checkpoints")
    finally:
        from pyspark.sql import SparkSession

        if SparkSession.getActiveSession() is not None:
            SparkSession.getActiveSession().stop()
    print(f"2-process training on {experiment.distributed.master}: {time.perf_counter() - started:.1f} s")
    return {"experiment": experiment, "run_id": run.info.run_id, "result": result, "dataset_dir": dataset_dir,
            "checkpoints": workspace / "checkpoints"}


@pytest.mark.long
def test_the_master_comes_from_the_command_line(trained, cluster):
    assert trained["experiment"].distributed.master == cluster["master_url"]
    assert trained["experiment"].distributed.num_processes == 2
    assert "leukolab-train" in {app["name"] for app in master_status(cluster)["completedapps"]}


@pytest.mark.long
def test_each_rank_trains_its_own_shard_on_the_cluster(trained):
    check_disjoint_rank_shards(trained)


@pytest.mark.long
def test_one_mlflow_run_holds_the_cluster_training(trained):
    client = MlflowClient()
    run = client.get_run(trained["run_id"])
    assert [r.info.run_id for r in client.search_runs([run.info.experiment_id])] == [trained["run_id"]]
    assert [m.step for m in client.get_metric_history(trained["run_id"], "val_macro_f1")] == [1, 2]
    assert {a.path for a in client.list_artifacts(trained["run_id"], "distributed")} == {
        "distributed/rank-0.json", "distributed/rank-1.json"}
    assert run.data.params["distributed.world_size"] == "2" and run.data.params["distributed.backend"] == "gloo"
