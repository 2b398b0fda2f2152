"""leukolab: a notebook-driven research workspace for ALL detection in blood smears."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("leukolab")
except PackageNotFoundError:  # imported from a source tree that was not installed
    __version__ = "0.0.0+source"

CLASS_NAMES = ("Benign", "Early", "Pre", "Pro")
"""Classes of the public ALL dataset (Aria et al.): benign hematogones and three B-ALL subtypes."""
