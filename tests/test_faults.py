"""Faults injected into a real smoke run through the real CLI: SIGKILL of the runner during the ETL, of the stage's
kernel during training, of the runner during the evaluation and of the kernel during the publish, each followed by
``leukolab run --resume``. The run completes with the champion and metrics of the uninterrupted ``smoke_run`` (same
profile, same seed), and nothing half-written is used or registered."""

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

pytestmark = [pytest.mark.integration, pytest.mark.long]

RUN_ID = "faulty"
KILLS = [  # (task, what is killed, seconds after its kernel (for the ETL: its Spark JVM) is up)
    ("etl", "runner", 2),
    ("classify-simple-cnn", "kernel", 10),
    ("evaluate", "runner", 8),
    ("publish", "kernel", 8),
]
UNSTABLE_METRICS = ("latency_ms_per_image",)


def start_runner(workspace: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "LEUKOLAB_WORKSPACE": str(workspace), "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
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


def kill_during(workspace: Path, runner: subprocess.Popen, task: str, target: str, delay: float,
                timeout: float = 600) -> tuple[str, list[psutil.Process]]:
    """SIGKILL ``target`` (the runner, or the kernel running ``task``) ``delay`` s after the task's kernel (for the
    ETL, its Spark JVM) is up; the runner's output and the processes it had."""
    deadline, up_since, family = time.monotonic() + timeout, None, {}
    while time.monotonic() < deadline:
        assert runner.poll() is None, f"the run ended before {task} was killed:\n{runner.stdout.read()[-3000:]}"
        family.update({p.pid: p for p in descendants(runner)})
        started = running(lineage(workspace).get("tasks", {}).get(task, {}))
        kernel = next((p for p in family.values() if alive(p) and "ipykernel" in " ".join(p.cmdline())), None)
        spark = any(alive(p) and p.name() == "java" for p in family.values())
        if started and kernel and (spark or task != "etl"):
            up_since = up_since or time.monotonic()
            if time.monotonic() - up_since >= delay:
                assert running(lineage(workspace)["tasks"][task]), f"{task} finished before the kill"
                (runner if target == "runner" else kernel).send_signal(signal.SIGKILL)
                break
        time.sleep(0.1)
    else:
        pytest.fail(f"{task} was not running with its kernel within {timeout} s")
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
    run_dir, reference_dir = workspace / "runs" / RUN_ID, reference_workspace / "runs" / "smoke-1"
    read = lambda folder, name: json.loads((folder / f"{name}.json").read_text())  # noqa: E731
    # The same data, the same champion with the same metrics, as the uninterrupted run.
    assert read(run_dir, "etl")["fingerprint"] == read(reference_dir, "etl")["fingerprint"]
    dataset = Path(read(run_dir, "etl")["dataset_dir"])
    assert (dataset / "manifest.json").is_file() and not list(dataset.parent.glob(".staging-*/manifest.json"))
    champion, reference = read(run_dir, "evaluate")["champion"], read(reference_dir, "evaluate")["champion"]
    assert champion["experiment"] == reference["experiment"]
    assert stable(champion["metrics_by_split"]) == stable(reference["metrics_by_split"])
    # What is registered is whole: every version has its model files, and the champion is this run's final one.
    monkeypatch.setenv("LEUKOLAB_WORKSPACE", str(workspace))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from mlflow.tracking import MlflowClient

    from leukolab.tracking import configure

    configure()
    client = MlflowClient()
    published = read(run_dir, "publish")
    assert published["source_run_id"] == champion["run_id"]
    assert client.get_run(champion["run_id"]).info.status == "FINISHED"
    import mlflow

    for version in client.search_model_versions("name = 'leukolab'"):
        files = {item.path for item in mlflow.artifacts.list_artifacts(artifact_uri=f"models:/leukolab/{version.version}")}
        assert {"MLmodel", "artifacts"} <= files, (version.version, files)
    chosen = client.get_model_version_by_alias("leukolab", "champion")
    assert chosen.run_id == champion["run_id"] and str(chosen.version) == str(published["version"])
