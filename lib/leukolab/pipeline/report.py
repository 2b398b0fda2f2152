"""``leukolab runs``: pipeline runs and their tasks as text tables, read from their lineage."""

from __future__ import annotations

import os

import pandas as pd

from leukolab.config import workspace
from leukolab.pipeline.lineage import all_runs, read_lineage, runs_dir, seconds_between


def runs_table() -> str:
    """One row per run in the workspace, newest last: id, profile, status, start, wall time, task counts."""
    rows = []
    for run in all_runs():
        statuses = [t["status"] for t in run.get("tasks", {}).values()]
        counts = {s: statuses.count(s) for s in ("done", "cached", "failed", "timed_out", "killed") if s in statuses}
        rows.append({"run": run["run_id"], "profile": run["profile"], "status": run.get("status", "?"),
                     "started": run.get("started", "")[:19], "seconds": _wall_seconds(run),
                     "tasks": ", ".join(f"{n} {s}" for s, n in counts.items())})
    if not rows:
        return f"no pipeline runs in {runs_dir()}"
    return pd.DataFrame(rows).to_string(index=False)


def run_table(run_id: str) -> str:
    """A run's header (profile, status, git, MLflow parent run) and one row per task, with errors below."""
    run = read_lineage(run_id)
    header = (f"run {run['run_id']}  profile {run['profile']}  status {run.get('status')}  started {run.get('started', '')[:19]}"
              f"  wall {_wall_seconds(run)} s\ngit {str(run.get('git_commit', '?'))[:12]} dirty {run.get('git_dirty', '?')}"
              f"  MLflow parent run {run.get('mlflow_parent_run_id')}  folder {run['run_dir']}")
    rows = [{"task": name, "status": t["status"], "seconds": t.get("seconds", ""), "key": t.get("key", "")[:12],
             "from run": t.get("cached_from", ""), "mlflow run": t.get("mlflow_run_id") or "",
             "notebook": _in_workspace(t.get("outputs", {}).get("notebook", ""))} for name, t in run["tasks"].items()]
    errors = [f"{name}: {t['error']}" for name, t in run["tasks"].items() if t.get("error")]
    return "\n\n".join([header, pd.DataFrame(rows).to_string(index=False), *errors])


def _in_workspace(path: str) -> str:
    """A path under the workspace relative to it (shorter in a table), any other as it is."""
    return os.path.relpath(path, workspace()) if path.startswith(str(workspace())) else path


def _wall_seconds(run: dict) -> float | str:
    return round(seconds_between(run["started"], run["finished"]), 1) if run.get("finished") else ""
