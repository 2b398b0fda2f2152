"""The options of ``leukolab serve`` and ``python -m leukolab.serving``, defined once for both."""

from __future__ import annotations

import argparse

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """``--host``, ``--port`` and ``--model-uri``; the URI's default is left to ``ServingSettings.from_env``."""
    parser.add_argument("--host", default=DEFAULT_HOST, help="interface to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on (default: %(default)s)")
    parser.add_argument("--model-uri", help="MLflow model URI (default: $LEUKOLAB_MODEL_URI or models:/leukolab@champion)")
