"""Run the API: in the foreground for the command line, or as a background process for notebooks and tests.

A background server ends with the process that started it, however that one ends (SIGKILL included): the server
follows its launcher with :func:`leukolab.lifeline.follow_parent` (a watchdog thread on its parent pid, and
``PR_SET_PDEATHSIG`` when launched from the main thread; that module says why both) and shuts down as on
SIGTERM, exiting at the latest 10 s later. So a notebook's server dies with its kernel, and the kernel with the
pipeline run that executes it.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import httpx

from leukolab.lifeline import child_environment, follow_parent, terminate_self
from leukolab.logs import configure_logging
from leukolab.serving.options import DEFAULT_HOST, DEFAULT_PORT


@dataclass
class ServerHandle:
    """A background API server; ``stop()`` it, or use it as a context manager."""

    process: subprocess.Popen
    url: str
    log_path: Path

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if the server has not exited after ``timeout`` seconds."""
        atexit.unregister(self.stop)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server's log."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def start_server(model_uri: str | None = None, port: int = 0, host: str = DEFAULT_HOST,
                 log_path: str | os.PathLike | None = None, timeout: float = 120.0,
                 model_poll_seconds: float | None = None) -> ServerHandle:
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
    env = child_environment({**os.environ, "PYTHONUNBUFFERED": "1"})
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = ServerHandle(process, _url(host, port), log_path)
    atexit.register(server.stop)
    _wait_until_ready(server, model_uri, timeout)
    return server


def serve_forever(model_uri: str | None = None, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                  model_poll_seconds: float | None = None, insecure: bool = False) -> None:
    """Serve the API in the foreground until interrupted (``leukolab serve``), or until the process that launched it
    with :func:`start_server` is gone; on SIGTERM it drains first (:mod:`leukolab.serving.drain`) and exits 0.

    Bound to an address other than loopback it needs ``LEUKOLAB_API_TOKEN`` or ``insecure``
    (:func:`~leukolab.serving.auth.check_exposure`).

    Unless ``LEUKOLAB_TORCH_THREADS`` says otherwise, each inference worker gets an equal share of the cores for
    its forward passes: on a small machine, two one-thread passes side by side beat one two-thread pass, whose
    threads spin while the event loop and the decoders hold the cores.
    """
    from leukolab.serving.auth import TOKEN_VARIABLE, check_exposure

    check_exposure(host, os.environ.get(TOKEN_VARIABLE, ""), insecure)  # before the slow imports: fail fast
    configure_logging()
    follow_parent(terminate_self)
    import uvicorn

    from leukolab.serving.app import create_app
    from leukolab.serving.drain import DrainingServer
    from leukolab.serving.settings import ServingSettings

    settings = ServingSettings.from_env()
    if model_poll_seconds is not None:
        settings = replace(settings, model_poll_seconds=model_poll_seconds)
    if not settings.torch_threads:
        settings = replace(settings, torch_threads=max(1, (os.cpu_count() or 1) // settings.inference_workers))
    app = create_app(model_uri, settings)
    # What is left after the drain: answers being written, idle keep-alive connections closing.
    config = uvicorn.Config(app, host=host, port=port, timeout_graceful_shutdown=2)
    DrainingServer(config, app.state.admission, settings.drain_seconds).run()


def _wait_until_ready(server: ServerHandle, model_uri: str | None, timeout: float) -> None:
    """Poll ``/ready``; stop the server and raise, with its log's tail, when it dies, fails or times out."""
    deadline = time.monotonic() + timeout
    while (state := _readiness(server.url)) != "ready":
        if server.process.poll() is not None:
            error, problem = RuntimeError, f"the API server exited with code {server.process.returncode} before it was ready"
        elif state == "load_failed":
            error, problem = RuntimeError, f"the API server could not load the model {model_uri or '(its default)'}"
        elif time.monotonic() > deadline:
            error, problem = TimeoutError, f"the API server was not ready after {timeout:.0f} s"
        else:
            time.sleep(0.2)
            continue
        server.stop()
        raise error(f"{problem}; the end of its log {server.log_path}:\n{server.log_tail()}")


def _url(host: str, port: int) -> str:
    """The URL a local client reaches ``host:port`` at (``0.0.0.0`` is reached on 127.0.0.1)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def free_port(host: str = DEFAULT_HOST) -> int:
    """A port that nothing listens on at ``host`` right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _readiness(url: str) -> str | None:
    """``ready``, the server's refusal reason (``loading``, ``load_failed``), or None when it does not answer."""
    try:
        response = httpx.get(f"{url}/ready", timeout=2.0, trust_env=False)  # no proxy for a local server
    except httpx.HTTPError:
        return None
    if response.status_code == 200:
        return "ready"
    try:
        return response.json().get("reason")
    except ValueError:
        return None
