"""One log format for the command line, the API server and the notebooks."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: int = logging.INFO, force: bool = False) -> None:
    """INFO and above, timestamped, named by logger; ``force`` replaces handlers a notebook kernel already has."""
    logging.basicConfig(level=level, format=FORMAT, datefmt="%H:%M:%S", force=force)
