"""Raw dataset layouts: which files are images, which are masks, and their classes.

``original_segmented``: ``<root>/Original/<class>/*`` with optional masks or
segmented images in ``<root>/Segmented/<class>/<same stem>.*`` (Aria et al.).
``imagefolder``: ``<root>/<class>/*``. The raw folder is only ever read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

LAYOUTS = ("original_segmented", "imagefolder")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}


@dataclass(frozen=True)
class SourceFile:
    """Where a raw file sits in its layout."""

    relative_path: str
    role: str  # "original", "mask", or "ignored"
    class_name: str
    stem: str


def detect_layout(root: str | Path) -> str:
    """``original_segmented`` when ``<root>/Original`` exists, else ``imagefolder``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"raw data folder not found: {root}")
    return "original_segmented" if (root / "Original").is_dir() else "imagefolder"


def classify_path(relative_path: str, layout: str) -> SourceFile:
    """Role, class and stem of a file given its path relative to the raw root."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
    parts = PurePosixPath(relative_path).parts
    stem = PurePosixPath(relative_path).stem
    if layout == "original_segmented":
        if len(parts) == 3 and parts[0] in ("Original", "Segmented"):
            return SourceFile(relative_path, "original" if parts[0] == "Original" else "mask", parts[1], stem)
    elif len(parts) == 2:
        return SourceFile(relative_path, "original", parts[0], stem)
    return SourceFile(relative_path, "ignored", "", stem)


def is_hidden(relative_path: str) -> bool:
    """Dot-files and dot-folders (``.DS_Store``, ``.ipynb_checkpoints``) are not data."""
    return any(part.startswith(".") for part in PurePosixPath(relative_path).parts)
