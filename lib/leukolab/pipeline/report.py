"""``leukolab runs``: pipeline runs and their tasks as text tables (or records for ``--json``), read from their lineage."""

from __future__ import annotations

import os

import pandas as pd

from leukolab.config import workspace
from leukolab.pipeline.lineage import all_runs, read_lineage, runs_dir, seconds_between


def runs_records() -> list[dict]:
    """One record per run in the workspace, newest last: id, profile, status, start, wall time, task counts."""
    rows = []
    for run in all_runs():
        statuses = [t["status"] for t in run.get("tasks", {}).values()]
        counts = {s: statuses.count(s) for s in ("done", "cached", "failed", "timed_out", "killed") if s in statuses}
        rows.append({"run": run["run_id"], "profile": run["profile"], "status": run.get("status", "?"),
                     "started": run.get("started", "")[:19], "seconds": _wall_seconds(run), "tasks": counts})
    return rows


def runs_table() -> str:
    """:func:`runs_records` as a text table."""
    rows = runs_records()
    if not rows:
        return f"no pipeline runs in {runs_dir()}"
    for row in rows:
        row["tasks"] = ", ".join(f"{n} {s}" for s, n in row["tasks"].items())
    return pd.DataFrame(rows).to_string(index=False)


def run_record(run_id: str) -> dict:
    """A run's header (profile, status, git, MLflow parent run, folder) and one record per task under ``tasks``."""
    run = read_lineage(run_id)
    tasks = [{"task": name, "status": t["status"], "seconds": t.get("seconds", ""), "key": t.get("key", ""),
              "from run": t.get("cached_from", ""), "mlflow run": t.get("mlflow_run_id") or "",
              "notebook": _in_workspace(t.get("outputs", {}).get("notebook", "")), "error": t.get("error", "")}
             for name, t in run["tasks"].items()]
    return {"run": run["run_id"], "profile": run["profile"], "status": run.get("status"),
            "started": run.get("started", "")[:19], "seconds": _wall_seconds(run), "git_commit": run.get("git_commit"),
            "git_dirty": run.get("git_dirty"), "mlflow_parent_run_id": run.get("mlflow_parent_run_id"),
            "folder": run["run_dir"], "tasks": tasks}


def run_table(run_id: str) -> str:
    """:func:`run_record` as a header, a table of tasks, and their errors below."""
    run = run_record(run_id)
    header = (f"run {run['run']}  profile {run['profile']}  status {run['status']}  started {run['started']}"
              f"  wall {run['seconds']} s\ngit {str(run['git_commit'] or '?')[:12]} dirty {run['git_dirty']}"
              f"  MLflow parent run {run['mlflow_parent_run_id']}  folder {run['folder']}")
    rows = [{**{k: v for k, v in t.items() if k != "error"}, "key": t["key"][:12]} for t in run["tasks"]]
    errors = [f"{t['task']}: {t['error']}" for t in run["tasks"] if t["error"]]
    return "\n\n".join([header, pd.DataFrame(rows).to_string(index=False), *errors])


def _in_workspace(path: str) -> str:
    """A path under the workspace relative to it (shorter in a table), any other as it is."""
    return os.path.relpath(path, workspace()) if path.startswith(str(workspace())) else path


def _wall_seconds(run: dict) -> float | str:
    return round(seconds_between(run["started"], run["finished"]), 1) if run.get("finished") else ""
