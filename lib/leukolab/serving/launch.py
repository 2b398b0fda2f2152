"""Run the API as a background process for notebooks and tests (:mod:`.foreground` serves it as a command).

A background server ends with the process that started it, however that one ends (SIGKILL included): the server
follows its launcher with :func:`leukolab.processes.lifeline.follow_parent` (a watchdog thread on its parent pid,
and ``PR_SET_PDEATHSIG`` when launched from the main thread; that module says why both) and shuts down as on
SIGTERM, exiting at the latest 10 s later. So a notebook's server dies with its kernel, and the kernel with the
pipeline run that executes it.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import httpx

from leukolab.processes.background import Background, free_port, wait_until_ready
from leukolab.serving.options import DEFAULT_HOST, DEFAULT_PORT


def start_server(model_uri: str | None = None, port: int = 0, host: str = DEFAULT_HOST,
                 log_path: str | os.PathLike | None = None, timeout: float = 120.0,
                 model_poll_seconds: float | None = None) -> Background:
    """Start ``python -m leukolab.serving`` in the background and return once ``/ready`` answers 200.

    ``port=0`` picks a free port; ``model_poll_seconds`` (default: ``$LEUKOLAB_MODEL_POLL_SECONDS`` or 30) is how
    often the server follows an alias to its new version. The server's output goes to ``log_path`` (a
    temporary file by default). Raises ``RuntimeError`` with the log's tail when
    the server exits or its model fails to load, ``TimeoutError`` after ``timeout`` seconds.
    """
    port = port or free_port(host)
    if log_path is None:
        descriptor, log_path = tempfile.mkstemp(prefix="leukolab-serve-", suffix=".log")
        os.close(descriptor)
    log_path = Path(log_path)
    command = [sys.executable, "-m", "leukolab.serving", "--host", host, "--port", str(port)]
    if model_uri:
        command += ["--model-uri", model_uri]
    if model_poll_seconds is not None:
        command += ["--model-poll-seconds", str(model_poll_seconds)]
    server = Background.start(command, log_path, "the API server", url=_url(host, port),
                              env={**os.environ, "PYTHONUNBUFFERED": "1"}, follow_parent=True)
    model = model_uri or "(its default)"
    wait_until_ready(lambda: _readiness(server.url, model), [server], timeout)
    return server


def _url(host: str, port: int) -> str:
    """The URL a local client reaches ``host:port`` at (``0.0.0.0`` is reached on 127.0.0.1)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _readiness(url: str, model: str) -> bool | str:
    """True once ``/ready`` answers 200; why it never will when the model failed to load; else False (loading, or
    no answer yet)."""
    try:
        response = httpx.get(f"{url}/ready", timeout=2.0, trust_env=False)  # no proxy for a local server
    except httpx.HTTPError:
        return False
    if response.status_code == 200:
        return True
    try:
        reason = response.json().get("reason")
    except ValueError:
        return False
    return f"could not load the model {model}" if reason == "load_failed" else False
