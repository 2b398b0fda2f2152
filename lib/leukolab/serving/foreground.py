"""Serve the API in the foreground: the command line's ``leukolab serve`` and the API image's entrypoint.

Imports only what the API image installs (``docker/requirements-api.txt``); starting a server in the background is
:mod:`.launch`'s job.
"""

from __future__ import annotations

import os
from dataclasses import replace

from leukolab.logs import configure_logging
from leukolab.processes.lifeline import follow_parent, terminate_self
from leukolab.serving.options import DEFAULT_HOST, DEFAULT_PORT


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
