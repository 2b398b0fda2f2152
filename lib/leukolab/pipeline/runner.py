"""Running a plan: up-to-date tasks reused, the rest run under papermill, independent ones side by side.

Each pipeline run gets a folder ``runs/<run-id>/`` holding every executed
notebook, every task's output JSON and ``lineage.json``, and an MLflow parent run
under which each stage notebook opens its child run. A task whose key matches a
finished task of an earlier run is *cached*: its output JSON is copied into this
run's folder (downstream notebooks read it there) and its notebook is not run.
When a task fails, times out or is killed, no new task starts, the ones running
finish, and the run stops with a message naming each failed task, where and why.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

from mlflow.entities import RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from leukolab import __version__
from leukolab.pipeline.execute import Executor
from leukolab.pipeline.failures import outside_causes, runner_failure, server_down
from leukolab.pipeline.graph import Plan, Selection, Task, plan, select
from leukolab.pipeline.interrupts import describe, sigterm_as_interrupt
from leukolab.pipeline.keys import library_digest, task_key
from leukolab.pipeline.lineage import FINISHED, all_runs, find_cached, finished_in_store, now, read_lineage, runs_dir, seconds_between, write_lineage
from leukolab.pipeline.parameters import RUNNER_PARAMETERS, new_run_id, notebook_parameters, threads_per_job
from leukolab.pipeline.progress import Progress
from leukolab.stages.records import StageRecord, record_type
from leukolab.tracking import EXPERIMENT_NAME, configure, git_tags, log_file_to_run, tracking_uri

log = logging.getLogger(__name__)
RUN_STATUS = {"finished": "FINISHED", "failed": "FAILED", "killed": "KILLED"}


class StageFailed(RuntimeError):
    """A task failed, timed out or was killed; the message says which, where, why, and where its notebook is."""


def run_pipeline(profile: str = "default", overrides: dict | None = None, run_id: str | None = None, *,
                 pipeline_file: str | Path | None = None, force: list[str] = (), from_stage: str | None = None,
                 until: str | None = None, only: str | None = None, resume: str | None = None, jobs: int = 1,
                 progress: bool = True) -> dict:
    """Run ``profile``'s tasks (or continue run ``resume``); return the run's lineage (``runs/<run-id>/lineage.json``).

    Raises ``StageFailed`` when a task did not finish and ``KeyboardInterrupt`` after killing running notebooks (on
    Ctrl-C, and on SIGTERM as :class:`~leukolab.pipeline.interrupts.Terminated`).
    """
    previous = read_lineage(resume) if resume else None
    if previous:
        profile, overrides, pipeline_file, run_id = previous["profile"], previous["overrides"], previous["pipeline"], resume
    the_plan = plan(profile, overrides, pipeline_file)
    selection = select(the_plan, list(force), from_stage, until, only)
    run = PipelineRun(the_plan, selection, run_id or new_run_id(), previous, max(1, jobs), progress)
    return run.execute()


class PipelineRun:
    """One execution of a plan; its ``lineage`` dict is written to ``lineage.json`` after every change."""

    def __init__(self, the_plan: Plan, selection: Selection, run_id: str, previous: dict | None, jobs: int, progress: bool):
        self.plan, self.selection, self.jobs = the_plan, selection, jobs
        self.run_dir = runs_dir() / run_id
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.executor = Executor()
        self.lock = threading.Lock()
        self.interrupted: str | None = None  # what stopped the run: SIGTERM or Ctrl-C
        self.earlier_runs = all_runs()
        configure()
        self.client = MlflowClient()
        self._still_logged = finished_in_store(self.client)
        self.git = git_tags()
        self.lineage = previous or {
            "run_id": run_id, "profile": the_plan.profile, "overrides": the_plan.overrides, "pipeline": str(the_plan.pipeline_file),
            "run_dir": str(self.run_dir), "started": now(), "tracking_uri": tracking_uri(), "tasks": {},
        }
        self.lineage.update({"status": "running", "leukolab_version": __version__, "library_digest": library_digest(),
                             "jobs": jobs, "threads_per_job": threads_per_job(jobs) if jobs > 1 else None, **self.git})
        if previous:
            self.lineage.setdefault("resumed", []).append(now())
            self.client.update_run(previous["mlflow_parent_run_id"], status="RUNNING")
        else:
            experiment = self.client.get_experiment_by_name(EXPERIMENT_NAME).experiment_id
            parent = self.client.create_run(experiment, run_name=f"pipeline {the_plan.profile} {run_id}", tags={
                "leukolab.pipeline_run_id": run_id, "leukolab.profile": the_plan.profile, "leukolab.version": __version__, **self.git})
            self.lineage["mlflow_parent_run_id"] = parent.info.run_id
        self.parent_run_id = self.lineage["mlflow_parent_run_id"]
        tasks = self.lineage["tasks"]
        for name in selection.names:
            if tasks.get(name, {}).get("status") not in FINISHED:
                if tasks.get(name, {}).get("started"):  # a stopped runner, or a server away, left its MLflow runs open
                    self._fail_child_runs(name, tasks[name].get("error") or "left unfinished: its runner stopped")
                task = the_plan[name]
                tasks[name] = {"stage": task.stage, "notebook": str(task.notebook), "after": task.after, "status": "queued"}
        log.info("pipeline run %s (profile %s, %d tasks%s): %s", run_id, the_plan.profile, len(selection.names),
                 ", resumed" if previous else "", self.run_dir)
        self.progress = Progress(selection.names) if progress else None
        for name in selection.names:
            if tasks[name]["status"] in FINISHED:
                self._show(name, "done before resume" if previous else tasks[name]["status"])

    def execute(self) -> dict:
        with sigterm_as_interrupt():
            status = "failed"
            try:
                self._schedule()
                tasks = [self.lineage["tasks"][n] for n in self.selection.names]
                if any(t["status"] not in FINISHED for t in tasks):
                    raise StageFailed("\n".join(t["error"] for t in tasks if t.get("error")))
                status = "finished"
            except KeyboardInterrupt:
                status = "killed"
                raise
            except (OSError, MlflowException) as error:  # the runner's own write or MLflow call: a full disk, a server away
                raise StageFailed(runner_failure(error, self.lineage)) from error
            finally:
                if self.progress:
                    self.progress.close()
                self.lineage.update({"status": status, "finished": now()})
                self._record_end(status)
            return self.lineage

    def _record_end(self, status: str) -> None:
        """Write the lineage and close the MLflow parent run, or say why not (a full disk, a server away)."""
        try:
            self._write()
            if server_down() is None:
                self._close_parent_run(status)
        except (OSError, MlflowException) as error:
            log.warning("the end of run %s is not recorded (%s)", self.lineage["run_id"], str(error)[:300])

    def _schedule(self) -> None:
        """Start every task whose upstream tasks finished (up to ``jobs`` at once) until none is left or one failed."""
        tasks = self.lineage["tasks"]
        pending = [n for n in self.selection.names if tasks[n]["status"] not in FINISHED]
        to_run, running = [], {}
        with ThreadPoolExecutor(self.jobs, thread_name_prefix="stage") as pool:
            try:
                while True:
                    failed = any(tasks[n]["status"] in ("failed", "timed_out", "killed") for n in self.selection.names)
                    ready = next((n for n in pending if all(tasks[u]["status"] in FINISHED for u in self.plan[n].after)), None)
                    if ready and not failed:  # reuse it, or queue it to run
                        pending.remove(ready)
                        if not self._reuse(self.plan[ready]):
                            to_run.append(ready)
                        continue
                    if to_run and not failed and len(running) < self.jobs:
                        name = to_run.pop(0)
                        running[pool.submit(self._run, self.plan[name])] = name
                        continue
                    if not running:
                        return
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in finished:
                        del running[future]
                        future.result()
            except KeyboardInterrupt as stop:
                self.interrupted = describe(stop)
                self.executor.kill_all()
                raise

    def _reuse(self, task: Task) -> bool:
        """Compute the task's key and reuse an earlier run's result with that key if there is one.

        Returns whether the task is settled without running: cached, or failed because ``--only`` may not run it.
        """
        record = self.lineage["tasks"][task.name]
        parameters = self._parameters(task)
        record["parameters"] = {k: v for k, v in parameters.items() if k not in RUNNER_PARAMETERS}
        record["ignored_parameters"] = sorted(set(task.parameters) - set(parameters) - {"seed"})
        upstream = {u: (self.lineage["tasks"][u]["key"], self._output(u)) for u in task.after}
        record["key"] = task_key(task.notebook, record["parameters"], task.deps, upstream)
        if task.name in self.selection.forced:
            return False
        found = find_cached(record["key"], self.earlier_runs, self._still_logged)
        if found is None:
            if task.name in self.selection.reuse_only:
                self._finish(task.name, "failed", f"stage {task.name!r} has no up-to-date result to reuse: run it first (without --only)")
                return True
            return False
        origin_run, origin = found
        shutil.copyfile(origin["outputs"]["json"], self.run_dir / f"{task.name}.json")
        output = self._output(task.name)
        record.update({"started": now(), "finished": now(), "seconds": 0.0, "cached_from": origin.get("cached_from", origin_run),
                       "outputs": {"json": str(self.run_dir / f"{task.name}.json"), "notebook": origin["outputs"]["notebook"]},
                       "mlflow_run_id": self._record(task).mlflow_run_id, "git_commit": origin.get("git_commit"),
                       "git_dirty": origin.get("git_dirty"), "result": output})
        self._finish(task.name, "cached", f"from run {record['cached_from']}")
        return True

    def _run(self, task: Task) -> None:
        record = self.lineage["tasks"][task.name]
        notebook = self.run_dir / f"{self.plan.tasks.index(task):02d}_{task.name}.ipynb"
        record.update({"started": now(), "outputs": {"json": str(self.run_dir / f"{task.name}.json"), "notebook": str(notebook)},
                       "git_commit": self.git.get("git_commit"), "git_dirty": self.git.get("git_dirty")})
        self._show(task.name, "running")
        with self.lock:
            self._write()
        (self.run_dir / f"{task.name}.json").unlink(missing_ok=True)
        outcome = self.executor.run(task.notebook, notebook, self._parameters(task), self._environment(task), task.timeout)
        if self.interrupted:
            outcome.status, outcome.error = "killed", f"was interrupted ({self.interrupted})"
        record["finished"] = now()
        if outcome.status == "done":
            logged_to = self._record(task).mlflow_run_id
            children = [] if logged_to else self._child_runs(task.name)
            record.update({"result": self._output(task.name) or {},
                           "mlflow_run_id": logged_to or (children[0].info.run_id if children else None)})
            if record["mlflow_run_id"]:
                log_file_to_run(record["mlflow_run_id"], notebook, "notebook")
            self._finish(task.name, "done")
            return
        down = server_down()
        message = f"stage {task.name!r} {outcome.error}{outside_causes(self.run_dir, down)}; executed notebook: {notebook}"
        record["mlflow_run_id"] = None if down else self._fail_child_runs(task.name, message)  # else the resume does
        self._finish(task.name, outcome.status, message)

    def _finish(self, name: str, status: str, message: str = "") -> None:
        record = self.lineage["tasks"][name]
        record["status"] = status
        record.setdefault("finished", now())
        if status not in FINISHED:
            record["error"] = message
        with self.lock:
            self._write()
        self._show(name, status, message.split("; executed notebook")[0] if status not in FINISHED else message)

    def _parameters(self, task: Task) -> dict:
        """What papermill injects: the run's folder and MLflow run, and the task's parameters its notebook declares."""
        declared = notebook_parameters(task.notebook)
        injected = {"run_dir": str(self.run_dir), "parent_run_id": self.parent_run_id, **task.parameters}
        return {k: v for k, v in injected.items() if k in declared}

    def _environment(self, task: Task) -> dict:
        """The notebook's environment: this process's (its ``PYTHONPATH`` included), the task's name, its share of the cores."""
        env = {**os.environ, "LEUKOLAB_TASK": task.name}
        if self.jobs > 1:
            threads = str(threads_per_job(self.jobs))
            env.update({"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads})
        return env

    def _output(self, name: str) -> dict | None:
        path = self.run_dir / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def _record(self, task: Task) -> StageRecord:
        """The task's output read as its stage's record (:mod:`leukolab.stages.records`); an empty one without it."""
        output = self._output(task.name)
        return record_type(task.stage).model_validate(output) if output else StageRecord()

    def _child_runs(self, name: str) -> list:
        """The MLflow runs the task's notebook opened in this attempt (tag ``leukolab.task``), newest first."""
        experiment = self.client.get_experiment_by_name(EXPERIMENT_NAME).experiment_id
        since = int(dt.datetime.fromisoformat(self.lineage["tasks"][name]["started"]).timestamp() * 1000)
        return self.client.search_runs([experiment], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{self.parent_run_id}' and "
                                                     f"tags.`leukolab.task` = '{name}' and attributes.start_time >= {since}")

    def _fail_child_runs(self, name: str, message: str) -> str | None:
        """Give the task's runs the failure message (tag ``leukolab.error``) and mark them FAILED: left RUNNING, or
        ended FINISHED by MLflow's exit hook when the kernel stopped, they belong to a task that failed. Where the store
        cannot be written (a full disk) they stay as they are, and the resume marks them."""
        try:
            runs = self._child_runs(name)
            for child in runs:
                self.client.set_tag(child.info.run_id, "leukolab.error", message[:5000])
                if child.info.status != "FAILED":
                    self.client.set_terminated(child.info.run_id, "FAILED")
        except (OSError, MlflowException) as error:
            log.warning("the MLflow runs of task %s are not marked failed (%s)", name, str(error)[:300])
            return None
        return runs[0].info.run_id if runs else None

    def _close_parent_run(self, status: str) -> None:
        """Per-task summary tags (``leukolab.stage.<task>``: status, key, seconds), the lineage file, the run's end."""
        tags = [RunTag(f"leukolab.stage.{name}", f"{r['status']} {r.get('key', '')[:12]} {r.get('seconds', 0):.1f}s")
                for name, r in self.lineage["tasks"].items()]
        self.client.log_batch(self.parent_run_id, tags=tags)
        self.client.log_artifact(self.parent_run_id, str(self.run_dir / "lineage.json"))
        self.client.set_terminated(self.parent_run_id, RUN_STATUS[status])

    def _show(self, name: str, state: str, detail: str = "") -> None:
        if self.progress:
            self.progress.update(name, state, detail)

    def _write(self) -> None:
        for record in self.lineage["tasks"].values():
            if record.get("started") and record.get("finished") and "seconds" not in record:
                record["seconds"] = seconds_between(record["started"], record["finished"])
        write_lineage(self.lineage)
