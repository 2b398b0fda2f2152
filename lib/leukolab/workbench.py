"""The researcher's browser tools, as `make lab`, `make mlflow-ui` and `make demo` (``leukolab lab``, ``mlflow-ui``,
``demo``) start them: JupyterLab on the notebooks, the MLflow UI on the workspace's tracking store, the Voila demo.
The command becomes each of them (:func:`leukolab.processes.foreground.become`); the browser tests start them in
the background (:class:`leukolab.processes.background.Background`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from leukolab.config import NOTEBOOKS_DIR
from leukolab.tracking import LEAN_SERVER_ENV, tracking_uri


def lab_command(notebook_dir: str | Path = NOTEBOOKS_DIR, ip: str = "127.0.0.1", port: int = 8888,
                open_browser: bool = True) -> list[str]:
    """JupyterLab's command line on ``notebook_dir``; ``--allow-root`` when run as root (JupyterLab refuses root
    otherwise, as in containers). The token is JupyterLab's own: ``JUPYTER_TOKEN``, else one it prints."""
    command = [sys.executable, "-m", "jupyter", "lab", f"--notebook-dir={notebook_dir}", f"--ServerApp.ip={ip}",
               f"--ServerApp.port={port}"]
    if not open_browser:
        command.append("--no-browser")
    if os.geteuid() == 0:
        command.append("--allow-root")
    return command


def mlflow_ui_command(port: int = 5000, host: str = "127.0.0.1") -> tuple[list[str], dict[str, str]]:
    """The MLflow UI's command line and environment: one web worker and no job runner (two processes)."""
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri(), "--host", host,
               "--port", str(port), "--workers", "1"]
    return command, {**os.environ, **LEAN_SERVER_ENV}


def demo_command(host: str = "127.0.0.1", port: int = 8866, model_uri: str | None = None,
                 open_browser: bool = True) -> tuple[list[str], dict[str, str]]:
    """Voila's command line for the demo notebook, and its environment (``LEUKOLAB_MODEL_URI`` when given)."""
    command = [sys.executable, "-m", "voila", str(NOTEBOOKS_DIR / "demo.ipynb"), f"--Voila.ip={host}",
               f"--port={port}"]
    if not open_browser:
        command.append("--no-browser")
    return command, {**os.environ, **({"LEUKOLAB_MODEL_URI": model_uri} if model_uri else {})}

