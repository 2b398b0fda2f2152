"""The pipeline runner: the stage notebooks of ``params/pipeline.yaml``, in order, under papermill.

Each pipeline run gets a folder ``runs/<run-id>/`` holding every executed
notebook and every stage's output JSON, and an MLflow parent run under which
each stage notebook opens its child run. The first failing stage stops the
run with a message naming the stage, the cell, the error and the executed
notebook.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import papermill
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from leukolab import __version__
from leukolab.config import NOTEBOOKS_DIR, PARAMS_DIR, deep_merge, load_named, read_yaml, workspace
from leukolab.tracking import configure, git_tags, log_file_to_run, tracking_uri

log = logging.getLogger(__name__)
KERNEL_NAME = "leukolab"


@dataclass
class StageTask:
    """One notebook execution: a stage, or one experiment of a fanned-out stage."""

    stage: str
    name: str
    notebook: str
    parameters: dict = field(default_factory=dict)


class StageFailed(RuntimeError):
    """A stage notebook raised; the message says where and what, and where its executed notebook is."""


def plan(profile: str, overrides: dict | None = None) -> list[StageTask]:
    """The ordered stage tasks of a profile, with resolved parameters (``overrides``: ``key`` or ``stage.key``)."""
    pipeline = read_yaml(PARAMS_DIR / "pipeline.yaml")["stages"]
    settings = load_named("profiles", profile)
    overrides = overrides or {}
    shared = deep_merge(settings.get("parameters", {}), {k: v for k, v in overrides.items() if "." not in k})
    tasks = []
    for stage, spec in pipeline.items():
        params = deep_merge(shared, settings.get("stage_parameters", {}).get(stage, {}))
        params = deep_merge(params, {k.split(".", 1)[1]: v for k, v in overrides.items() if k.startswith(f"{stage}.")})
        params = {k: _expand_env(k, v) for k, v in params.items()}
        fan_out = spec.get("foreach")
        if fan_out:
            for experiment in settings.get("experiments", {}).get(fan_out, []):
                tasks.append(StageTask(stage, f"{stage}-{experiment}", spec["notebook"], {**params, "experiment": experiment}))
        else:
            tasks.append(StageTask(stage, stage, spec["notebook"], params))
    return tasks


def _expand_env(key: str, value):
    """``${VAR}`` in a string parameter is the environment variable VAR, which must be set."""
    if not isinstance(value, str) or "$" not in value:
        return value
    expanded = os.path.expandvars(value)
    if "$" in expanded:
        raise ValueError(f"parameter {key}={value!r} names an environment variable that is not set")
    return expanded


def new_run_id() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def run_pipeline(profile: str, overrides: dict | None = None, run_id: str | None = None) -> dict:
    """Run every stage of ``profile``; return the run summary (also in ``runs/<run-id>/pipeline.json``)."""
    tasks = plan(profile, overrides)
    run_id = run_id or new_run_id()
    run_dir = workspace() / "runs" / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    configure()
    client = MlflowClient()
    parent = client.create_run(
        mlflow.get_experiment_by_name("leukolab").experiment_id, run_name=f"pipeline {profile} {run_id}",
        tags={"leukolab.pipeline_run_id": run_id, "leukolab.profile": profile, "leukolab.version": __version__, **git_tags()},
    )
    summary = {"run_id": run_id, "profile": profile, "overrides": overrides or {}, "run_dir": str(run_dir),
               "mlflow_parent_run_id": parent.info.run_id, "tracking_uri": tracking_uri(), "stages": []}
    log.info("pipeline run %s (profile %s): %d stages; folder %s", run_id, profile, len(tasks), run_dir)
    status = "FINISHED"
    try:
        for index, task in enumerate(tasks):
            summary["stages"].append(_run_task(index, task, run_dir, parent.info.run_id))
            _write_summary(run_dir, summary)
    except BaseException as error:
        status = "FAILED" if not isinstance(error, KeyboardInterrupt) else "KILLED"
        summary["error"] = str(error)
        raise
    finally:
        summary["status"] = status
        _write_summary(run_dir, summary)
        client.set_terminated(parent.info.run_id, status)
    return summary


def _run_task(index: int, task: StageTask, run_dir: Path, parent_run_id: str) -> dict:
    source = NOTEBOOKS_DIR / task.notebook
    output = run_dir / f"{index:02d}_{task.name}.ipynb"
    declared = papermill.inspect_notebook(str(source))
    injected = {"run_dir": str(run_dir), "parent_run_id": parent_run_id, **task.parameters}
    unknown = sorted(set(injected) - set(declared) - {"run_dir", "parent_run_id", "seed"})
    parameters = {k: v for k, v in injected.items() if k in declared}
    record = {"name": task.name, "stage": task.stage, "notebook": str(output), "parameters": parameters,
              "ignored_parameters": unknown, "started": _now()}
    log.info("stage %s: running %s", task.name, task.notebook)
    start = time.perf_counter()
    try:
        papermill.execute_notebook(str(source), str(output), parameters=parameters, kernel_name=_kernel_name(),
                                   cwd=str(NOTEBOOKS_DIR), progress_bar=False, request_save_on_cell_execute=True)
    except papermill.PapermillExecutionError as error:
        _fail_child_runs(parent_run_id, task.name, str(error.evalue))
        raise StageFailed(
            f"stage {task.name!r} failed in cell {error.exec_count} ({error.ename}: {error.evalue}); "
            f"executed notebook: {output}"
        ) from None
    except Exception as error:
        _fail_child_runs(parent_run_id, task.name, str(error))
        raise StageFailed(f"stage {task.name!r} could not run ({type(error).__name__}: {error}); notebook: {output}") from None
    record.update({"status": "done", "seconds": round(time.perf_counter() - start, 1), "finished": _now()})
    stage_output = run_dir / f"{task.name}.json"
    if stage_output.is_file():
        record["output"] = json.loads(stage_output.read_text())
        run_id = record["output"].get("mlflow_run_id")
        if run_id:
            log_file_to_run(run_id, output, "notebook")
    log.info("stage %s: done in %.0f s", task.name, record["seconds"])
    return record


def _fail_child_runs(parent_run_id: str, stage_name: str, message: str) -> None:
    """Mark the failed stage's child runs (left RUNNING by the dead notebook) as FAILED, with the error."""
    client = MlflowClient()
    runs = client.search_runs(
        [mlflow.get_experiment_by_name("leukolab").experiment_id],
        filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}' and attributes.status = 'RUNNING'",
    )
    for run in runs:
        client.set_tag(run.info.run_id, "leukolab.error", f"{stage_name}: {message}"[:5000])
        client.set_terminated(run.info.run_id, "FAILED")


def _kernel_name() -> str:
    from jupyter_client.kernelspec import KernelSpecManager

    if KERNEL_NAME in KernelSpecManager().find_kernel_specs():
        return KERNEL_NAME
    raise RuntimeError(f"Jupyter kernel {KERNEL_NAME!r} is not registered: run `make env` (or "
                       f"`python -m ipykernel install --sys-prefix --name {KERNEL_NAME}`)")


def _write_summary(run_dir: Path, summary: dict) -> None:
    (run_dir / "pipeline.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
