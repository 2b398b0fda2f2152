"""The smoke pipeline (cold, through the real CLI) on the workspace's SQLite store against a lean ``mlflow server``.

The variants alternate ``--repeats`` times, each on a new workspace (and, for the server, a new server started
before the clock: ``leukolab.tracking_server``). Besides wall time it reports the CPU time of the run's whole
process tree (the CLI, kernels, Spark) and of the server, which other jobs on a shared machine barely change.

    python benchmarks/tracking_server.py                 # one run each, about 5 minutes on 2 quiet cores
    python benchmarks/tracking_server.py --repeats 2 --markdown
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import psutil

from pipeline import timed_run
from leukolab.tracking_server import start_tracking_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--markdown", action="store_true", help="also print a row for benchmarks/RESULTS.md")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="leukolab-bench-server-"))
    print(f"{root}; profile {args.profile}; {len(os.sched_getaffinity(0))} CPUs, load average {os.getloadavg()[0]:.2f}")
    results: dict[str, list[tuple[float, float, float]]] = {"sqlite": [], "server": []}
    loads = []
    for repeat in range(args.repeats):
        for variant in results:
            workspace = root / f"{variant}-{repeat}"
            if variant == "server":
                with start_tracking_server(root / f"server-{repeat}") as server:
                    before = _tree_cpu(server.process.pid)
                    wall, cpu = _run(workspace, args.profile, server.url)
                    server_cpu = _tree_cpu(server.process.pid) - before
            else:
                (wall, cpu), server_cpu = _run(workspace, args.profile, None), 0.0
            results[variant].append((wall, cpu, server_cpu))
            loads.append(os.getloadavg()[0])
            print(f"  {variant:<7} {wall:7.1f} s wall  CPU {cpu:6.1f} s (run) + {server_cpu:5.1f} s (server)  "
                  f"(load {loads[-1]:.1f})")
    medians = {variant: [statistics.median(column) for column in zip(*rows)] for variant, rows in results.items()}
    ratio = medians["server"][0] / medians["sqlite"][0]
    print(f"median wall: SQLite {medians['sqlite'][0]:.1f} s, server {medians['server'][0]:.1f} s (x{ratio:.2f}); "
          f"CPU: SQLite {medians['sqlite'][1]:.1f} s, server {medians['server'][1]:.1f} + {medians['server'][2]:.1f} s")
    if args.markdown:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        print(f"| {time.strftime('%Y-%m-%d')} | {args.profile} | {args.repeats} | {min(loads):.1f}–{max(loads):.1f} | "
              f"{medians['sqlite'][0]:.1f} | {medians['server'][0]:.1f} | {ratio:.2f} | {medians['sqlite'][1]:.1f} | "
              f"{medians['server'][1]:.1f} + {medians['server'][2]:.1f} | {commit} |")


def _run(workspace: Path, profile: str, tracking_uri: str | None) -> tuple[float, float]:
    """Wall seconds and CPU seconds of the run's process tree (children the CLI and its kernels waited for)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall, _ = timed_run(workspace, "bench", profile, 1, [], tracking_uri)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _tree_cpu(pid: int) -> float:
    """User + system CPU seconds of a process and its living children."""
    total = 0.0
    for process in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


if __name__ == "__main__":
    main()
