"""Faults injected into a real smoke run through the real CLI: SIGKILL of the runner during the ETL, of the stage's
kernel during training, of the runner during the evaluation and of the kernel during the publish, each followed by
``leukolab run --resume``; a workspace on a small filesystem that fills up during training, resumed once space is
freed; the tracking server stopped and started again while a training waits for it, then stopped during the
evaluation until the run fails naming it, and resumed once it is back. Each run completes with the champion and
metrics of the uninterrupted ``smoke_run`` (same profile, same seed), and nothing half-written is used or registered."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import fill

pytestmark = [pytest.mark.integration, pytest.mark.long]

RUN_ID = "faulty"
KILLS = [  # (task, what is killed, seconds after its kernel (for the ETL: its Spark JVM) is up)
    ("etl", "runner", 2),
    ("classify-simple-cnn", "kernel", 10),
    ("evaluate", "runner", 8),
    ("publish", "kernel", 8),
]
UNSTABLE_METRICS = ("latency_ms_per_image",)


def start_runner(workspace: Path, *args: str, tracking_uri: str | None = None) -> subprocess.Popen:
    """``leukolab run ARGS`` in ``workspace``, on its own SQLite store unless given a ``tracking_uri``."""
    env = {**os.environ, "LEUKOLAB_WORKSPACE": str(workspace), "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    return subprocess.Popen([sys.executable, "-m", "leukolab.cli", "run", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def lineage(workspace: Path) -> dict:
    path = workspace / "runs" / RUN_ID / "lineage.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # not written yet, or being replaced
        return {}


def descendants(process: subprocess.Popen) -> list[psutil.Process]:
    try:
        return psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def running(record: dict) -> bool:
    """Whether a task's lineage record is that of a task started and not finished (the runner shows it running)."""
    return bool(record.get("started")) and not record.get("finished")


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def when_running(workspace: Path, runner: subprocess.Popen, task: str, delay: float, family: dict,
                 timeout: float = 600) -> psutil.Process:
    """Wait until ``task``'s kernel (for the ETL, also its Spark JVM) has been up ``delay`` s and return the kernel;
    ``family`` collects the runner's processes by pid meanwhile."""
    deadline, up_since = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        assert runner.poll() is None, f"the run ended before {task} ran:\n{runner.stdout.read()[-3000:]}"
        family.update({p.pid: p for p in descendants(runner)})
        started = running(lineage(workspace).get("tasks", {}).get(task, {}))
        kernel = next((p for p in family.values() if alive(p) and "ipykernel" in " ".join(p.cmdline())), None)
        spark = any(alive(p) and p.name() == "java" for p in family.values())
        if started and kernel and (spark or task != "etl"):
            up_since = up_since or time.monotonic()
            if time.monotonic() - up_since >= delay:
                assert running(lineage(workspace)["tasks"][task]), f"{task} finished before the fault"
                return kernel
        time.sleep(0.1)
    pytest.fail(f"{task} was not running with its kernel within {timeout} s")


def kill_during(workspace: Path, runner: subprocess.Popen, task: str, target: str,
                delay: float) -> tuple[str, list[psutil.Process]]:
    """SIGKILL ``target`` (the runner, or the kernel running ``task``) ``delay`` s after the task's kernel (for the
    ETL, its Spark JVM) is up; the runner's output and the processes it had."""
    family = {}
    kernel = when_running(workspace, runner, task, delay, family)
    (runner if target == "runner" else kernel).send_signal(signal.SIGKILL)
    output, _ = runner.communicate(timeout=120)
    return output, list(family.values())


def assert_nothing_left(processes: list[psutil.Process]) -> None:
    """Every process of the killed run is gone (kernels and Spark follow their parent), within 30 s."""
    _, left = psutil.wait_procs(processes, timeout=30)
    left = [p for p in left if alive(p)]
    for process in left:
        process.kill()
    assert not left, f"left running: {[p.cmdline()[:3] for p in left]}"


def stable(metrics: dict) -> dict:
    return {split: {k: v for k, v in values.items() if k not in UNSTABLE_METRICS} for split, values in metrics.items()}


@pytest.mark.timeout(1500, func_only=True)  # the shared smoke_run fixture has its own bound
def test_sigkills_in_every_stage_then_resume_give_the_uninterrupted_runs_champion(smoke_run, tmp_path, monkeypatch):
    reference_workspace, _ = smoke_run
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    runner = start_runner(workspace, "--profile", "smoke", "--run-id", RUN_ID)
    try:
        for task, target, delay in KILLS:
            output, family = kill_during(workspace, runner, task, target, delay)
            assert_nothing_left(family)
            record = lineage(workspace)["tasks"][task]
            assert not (workspace / "runs" / RUN_ID / f"{task}.json").exists(), f"{task} left a result"
            if target == "runner":  # killed with no time to write: the task is left started, never finished
                assert runner.returncode == -signal.SIGKILL and running(record)
            else:  # the runner saw its kernel die and failed the task
                assert runner.returncode != 0 and record["status"] in ("failed", "killed"), output[-3000:]
                assert "PIPELINE FAILED" in output and "kernel died" in record["error"], output[-3000:]
            if task == "etl":
                assert not list((workspace / "data" / "processed").glob("*/*/manifest.json")), "a dataset after a kill"
            runner = start_runner(workspace, "--resume", RUN_ID)
        output, _ = runner.communicate(timeout=900)
        assert runner.returncode == 0, output[-3000:]
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
            runner.communicate(timeout=60)

    final = lineage(workspace)
    assert final["status"] == "finished" and len(final["resumed"]) == len(KILLS)
    assert_resumed_as_uninterrupted(workspace, reference_workspace, monkeypatch)


def read_output(folder: Path, task: str) -> dict:
    return json.loads((folder / f"{task}.json").read_text())


def assert_resumed_as_uninterrupted(workspace: Path, reference_workspace: Path, monkeypatch,
                                    tracking_uri: str | None = None) -> None:
    """Run ``RUN_ID`` of ``workspace`` has the dataset, champion and metrics of the uninterrupted ``smoke-1``; every
    registered version in its store (``tracking_uri``, else the workspace's) has its model files, no stage run is
    left open, and the champion is this run's final one."""
    run_dir, reference_dir = workspace / "runs" / RUN_ID, reference_workspace / "runs" / "smoke-1"
    # The same data, the same champion with the same metrics, as the uninterrupted run.
    assert read_output(run_dir, "etl")["fingerprint"] == read_output(reference_dir, "etl")["fingerprint"]
    dataset = Path(read_output(run_dir, "etl")["dataset_dir"])
    assert (dataset / "manifest.json").is_file() and not list(dataset.parent.glob(".staging-*/manifest.json"))
    champion, reference = read_output(run_dir, "evaluate")["champion"], read_output(reference_dir, "evaluate")["champion"]
    assert champion["experiment"] == reference["experiment"]
    assert stable(champion["metrics_by_split"]) == stable(reference["metrics_by_split"])
    # What is registered is whole: every version has its model files, and the champion is this run's final one.
    monkeypatch.setenv("LEUKOLAB_WORKSPACE", str(workspace))
    if tracking_uri:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    else:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from mlflow.tracking import MlflowClient

    from leukolab.tracking import configure

    configure()
    client = MlflowClient()
    parent = lineage(workspace)["mlflow_parent_run_id"]
    stage_runs = client.search_runs([client.get_run(parent).info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")
    assert "RUNNING" not in {run.info.status for run in stage_runs}, "a stage run left open"
    published = read_output(run_dir, "publish")
    assert published["source_run_id"] == champion["run_id"]
    assert client.get_run(champion["run_id"]).info.status == "FINISHED"
    import mlflow

    for version in client.search_model_versions("name = 'leukolab'"):
        files = {item.path for item in mlflow.artifacts.list_artifacts(artifact_uri=f"models:/leukolab/{version.version}")}
        assert {"MLmodel", "artifacts"} <= files, (version.version, files)
    chosen = client.get_model_version_by_alias("leukolab", "champion")
    assert chosen.run_id == champion["run_id"] and str(chosen.version) == str(published["version"])


FILLED_TASK = "segment-unet-mobilenet"
"""The task during which the disk fills: its checkpoint (tens of MB) and model are the run's largest writes."""
LEFT_FREE = 8 * 1024**2


@pytest.mark.timeout(2400, func_only=True)  # the shared smoke_run fixture has its own bound
def test_a_full_disk_fails_the_stage_naming_it_and_resume_once_space_is_freed_gives_the_uninterrupted_runs_champion(
        smoke_run, tmpfs, monkeypatch):
    reference_workspace, _ = smoke_run
    small_disk = tmpfs("512m")
    workspace = small_disk / "workspace"
    workspace.mkdir()
    runner = start_runner(workspace, "--profile", "smoke", "--run-id", RUN_ID)
    try:
        when_running(workspace, runner, FILLED_TASK, 0, {})
        filler = fill(small_disk, LEFT_FREE)
        output, _ = runner.communicate(timeout=900)
        # A clear failure, naming the full filesystem, in the runner's message and the lineage ...
        assert runner.returncode == 1 and "PIPELINE FAILED" in output, output[-3000:]
        record = lineage(workspace)["tasks"][FILLED_TASK]
        assert record["status"] == "failed" and f"the filesystem of {workspace} is full" in record["error"], record
        assert f"the filesystem of {workspace} is full" in output, output[-3000:]
        # ... and the path that could not be written in the failing cell of the executed notebook.
        cells = json.loads(Path(record["outputs"]["notebook"]).read_text())["cells"]
        errors = [out for cell in cells for out in cell.get("outputs", []) if out["output_type"] == "error"]
        assert errors and "No space left on device" in errors[0]["evalue"] and str(workspace) in errors[0]["evalue"], errors
        # Nothing half-written is left to be used: no partial checkpoint, no result, no registered version.
        assert not [p for p in (workspace / "data" / "checkpoints").rglob("*") if ".partial-" in p.name]
        assert not (workspace / "runs" / RUN_ID / f"{FILLED_TASK}.json").exists()
        assert not list((workspace / "data" / "processed").glob("*/.staging-*"))
        assert_nothing_registered(workspace, monkeypatch)
        filler.unlink()
        runner = start_runner(workspace, "--resume", RUN_ID)
        output, _ = runner.communicate(timeout=1500)
        assert runner.returncode == 0, output[-3000:]
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
            runner.communicate(timeout=60)
    assert lineage(workspace)["status"] == "finished"
    assert_resumed_as_uninterrupted(workspace, reference_workspace, monkeypatch)


def assert_nothing_registered(workspace: Path, monkeypatch) -> None:
    monkeypatch.setenv("LEUKOLAB_WORKSPACE", str(workspace))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from mlflow.tracking import MlflowClient

    from leukolab.tracking import configure

    configure()
    assert not MlflowClient().search_model_versions("name = 'leukolab'")


def cell_waiting(notebook: Path, source: str) -> bool:
    """Whether the executed notebook's cell holding ``source`` is running (papermill marks each cell as it goes)."""
    try:
        cells = json.loads(notebook.read_text())["cells"]
    except (OSError, ValueError):  # not written yet, or being written
        return False
    return any(source in "".join(cell["source"]) and cell["metadata"].get("papermill", {}).get("status") == "running"
               for cell in cells)


@pytest.mark.timeout(3000, func_only=True)  # the shared smoke_run fixture has its own bound
def test_a_tracking_server_back_in_time_is_waited_for_one_away_is_named_and_resume_gives_the_uninterrupted_champion(
        smoke_run, tmp_path, monkeypatch):
    from leukolab.tracking_server import start_tracking_server

    reference_workspace, _ = smoke_run
    workspace, root = tmp_path / "workspace", tmp_path / "server"
    workspace.mkdir()
    server = start_tracking_server(root, timeout=600)
    port = int(server.url.rsplit(":", 1)[1])
    runner = start_runner(workspace, "--profile", "smoke", "--run-id", RUN_ID, tracking_uri=server.url)
    try:
        # Stopped as a training starts, started again (same store, same port) while its kernel waits to open its run:
        # MLflow's bounded retries (leukolab.tracking.HTTP_RETRIES) carry the stage through.
        task = "classify-simple-cnn"
        deadline = time.monotonic() + 1200
        while not running(lineage(workspace).get("tasks", {}).get(task, {})):
            assert runner.poll() is None and time.monotonic() < deadline, f"{task} did not start"
            time.sleep(0.1)
        server.stop()
        notebook, waited = Path(lineage(workspace)["tasks"][task]["outputs"]["notebook"]), None
        while waited is None or time.monotonic() - waited < 3:
            assert runner.poll() is None and time.monotonic() < deadline, f"{task} did not wait for the server"
            waited = (waited or time.monotonic()) if cell_waiting(notebook, "open_stage_run") else None
            time.sleep(0.2)
        server = start_tracking_server(root, port=port, timeout=600)
        # Stopped during the evaluation and left away: the stage fails and the run stops, naming the server.
        when_running(workspace, runner, "evaluate", 5, {}, timeout=1200)
        server.stop()
        output, _ = runner.communicate(timeout=900)
        assert runner.returncode == 1 and "PIPELINE FAILED" in output, output[-3000:]
        assert f"the MLflow tracking server {server.url} does not answer" in output, output[-3000:]
        tasks = lineage(workspace)["tasks"]
        assert tasks[task]["status"] == "done" and tasks["evaluate"]["status"] == "failed", tasks
        assert not (workspace / "runs" / RUN_ID / "evaluate.json").exists()
        server = start_tracking_server(root, port=port, timeout=600)
        runner = start_runner(workspace, "--resume", RUN_ID, tracking_uri=server.url)
        output, _ = runner.communicate(timeout=1500)
        assert runner.returncode == 0, output[-3000:]
        assert lineage(workspace)["status"] == "finished" and len(lineage(workspace)["resumed"]) == 1
        assert_resumed_as_uninterrupted(workspace, reference_workspace, monkeypatch, tracking_uri=server.url)
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
            runner.communicate(timeout=60)
        server.stop()
