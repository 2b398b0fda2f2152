"""The options of ``leukolab serve`` and ``python -m leukolab.serving``, defined once for both."""

from __future__ import annotations

import argparse

from leukolab.predictor import DEFAULT_MODEL_URI

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """``--host``, ``--port``, ``--model-uri``, ``--insecure`` and ``--model-poll-seconds``; the defaults of the last two are left to
    ``ServingSettings.from_env``."""
    parser.add_argument("--host", default=DEFAULT_HOST, help="interface to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on (default: %(default)s)")
    parser.add_argument("--model-uri", help=f"MLflow model URI (default: $LEUKOLAB_MODEL_URI or {DEFAULT_MODEL_URI})")
    parser.add_argument("--insecure", action="store_true", help="serve on an address other than loopback without "
                        "LEUKOLAB_API_TOKEN (only behind something that already authenticates)")
    parser.add_argument("--model-poll-seconds", type=float, help="follow an alias URI to its new version every this "
                        "many seconds, 0: never (default: $LEUKOLAB_MODEL_POLL_SECONDS or 30)")
