"""The pipeline runner on a tiny stage graph of its own: real papermill, a real kernel, real MLflow (SQLite).

The graph: ``prepare`` → ``train`` (one task per experiment) → ``report``. The notebooks are a few lines
each, so every behaviour of the runner (reuse, reruns, resume, timeouts, dead kernels, parallel tasks,
lineage) is checked in seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import psutil
import pytest
import yaml

pytestmark = pytest.mark.integration

PARAMETERS = {
    "prepare": 'run_dir = "runs/interactive"\nparent_run_id = None\nsize = 3',
    "train": 'run_dir = "runs/interactive"\nparent_run_id = None\nexperiment = "a"\nepochs = 1\nsleep_s = 0\n'
             'fail = False\ndie = False\nlog_to_mlflow = False\nimport_torch = False\nwrite_mb = 0',
    "report": 'run_dir = "runs/interactive"\nparent_run_id = None',
}
BODIES = {
    "prepare": ["from leukolab import stages",
                'stages.write_output(run_dir, "prepare", {"size": size})'],
    "train": ["import os, signal, time\nfrom leukolab import stages, tracking\nstarted = time.time()",
              'size = stages.read_output(run_dir, "prepare")["size"]\n'
              'if log_to_mlflow:  # open until the last cell, so a notebook that hangs or dies leaves it open\n'
              '    tracking.open_stage_run("train", run_name=experiment, parent_run_id=parent_run_id)\n'
              'threads = None\nif import_torch:\n    import torch\n    threads = torch.get_num_threads()',
              'stages.write_output(run_dir, f"pid-{experiment}", {"pid": os.getpid()})\n'
              'if die:\n    os.kill(os.getpid(), signal.SIGKILL)\ntime.sleep(sleep_s)\n'
              'if write_mb:  # a plain write, as a library makes it: on a full disk, half of it stays\n'
              '    with open(os.path.join(run_dir, "big.bin"), "wb") as big:\n        big.write(bytes(write_mb * 2**20))',
              'if fail:\n    tracking.open_stage_run("train", run_name=experiment, parent_run_id=parent_run_id)\n'
              '    raise ValueError("failing on purpose")',
              'stages.write_output(run_dir, f"timing-{experiment}", {"started": started, "finished": time.time()})\n'
              'if log_to_mlflow:\n    import mlflow\n    mlflow.end_run()\n'
              'stages.write_output(run_dir, f"train-{experiment}", {"score": size * epochs, "threads": threads,\n'
              '                                                     "omp": os.environ.get("OMP_NUM_THREADS")})'],
    "report": ["from leukolab import stages",
               'scores = {k: v["score"] for k, v in stages.read_outputs(run_dir, "train-").items()}\n'
               'stages.write_output(run_dir, "report", {"best": max(scores, key=scores.get), "scores": scores})'],
}


def write_notebook(folder: Path, stage: str, extra_line: str = "") -> None:
    cells = [nbformat.v4.new_code_cell(PARAMETERS[stage], metadata={"tags": ["parameters"]})]
    cells += [nbformat.v4.new_code_cell(source) for source in BODIES[stage]]
    if extra_line:
        cells.append(nbformat.v4.new_code_cell(extra_line))
    notebook = nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "leukolab", "display_name": "leukolab",
                                                                             "language": "python"}})
    nbformat.write(notebook, folder / f"{stage}.ipynb")


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A workspace, the tiny graph's notebooks, pipeline file and profile; returns a namespace of paths."""
    project = tmp_path / "project"
    project.mkdir()
    for stage in PARAMETERS:
        write_notebook(project, stage)
    pipeline = {"notebooks": ".", "stages": {
        "prepare": {"notebook": "prepare.ipynb"},
        "train": {"notebook": "train.ipynb", "after": ["prepare"], "foreach": "train"},
        "report": {"notebook": "report.ipynb", "after": ["train"]},
    }}
    (project / "pipeline.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    (project / "profile.yaml").write_text(yaml.safe_dump({"parameters": {"size": 3}, "experiments": {"train": ["a", "b"]}}))
    workspace = tmp_path / "workspace"
    monkeypatch.setenv("LEUKOLAB_WORKSPACE", str(workspace))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return project, workspace


def run(project: Path, **options) -> dict:
    from leukolab.pipeline.runner import run_pipeline

    return run_pipeline(str(project / "profile.yaml"), options.pop("overrides", {}), options.pop("run_id", None),
                        pipeline_file=options.pop("pipeline_file", project / "pipeline.yaml"), progress=False, **options)


def statuses(lineage: dict) -> dict[str, str]:
    return {name: task["status"] for name, task in lineage["tasks"].items()}


def cli(workspace: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LEUKOLAB_WORKSPACE": str(workspace)}
    return subprocess.run([sys.executable, "-m", "leukolab.cli", *args], env=env, capture_output=True, text=True, timeout=300)


def test_a_second_run_with_nothing_changed_reuses_every_task(tiny):
    project, workspace = tiny
    first = run(project, run_id="first")
    assert set(statuses(first).values()) == {"done"}
    second = run(project, run_id="second")
    assert set(statuses(second).values()) == {"cached"}
    for name, task in second["tasks"].items():
        assert task["key"] == first["tasks"][name]["key"] and task["cached_from"] == "first"
        assert task["outputs"]["notebook"] == first["tasks"][name]["outputs"]["notebook"]
        # downstream notebooks read upstream outputs from their own run's folder: the cached outputs are there
        assert json.loads((workspace / "runs" / "second" / f"{name}.json").read_text()) == task["result"]
    assert not list((workspace / "runs" / "second").glob("*.ipynb"))
    third = run(project, run_id="third")
    assert {t["cached_from"] for t in third["tasks"].values()} == {"first"}


def test_a_changed_parameter_reruns_that_task_and_what_follows_only(tiny):
    project, _ = tiny
    run(project, run_id="first")
    changed = run(project, run_id="second", overrides={"train.epochs": 2})
    # both experiments take `epochs`; `size` (prepare) is unchanged
    assert statuses(changed) == {"prepare": "cached", "train-a": "done", "train-b": "done", "report": "done"}
    assert changed["tasks"]["train-a"]["parameters"]["epochs"] == 2
    assert changed["tasks"]["report"]["result"]["scores"] == {"train-a": 6, "train-b": 6}


def test_a_changed_notebook_reruns_its_tasks_and_what_follows_only(tiny):
    project, _ = tiny
    run(project, run_id="first")
    write_notebook(project, "report", extra_line="print('a new cell')")
    assert statuses(run(project, run_id="second")) == {"prepare": "cached", "train-a": "cached", "train-b": "cached",
                                                       "report": "done"}
    write_notebook(project, "prepare", extra_line="print('another new cell')")
    assert set(statuses(run(project, run_id="third")).values()) == {"done"}


def test_force_from_until_only_choose_what_runs(tiny):
    project, _ = tiny
    run(project, run_id="first")
    assert statuses(run(project, run_id="forced", force=["train-b"])) == {
        "prepare": "cached", "train-a": "cached", "train-b": "done", "report": "cached"}  # same score: same output
    assert statuses(run(project, run_id="from", from_stage="train")) == {
        "prepare": "cached", "train-a": "done", "train-b": "done", "report": "done"}
    assert statuses(run(project, run_id="until", until="train-a", force=["prepare"])) == {"prepare": "done", "train-a": "cached"}
    assert statuses(run(project, run_id="only", only="report", force=["report"])) == {
        "prepare": "cached", "train-a": "cached", "train-b": "cached", "report": "done"}


def test_only_needs_the_upstream_results_from_an_earlier_run(tiny):
    from leukolab.pipeline.runner import StageFailed

    project, _ = tiny
    with pytest.raises(StageFailed, match="'prepare' has no up-to-date result to reuse"):
        run(project, run_id="alone", only="report")


@pytest.mark.long
def test_resume_continues_a_failed_run_from_the_failed_task(tiny):
    project, workspace = tiny
    failing = cli(workspace, "run", "--profile", str(project / "profile.yaml"), "--pipeline", str(project / "pipeline.yaml"),
                  "--run-id", "broken", "--param", "train.fail=true")
    assert failing.returncode == 1
    notebook = workspace / "runs" / "broken" / "01_train-a.ipynb"
    message = (f"stage 'train-a' failed in cell 6, line 3: raise ValueError(\"failing on purpose\") "
               f"(ValueError: failing on purpose); executed notebook: {notebook}")
    assert message in failing.stderr
    from mlflow.tracking import MlflowClient

    from leukolab.pipeline.lineage import read_lineage
    from leukolab.tracking import configure

    broken = read_lineage("broken")
    assert broken["status"] == "failed" and statuses(broken)["prepare"] == "done" and statuses(broken)["report"] == "queued"
    configure()
    child = MlflowClient().get_run(broken["tasks"]["train-a"]["mlflow_run_id"])
    assert child.info.status == "FAILED" and child.data.tags["leukolab.error"] == message
    # fix the cause (the notebook now ignores `fail`), then resume: same run id, same MLflow parent run
    write_notebook(project, "train")
    nb = nbformat.read(project / "train.ipynb", 4)
    nb.cells[4].source = "pass"
    nbformat.write(nb, project / "train.ipynb")
    resumed = cli(workspace, "run", "--resume", "broken")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    lineage = read_lineage("broken")
    assert statuses(lineage) == {"prepare": "done", "train-a": "done", "train-b": "done", "report": "done"}
    assert lineage["tasks"]["prepare"]["started"] == broken["tasks"]["prepare"]["started"]  # not run again
    assert lineage["mlflow_parent_run_id"] == broken["mlflow_parent_run_id"] and len(lineage["resumed"]) == 1
    parent = MlflowClient().get_run(lineage["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["leukolab.stage.report"].startswith("done ")


@pytest.mark.long
def test_ctrl_c_stops_the_running_notebook_and_resume_finishes_the_run(tiny):
    project, workspace = tiny
    command = [sys.executable, "-m", "leukolab.cli", "run", "--profile", str(project / "profile.yaml"), "--pipeline",
               str(project / "pipeline.yaml"), "--run-id", "stopped", "--param", "train.sleep_s=600"]
    cli_process = subprocess.Popen(command, env={**os.environ, "LEUKOLAB_WORKSPACE": str(workspace)},
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid_file = workspace / "runs" / "stopped" / "pid-a.json"
    deadline = time.monotonic() + 120
    while not pid_file.is_file() and time.monotonic() < deadline and cli_process.poll() is None:
        time.sleep(0.5)
    assert pid_file.is_file(), "train-a never started"
    kernel = json.loads(pid_file.read_text())["pid"]
    cli_process.send_signal(signal.SIGINT)
    _, stderr = cli_process.communicate(timeout=60)
    assert cli_process.returncode == 130 and "--resume" in stderr
    assert not psutil.pid_exists(kernel) or psutil.Process(kernel).status() == psutil.STATUS_ZOMBIE
    from leukolab.pipeline.lineage import read_lineage

    stopped = read_lineage("stopped")
    assert stopped["status"] == "killed" and statuses(stopped)["train-a"] == "killed"
    assert "interrupted" in stopped["tasks"]["train-a"]["error"]
    # the hang is fixed (sleep_s is now ignored): resume runs train-a, train-b and report, and keeps prepare
    nb = nbformat.read(project / "train.ipynb", 4)
    nb.cells[3].source = nb.cells[3].source.replace("time.sleep(sleep_s)", "pass")
    nbformat.write(nb, project / "train.ipynb")
    resumed = cli(workspace, "run", "--resume", "stopped")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    lineage = read_lineage("stopped")
    assert set(statuses(lineage).values()) == {"done"} and lineage["tasks"]["prepare"]["started"] == stopped["tasks"]["prepare"]["started"]


@pytest.mark.long
def test_a_stage_that_hangs_is_stopped_at_its_timeout_and_its_mlflow_run_failed(tiny):
    from mlflow.tracking import MlflowClient

    from leukolab.pipeline.runner import StageFailed
    from leukolab.tracking import configure

    project, workspace = tiny
    pipeline = yaml.safe_load((project / "pipeline.yaml").read_text())
    pipeline["stages"]["train"]["timeout"] = 20  # the kernel's start and `import mlflow` take a few seconds
    (project / "slow.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    with pytest.raises(StageFailed, match=r"stage 'train-a' timed out after 20 s; executed notebook: .*01_train-a.ipynb"):
        run(project, run_id="slow", pipeline_file=project / "slow.yaml", overrides={"train.sleep_s": 600,
                                                                                   "train.log_to_mlflow": True}, jobs=2)
    from leukolab.pipeline.lineage import read_lineage

    lineage = read_lineage("slow")
    assert statuses(lineage) == {"prepare": "done", "train-a": "timed_out", "train-b": "timed_out", "report": "queued"}
    for name in ("a", "b"):
        kernel = json.loads((workspace / "runs" / "slow" / f"pid-{name}.json").read_text())["pid"]
        assert not psutil.pid_exists(kernel) or psutil.Process(kernel).status() == psutil.STATUS_ZOMBIE
    configure()
    child = MlflowClient().get_run(lineage["tasks"]["train-a"]["mlflow_run_id"])
    assert child.info.status == "FAILED" and "timed out after 20 s" in child.data.tags["leukolab.error"]


@pytest.mark.long
def test_a_kernel_that_dies_is_reported_as_such(tiny):
    from leukolab.pipeline.runner import StageFailed

    project, _ = tiny
    with pytest.raises(StageFailed, match=r"stage 'train-a' failed: the kernel died"):
        run(project, run_id="dead", overrides={"train.die": True})
    from leukolab.pipeline.lineage import read_lineage

    assert statuses(read_lineage("dead"))["train-a"] == "killed"


def test_experiments_run_side_by_side_with_the_cores_shared_out(tiny):
    from leukolab.pipeline.runner import threads_per_job

    project, workspace = tiny
    lineage = run(project, run_id="parallel", jobs=2, overrides={"train.sleep_s": 4, "train.import_torch": True})
    a, b = (json.loads((workspace / "runs" / "parallel" / f"timing-{x}.json").read_text()) for x in "ab")
    assert a["started"] < b["finished"] and b["started"] < a["finished"]  # the two notebooks overlapped
    a, b = lineage["tasks"]["train-a"]["result"], lineage["tasks"]["train-b"]["result"]
    assert a["threads"] == b["threads"] == threads_per_job(2) and a["omp"] == str(threads_per_job(2))
    assert lineage["threads_per_job"] == threads_per_job(2)


def test_lineage_records_every_task(tiny):
    project, workspace = tiny
    lineage = run(project, run_id="traced", overrides={"train.log_to_mlflow": True})
    on_disk = json.loads((workspace / "runs" / "traced" / "lineage.json").read_text())
    assert on_disk == json.loads(json.dumps(lineage, default=str))
    assert on_disk["status"] == "finished" and on_disk["profile"].endswith("profile.yaml")
    for name, task in on_disk["tasks"].items():
        assert len(task["key"]) == 64 and task["status"] == "done" and task["started"] <= task["finished"]
        assert Path(task["outputs"]["json"]).is_file() and Path(task["outputs"]["notebook"]).is_file()
        assert task["git_commit"] == on_disk["git_commit"] and task["git_dirty"] in ("true", "false")
    assert on_disk["tasks"]["train-b"]["parameters"] == {"experiment": "b", "log_to_mlflow": True}
    assert on_disk["tasks"]["train-b"]["after"] == ["prepare"]
    assert on_disk["tasks"]["train-b"]["mlflow_run_id"]
    listing = cli(workspace, "runs", "list")
    assert listing.returncode == 0 and "traced" in listing.stdout and "4 done" in listing.stdout
    shown = cli(workspace, "runs", "show", "traced")
    assert shown.returncode == 0 and on_disk["tasks"]["train-b"]["key"][:12] in shown.stdout
    assert cli(workspace, "runs", "show", "nope").returncode == 2


@pytest.mark.long
def test_a_full_disk_is_named_and_resume_after_freeing_it_finishes_the_run(tiny, tmpfs, monkeypatch):
    """The worst case: a stage's plain write fills the disk to the last byte, so neither its notebook, nor its
    result, nor the lineage, nor the SQLite store can be written; the run still stops with a message naming the full
    filesystem, and resumes once the half-written file is gone."""
    project, _ = tiny
    workspace = tmpfs("24m") / "workspace"
    monkeypatch.setenv("LEUKOLAB_WORKSPACE", str(workspace))
    failing = cli(workspace, "run", "--profile", str(project / "profile.yaml"), "--pipeline", str(project / "pipeline.yaml"),
                  "--run-id", "full", "--param", "train.write_mb=64")
    said = failing.stderr.split("PIPELINE FAILED: ")[-1]
    assert failing.returncode == 1 and said.startswith("stage 'train-a' failed"), failing.stderr[-3000:]
    assert f"the filesystem of {workspace} is full" in said, failing.stderr[-3000:]
    (workspace / "runs" / "full" / "big.bin").unlink()
    nb = nbformat.read(project / "train.ipynb", 4)
    nb.cells[3].source = nb.cells[3].source.replace("if write_mb:", "if False:")
    nbformat.write(nb, project / "train.ipynb")
    resumed = cli(workspace, "run", "--resume", "full")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    from leukolab.pipeline.lineage import read_lineage

    assert set(statuses(read_lineage("full")).values()) == {"done"}


@pytest.mark.long
def test_resume_marks_the_mlflow_runs_a_killed_runner_left_open(tiny):
    from mlflow.tracking import MlflowClient

    from leukolab.pipeline.lineage import read_lineage
    from leukolab.tracking import configure

    project, workspace = tiny
    command = [sys.executable, "-m", "leukolab.cli", "run", "--profile", str(project / "profile.yaml"), "--pipeline",
               str(project / "pipeline.yaml"), "--run-id", "orphaned", "--param", "train.sleep_s=600",
               "--param", "train.log_to_mlflow=true"]
    runner = subprocess.Popen(command, env={**os.environ, "LEUKOLAB_WORKSPACE": str(workspace)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pid_file = workspace / "runs" / "orphaned" / "pid-a.json"
    deadline = time.monotonic() + 120
    while not pid_file.is_file() and time.monotonic() < deadline and runner.poll() is None:
        time.sleep(0.5)
    assert pid_file.is_file(), "train-a never started"
    runner.kill()
    runner.wait()
    configure()
    client = MlflowClient()
    parent = read_lineage("orphaned")["mlflow_parent_run_id"]
    experiment = client.get_run(parent).info.experiment_id
    left = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent}'")
    assert [run.info.status for run in left] == ["RUNNING"]
    nb = nbformat.read(project / "train.ipynb", 4)
    nb.cells[3].source = nb.cells[3].source.replace("time.sleep(sleep_s)", "pass")
    nbformat.write(nb, project / "train.ipynb")
    resumed = cli(workspace, "run", "--resume", "orphaned")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    orphan = client.get_run(left[0].info.run_id)
    assert orphan.info.status == "FAILED" and orphan.data.tags["leukolab.error"] == "left unfinished: its runner stopped"
