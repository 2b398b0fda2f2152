"""``leukolab status`` (``leukolab run --dry-run``): which tasks a run would reuse and which it would run, and why,
without running anything, as ``dvc status`` answers it.

A task's key needs its upstream tasks' outputs, so it is known only while every task above it would be reused; a
task below one that runs is *stale*: it runs unless that task comes out the same (then the runner reuses it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from leukolab.pipeline.graph import plan, select
from leukolab.pipeline.keys import task_key
from leukolab.pipeline.lineage import all_runs, find_cached, finished_in_store
from leukolab.pipeline.parameters import RUNNER_PARAMETERS, notebook_parameters
from leukolab.tracking import configure


def would_run(profile: str = "default", overrides: dict | None = None, pipeline_file: str | Path | None = None, *,
              force: list[str] = (), from_stage: str | None = None, until: str | None = None,
              only: str | None = None) -> list[dict]:
    """One record per task of the selection: ``task``, ``action`` (``reuse``, ``run``, ``fail``) and ``why``."""
    the_plan = plan(profile, overrides, pipeline_file)
    selection = select(the_plan, list(force), from_stage, until, only)
    configure()
    earlier, logged = all_runs(), finished_in_store(MlflowClient())
    keys: dict[str, tuple[str, dict] | None] = {}  # task -> (key, output) when it would be reused
    rows = []
    for name in selection.names:
        task = the_plan[name]
        waiting = [u for u in task.after if keys.get(u) is None]
        found = None
        if not waiting:
            declared = notebook_parameters(task.notebook)
            parameters = {k: v for k, v in task.parameters.items() if k in declared and k not in RUNNER_PARAMETERS}
            key = task_key(task.notebook, parameters, task.deps, {u: keys[u] for u in task.after})
            found = find_cached(key, earlier, logged)
        if name in selection.forced:
            action, why = "run", "forced (--force or --from)"
        elif waiting:
            action, why = "run", f"stale: {', '.join(waiting)} {'runs' if len(waiting) == 1 else 'run'} first"
        elif found:
            action, why = "reuse", f"up to date: from run {found[1].get('cached_from', found[0])}"
        else:
            action, why = "run", "changed or never run: no earlier run has its key"
        if name in selection.reuse_only and action == "run":
            action, why = "fail", f"--only may not run it ({why})"
        if action == "reuse":
            keys[name] = (key, json.loads(Path(found[1]["outputs"]["json"]).read_text()))
        rows.append({"task": name, "stage": task.stage, "action": action, "why": why})
    return rows


def status_table(rows: list[dict]) -> str:
    """The records of :func:`would_run` as a table and a one-line count."""
    counts = pd.Series([r["action"] for r in rows]).value_counts()
    summary = ", ".join(f"{counts.get(a, 0)} to {a}" for a in ("run", "reuse")) + (
        f", {counts['fail']} would fail" if "fail" in counts else "")
    return f"{pd.DataFrame(rows).to_string(index=False)}\n\n{summary}; nothing was run"
