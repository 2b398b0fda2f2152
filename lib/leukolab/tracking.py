"""MLflow: the tracking URI, stage runs nested under a pipeline run, and logging helpers.

By default the store is SQLite in the workspace (``mlflow.db``) with artifacts
in ``mlartifacts/``; ``MLFLOW_TRACKING_URI`` points everything elsewhere.
"""

from __future__ import annotations

import logging
import os
import subprocess
import urllib.request
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from leukolab.config import PROJECT_ROOT, workspace

log = logging.getLogger(__name__)
EXPERIMENT_NAME = "leukolab"
LEAN_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
"""MLflow 3's server (and UI) starts Huey job consumers (GenAI evaluation, scheduled jobs) unless told not to; the
local tracking server and the MLflow UI need none."""


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the workspace's SQLite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{workspace() / 'mlflow.db'}"


HTTP_RETRIES = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "6",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}
"""How MLflow's client retries a request to a tracking server that does not answer (a restart, a network blip):
6 retries, 0, 4, 8, 16, 32 and 64 s (+ up to 1 s) apart, so a server back within about two minutes (a restart on a
busy machine) is not noticed, and one away longer fails the request, naming the server; each attempt waits at most
60 s for an answer. Set for this process and the stages it starts unless the environment sets them (MLflow's own
defaults retry for about 4 minutes)."""
_probed: set[str] = set()


def is_remote(uri: str) -> bool:
    """Whether ``uri`` is a tracking server (``http://``, ``https://``), not a local store."""
    return uri.startswith(("http://", "https://"))


def bound_retries() -> None:
    """Set :data:`HTTP_RETRIES` where the environment does not."""
    for name, value in HTTP_RETRIES.items():
        os.environ.setdefault(name, value)


def configure(experiment_name: str = EXPERIMENT_NAME) -> str:
    """Point MLflow at the tracking store and experiment; return the experiment id.

    With a tracking server, MLflow's retries are bounded (:data:`HTTP_RETRIES`) and the server is probed once per
    process (not in a stage under the pipeline runner, which probed it at the run's start), so a server that is not
    there fails at once. Raises ``ConnectionError`` naming the URI when the store cannot be reached.
    """
    uri = tracking_uri()
    if is_remote(uri):
        bound_retries()
        if uri not in _probed and not os.environ.get("LEUKOLAB_TASK"):
            probe_server(uri)
            _probed.add(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient()
    try:
        experiment = client.get_experiment_by_name(experiment_name)
    except Exception as error:
        raise ConnectionError(f"MLflow tracking store {uri} is not reachable: {error}") from error
    if experiment is None:
        artifacts = (workspace() / "mlartifacts").as_uri() if uri.startswith("sqlite:") else None
        experiment_id = client.create_experiment(experiment_name, artifact_location=artifacts)
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def probe_server(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, naming the URI, when a tracking server does not answer (MLflow's own retries take minutes)."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            pass
    except (OSError, ValueError) as error:
        raise ConnectionError(f"MLflow tracking server {uri} is not reachable: {error}") from error


def open_stage_run(stage: str, run_name: str | None = None, parent_run_id: str | None = None, tags: dict | None = None,
                   params: dict | None = None):
    """Start the MLflow run of one stage notebook, a child of the pipeline run when ``parent_run_id`` is given,
    and log the stage's ``params`` (flattened) at once.

    A notebook opens it before its work, so a stage that fails still has its run (the runner marks it FAILED
    and tags the error), and ends it in its last cell (``mlflow.end_run()``). A run still open from an earlier,
    interrupted pass through the notebook is ended as FAILED first. Under the pipeline runner the run is tagged
    ``leukolab.task`` with the task's name (``LEUKOLAB_TASK``), so the runner can find the run of a task that failed.
    """
    configure()
    if mlflow.active_run():
        mlflow.end_run("FAILED")
    all_tags = {"leukolab.stage": stage, **git_tags(), **(tags or {})}
    if os.environ.get("LEUKOLAB_TASK"):
        all_tags["leukolab.task"] = os.environ["LEUKOLAB_TASK"]
    if parent_run_id:
        all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    run = mlflow.start_run(run_name=run_name or stage, tags=all_tags)
    if params:
        mlflow.log_params(flatten(params))
    return run


def git_tags() -> dict[str, str]:
    """``git_commit`` and ``git_dirty`` of the project, when it is a git checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"git_commit": commit, "git_dirty": str(bool(dirty)).lower()}


def flatten(mapping: dict, prefix: str = "") -> dict[str, object]:
    """``{"a": {"b": 1}}`` to ``{"a.b": 1}``, the form MLflow parameters take."""
    flat = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def log_file_to_run(run_id: str, path: str | Path, artifact_dir: str | None = None) -> None:
    """Attach a file (e.g. the executed notebook) to a finished or running run."""
    configure()
    MlflowClient().log_artifact(run_id, str(path), artifact_dir)
