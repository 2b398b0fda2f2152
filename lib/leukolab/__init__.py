"""leukolab: a notebook-driven research workspace for ALL detection in blood smears."""

import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

try:
    __version__ = version("leukolab")
except PackageNotFoundError:  # imported from a source tree that was not installed: its pyproject.toml's version
    _pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    _found = re.search(r'^version = "([^"]+)"', _pyproject.read_text(), re.M) if _pyproject.is_file() else None
    __version__ = f"{_found[1] if _found else '0.0.0'}+source"

CLASS_NAMES = ("Benign", "Early", "Pre", "Pro")
"""Classes of the public ALL dataset (Aria et al.): benign hematogones and three B-ALL subtypes."""
