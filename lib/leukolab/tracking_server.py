"""A local MLflow tracking server, lean: SQLite store and served artifacts in one folder, loopback only, one worker.

``mlflow server`` with its defaults starts 16 processes (four workers, the job-execution runner and its huey
consumers); one uvicorn worker and ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false`` leave two (``mlflow server`` and
its uvicorn), about 550 MB, healthy in about 12 s. For tests, benchmarks, and trying the pipeline against a server.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from leukolab.serving.launch import free_port

LEAN_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


@dataclass
class TrackingServer:
    """A running ``mlflow server``; ``stop()`` it, or use it as a context manager."""

    process: subprocess.Popen
    url: str
    root: Path

    @property
    def artifacts(self) -> Path:
        """The server's ``--artifacts-destination``: every artifact logged through it lands here."""
        return self.root / "artifacts"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to the server's process group, SIGKILL to what is left after ``timeout`` seconds."""
        atexit.unregister(self.stop)
        deadline = time.monotonic() + timeout
        _signal_group(self.process.pid, signal.SIGTERM)
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.2)
        if self.running():
            _signal_group(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def running(self) -> bool:
        """Whether any process of the server's group (``mlflow server`` and its uvicorn worker) is alive."""
        self.process.poll()  # reaps the parent once it has exited
        return _group_alive(self.process.pid)

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> TrackingServer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def start_tracking_server(root: str | os.PathLike, port: int = 0, host: str = "127.0.0.1",
                          timeout: float = 120.0) -> TrackingServer:
    """Start ``mlflow server`` with its store (``root/mlflow.db``) and artifacts (``root/artifacts``, served by the
    server: clients upload through HTTP) under ``root``; return once ``/health`` answers.

    ``port=0`` picks a free port. Its output goes to ``root/server.log``. Raises ``RuntimeError`` with the log's
    tail when the server exits early, ``TimeoutError`` after ``timeout`` seconds (the server is stopped either way).
    """
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    command = [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
               "--serve-artifacts", "--artifacts-destination", str(root / "artifacts")]
    with open(root / "server.log", "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=root,
                                   env={**os.environ, **LEAN_ENV}, start_new_session=True)
    server = TrackingServer(process, f"http://{host}:{port}", root)
    atexit.register(server.stop)
    deadline = time.monotonic() + timeout
    while not _healthy(server.url):
        if process.poll() is not None:
            error, problem = RuntimeError, f"exited with code {process.returncode}"
        elif time.monotonic() > deadline:
            error, problem = TimeoutError, f"was not healthy after {timeout:.0f} s"
        else:
            time.sleep(0.3)
            continue
        server.stop()
        raise error(f"mlflow server {problem}; the end of its log {server.log_path}:\n{server.log_tail()}")
    return server


def _healthy(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # a local server: no proxy
    try:
        with opener.open(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    """Whether a process other than a zombie is in group ``pgid`` (Linux ``/proc``)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False
