"""Lineage: ``runs/<run-id>/lineage.json``, the record of a pipeline run and of every task in it.

Per task: its key, parameters, status (``queued``, ``running``, ``done``,
``cached``, ``failed``, ``timed_out``, ``killed``), start and end, outputs (the
stage output JSON and the executed notebook), MLflow run id, git commit and
dirty flag. Earlier runs' lineage is also the cache: a task whose key matches a
finished task of any run in the workspace is reused from there.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from leukolab.config import workspace
from leukolab.disk import write_whole

LINEAGE_FILE = "lineage.json"
FINISHED = ("done", "cached")


def runs_dir() -> Path:
    return workspace() / "runs"


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def seconds_between(started: str, finished: str) -> float:
    """Seconds between two of the timestamps ``now`` returns."""
    return round((dt.datetime.fromisoformat(finished) - dt.datetime.fromisoformat(started)).total_seconds(), 3)


def read_lineage(run_id: str) -> dict:
    """The lineage of run ``run_id``; a clear error when there is none."""
    path = runs_dir() / run_id / LINEAGE_FILE
    if not path.is_file():
        known = [p.parent.name for p in sorted(runs_dir().glob(f"*/{LINEAGE_FILE}"))]
        raise ValueError(f"no pipeline run {run_id!r} in {runs_dir()} (runs: {', '.join(known[-10:]) or 'none'})")
    return json.loads(path.read_text())


def write_lineage(lineage: dict) -> None:
    """Write a run's lineage whole (a temporary file, then a rename), so readers never see half of it."""
    write_whole(Path(lineage["run_dir"]) / LINEAGE_FILE, json.dumps(lineage, indent=2, default=str) + "\n")


def all_runs() -> list[dict]:
    """The lineage of every run in the workspace, oldest first; unreadable files are skipped."""
    runs = []
    for path in runs_dir().glob(f"*/{LINEAGE_FILE}"):
        try:
            runs.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return sorted(runs, key=lambda r: r.get("started", ""))


def find_cached(key: str, runs: list[dict], still_logged) -> tuple[str, dict] | None:
    """The run id and record of the latest finished task with ``key`` whose outputs still exist.

    ``still_logged(mlflow_run_id)`` says whether the task's MLflow run is still in the store.
    """
    for run in reversed(runs):
        for record in run.get("tasks", {}).values():
            if record.get("key") == key and record.get("status") in FINISHED and _outputs_exist(record, still_logged):
                return run["run_id"], record
    return None


def finished_in_store(client):
    """``still_logged(mlflow_run_id)`` for :func:`find_cached`: whether ``client``'s store still has that run, finished
    (memoized)."""
    from mlflow.exceptions import MlflowException

    seen: dict[str, bool] = {}

    def still_logged(run_id: str) -> bool:
        if run_id not in seen:
            try:
                seen[run_id] = client.get_run(run_id).info.status == "FINISHED"
            except MlflowException:
                seen[run_id] = False
        return seen[run_id]

    return still_logged


def _outputs_exist(record: dict, still_logged) -> bool:
    output_file = Path(record.get("outputs", {}).get("json", ""))
    if not output_file.is_file():
        return False
    output = json.loads(output_file.read_text())
    folders = [Path(v) for k, v in output.items() if k.endswith(("_dir", "_path")) and isinstance(v, str)]
    run_id = output.get("mlflow_run_id")
    return all(p.exists() for p in folders) and (not run_id or still_logged(run_id))
