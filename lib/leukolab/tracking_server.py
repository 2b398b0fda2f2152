"""A local MLflow tracking server, lean: SQLite store and served artifacts in one folder, loopback only, one worker.

``mlflow server`` with its defaults starts 16 processes (four workers, the job-execution runner and its huey
consumers); one uvicorn worker and ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false`` leave two (``mlflow server`` and
its uvicorn), about 550 MB, healthy in about 12 s. For tests, benchmarks, and trying the pipeline against a server.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path

from leukolab.processes.background import Background, free_port, wait_until_ready
from leukolab.tracking import LEAN_SERVER_ENV


class TrackingServer(Background):
    """A running ``mlflow server`` in a process group of its own (it and its uvicorn worker); ``stop()`` it, or use
    it as a context manager."""

    @property
    def root(self) -> Path:
        """The server's folder: its store, its artifacts, its log."""
        return self.log_path.parent

    @property
    def artifacts(self) -> Path:
        """The server's ``--artifacts-destination``: every artifact logged through it lands here."""
        return self.root / "artifacts"


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
    server = TrackingServer.start(command, root / "server.log", "mlflow server", url=f"http://{host}:{port}",
                                  env={**os.environ, **LEAN_SERVER_ENV}, cwd=root, own_group=True, grace=20.0)
    wait_until_ready(lambda: _healthy(server.url), [server], timeout, interval=0.3)
    return server


def _healthy(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # a local server: no proxy
    try:
        with opener.open(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False
