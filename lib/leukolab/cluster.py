"""A Spark standalone cluster on 127.0.0.1: one master and N workers started with pyspark's own ``spark-class``.

For tests and for users without a cluster. Every daemon runs in a process group of its own (executors, Python
workers and torchrun processes are its children), on loopback only, on free ports, with its log and the state
file (``state.json``: pids, ports, master URL) in one folder (default ``<workspace>/cluster/``). Workers run
executors with this interpreter (``PYSPARK_PYTHON``) and this library on ``PYTHONPATH``, so tasks import leukolab.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from leukolab.config import workspace
from leukolab.processes.background import Background, free_port, wait_until_ready
from leukolab.processes.groups import group_alive, stop_groups

HOST = "127.0.0.1"
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
LIBRARY_ROOT = Path(__file__).resolve().parents[1]


class ClusterError(RuntimeError):
    """The cluster could not be started, or is not running."""


def default_directory() -> Path:
    return workspace() / "cluster"


def spark_home() -> Path:
    """pyspark's package folder, which ships ``bin/spark-class`` and the jars."""
    spec = importlib.util.find_spec("pyspark")
    if spec is None or not spec.submodule_search_locations:
        raise ClusterError("pyspark is not installed in this environment")
    return Path(list(spec.submodule_search_locations)[0])


def start_cluster(workers: int = 1, cores: int = 2, memory: str = "2g", directory: str | Path | None = None,
                  timeout: float = 120.0) -> dict:
    """Start a master and ``workers`` workers of ``cores`` cores and ``memory`` each; wait until every worker is
    registered; return the state (also written to ``<directory>/state.json``). Stops what it started on failure."""
    if workers < 1 or cores < 1:
        raise ClusterError(f"a cluster needs at least one worker of one core, got workers={workers} cores={cores}")
    if not re.fullmatch(r"[1-9]\d*[mMgGtT]", memory):
        raise ClusterError(f"memory is a size such as 512m or 2g, got {memory!r}")
    directory = Path(directory or default_directory()).resolve()
    if read_state(directory) and alive(read_state(directory)):
        raise ClusterError(f"a cluster is already running from {directory}: `leukolab cluster down` stops it")
    (directory / "logs").mkdir(parents=True, exist_ok=True)
    port, webui = free_port(HOST), free_port(HOST)
    state = {"master_url": f"spark://{HOST}:{port}", "web_ui": f"http://{HOST}:{webui}", "directory": str(directory),
             "workers": workers, "cores": cores, "memory": memory, "processes": []}
    daemons = []
    try:
        daemons.append(_launch(directory, "master", [MASTER_CLASS, "--host", HOST, "--port", str(port),
                                                     "--webui-port", str(webui)], state))
        for n in range(1, workers + 1):
            work_dir = directory / "work" / f"worker-{n}"
            daemons.append(_launch(directory, f"worker-{n}", [
                WORKER_CLASS, state["master_url"], "--host", HOST, "--cores", str(cores), "--memory", memory,
                "--webui-port", str(free_port(HOST)), "--work-dir", str(work_dir)], state))
        _write_state(directory, state)
        try:
            wait_until_ready(lambda: _registered(state), daemons, timeout, interval=0.5)
        except (RuntimeError, TimeoutError) as error:
            raise ClusterError(f"{error}\n(every daemon's log is in {directory / 'logs'})") from None
    except BaseException:
        stop_cluster(state)
        raise
    return state


def stop_cluster(state: dict, grace: float = 15.0) -> None:
    """Stop every process group the cluster started (daemons, executors and their Python workers); forget it."""
    stop_groups([p["pid"] for p in reversed(state.get("processes", []))], grace)
    state_file = Path(state.get("directory", ".")) / "state.json"
    if state.get("directory") and state_file.is_file():
        state_file.unlink()


@contextlib.contextmanager
def standalone_cluster(workers: int = 1, cores: int = 2, memory: str = "2g", directory: str | Path | None = None,
                       timeout: float = 120.0) -> Iterator[str]:
    """A running cluster for the ``with`` block: yields its master URL (``spark://127.0.0.1:<port>``), stops it after."""
    state = start_cluster(workers, cores, memory, directory, timeout)
    try:
        yield state["master_url"]
    finally:
        stop_cluster(state)


def read_state(directory: str | Path | None = None) -> dict | None:
    """The state of the cluster started from ``directory``, or ``None`` when none was started (or it was stopped)."""
    path = Path(directory or default_directory()) / "state.json"
    return json.loads(path.read_text()) if path.is_file() else None


def alive(state: dict) -> bool:
    """Whether any process the cluster started is still running."""
    return any(group_alive(p["pid"]) for p in state.get("processes", []))


def master_status(state: dict, timeout: float = 5.0) -> dict:
    """The master's own JSON (``/json/``): its URL, alive workers, applications."""
    with urllib.request.urlopen(state["web_ui"] + "/json/", timeout=timeout) as response:
        return json.loads(response.read())


def status_text(state: dict | None) -> str:
    """What ``leukolab cluster status`` prints: the master URL, and each worker with its cores and memory."""
    if state is None:
        return "no cluster is running (`leukolab cluster up` starts one)"
    try:
        master = master_status(state)
    except OSError as error:
        return f"cluster {state['master_url']} does not answer at {state['web_ui']} ({error}); `leukolab cluster down` cleans up"
    lines = [f"master {state['master_url']} ({master.get('status', '?')}), web UI {state['web_ui']}",
             f"logs {Path(state['directory']) / 'logs'}"]
    for worker in master.get("workers", []):
        lines.append(f"  worker {worker['id']} {worker['host']}:{worker['port']} {worker['state']}: "
                     f"{worker['coresused']}/{worker['cores']} cores, {worker['memoryused']}/{worker['memory']} MB used")
    lines.append(f"{master.get('aliveworkers', 0)} alive workers, {len(master.get('activeapps', []))} running applications")
    return "\n".join(lines)


def _environment() -> dict:
    path = os.pathsep.join(p for p in (str(LIBRARY_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "SPARK_HOME": str(spark_home()), "SPARK_LOCAL_IP": HOST, "SPARK_LOCAL_HOSTNAME": "localhost",
            "PYSPARK_PYTHON": os.environ.get("PYSPARK_PYTHON", sys.executable), "PYTHONPATH": path,
            "SPARK_DAEMON_MEMORY": os.environ.get("SPARK_DAEMON_MEMORY", "512m")}


def _launch(directory: Path, name: str, arguments: list[str], state: dict) -> Background:
    """A daemon (``spark-class`` and its arguments) in a process group of its own, noted in ``state``."""
    daemon = Background.start([str(spark_home() / "bin" / "spark-class"), *arguments],
                              directory / "logs" / f"{name}.log", f"Spark {name}", env=_environment(), cwd=directory,
                              own_group=True, stop_at_exit=False)
    state["processes"].append({"name": name, "pid": daemon.process.pid, "log": str(daemon.log_path)})
    return daemon


def _write_state(directory: Path, state: dict) -> None:
    (directory / "state.json").write_text(json.dumps(state, indent=2))


def _registered(state: dict) -> bool:
    """Whether every worker has registered with the master."""
    with contextlib.suppress(OSError, ValueError):
        return master_status(state, timeout=2).get("aliveworkers", 0) >= state["workers"]
    return False
