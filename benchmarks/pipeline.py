"""Wall time of ``leukolab run`` on a profile: cold, again with nothing changed, and with one parameter changed.

Each run is the real CLI in a fresh process (Python start and imports count) on
one new workspace:

1. cold: an empty workspace, every stage runs;
2. unchanged: the same command again; every stage should be reused (goal: under 5 s);
3. changed: ``--param <STAGE.KEY=VALUE>`` (default ``classify.epochs=2``): only that
   stage's tasks and what follows them should run.

    python benchmarks/pipeline.py                      # the smoke profile, about 2 minutes on 2 cores
    python benchmarks/pipeline.py --markdown           # also a row for benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_UNCHANGED_S = 5.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--change", default="classify.epochs=2", help="the --param of the third run")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--workdir", help="the workspace (default: a new temporary folder)")
    parser.add_argument("--markdown", action="store_true", help="also print a row for benchmarks/RESULTS.md")
    args = parser.parse_args()

    workspace = Path(args.workdir or tempfile.mkdtemp(prefix="leukolab-bench-pipeline-"))
    print(f"workspace {workspace}; profile {args.profile}; jobs {args.jobs}")
    print(f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPUs, load average {os.getloadavg()[0]:.2f}; "
          f"Python {platform.python_version()}")
    runs = [("cold", []), ("unchanged", []), ("changed", ["--param", args.change])]
    results = {}
    for name, extra in runs:
        seconds, lineage = timed_run(workspace, name, args.profile, args.jobs, extra)
        statuses = {task: record["status"] for task, record in lineage["tasks"].items()}
        ran = [task for task, status in statuses.items() if status == "done"]
        results[name] = seconds
        print(f"  {name:<10} {seconds:7.1f} s  ran: {', '.join(ran) or 'nothing'}; "
              f"cached: {sum(s == 'cached' for s in statuses.values())}  (load {os.getloadavg()[0]:.1f})")
    ratio = results["unchanged"] / results["cold"]
    verdict = "met" if results["unchanged"] < GOAL_UNCHANGED_S else "NOT met"
    print(f"unchanged / cold = {ratio:.3f}; changed / cold = {results['changed'] / results['cold']:.2f}; "
          f"goal unchanged < {GOAL_UNCHANGED_S:g} s {verdict}")
    if args.markdown:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        print(f"| {time.strftime('%Y-%m-%d')} | {args.profile} | {args.jobs} | {len(os.sched_getaffinity(0))} | "
              f"{results['cold']:.1f} | {results['unchanged']:.1f} | {results['changed']:.1f} (`{args.change}`) | "
              f"{ratio:.3f} | {commit} |")


def timed_run(workspace: Path, run_id: str, profile: str, jobs: int, extra: list[str],
              tracking_uri: str | None = None) -> tuple[float, dict]:
    """Wall seconds and lineage of one ``leukolab run``, on the workspace's SQLite store or on ``tracking_uri``."""
    env = {**os.environ, "LEUKOLAB_WORKSPACE": str(workspace), "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    command = [sys.executable, "-m", "leukolab.cli", "run", "--profile", profile, "--run-id", run_id, "--jobs", str(jobs), *extra]
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{run_id} failed:\n{result.stderr[-3000:]}")
    return seconds, json.loads((workspace / "runs" / run_id / "lineage.json").read_text())


if __name__ == "__main__":
    main()
