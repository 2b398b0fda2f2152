"""Argument types the command line shares: a bad value is an argparse error (one line, exit status 2)."""

from __future__ import annotations

import argparse
from typing import Any

from leukolab.config import parse_value


def positive_int(text: str) -> int:
    """A whole number of at least 1 (``--jobs``, ``--trials``, ``--workers`` ...)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def key_value(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` (``--param``), the value read as YAML: ``("classify.epochs", 2)``."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. classify.epochs=2), got {text!r}")
    return key.strip(), parse_value(value)
