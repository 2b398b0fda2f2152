"""A command in the foreground, as ``leukolab lab``, ``mlflow-ui`` and ``demo`` run theirs: this process becomes it."""

from __future__ import annotations

import os
import sys
from typing import NoReturn


def become(command: list[str], env: dict[str, str] | None = None) -> NoReturn:
    """Become ``command`` (no extra process stays behind to forward signals)."""
    sys.stdout.flush()
    os.execve(command[0], command, os.environ if env is None else env)
