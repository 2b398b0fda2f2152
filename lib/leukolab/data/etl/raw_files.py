"""What a raw folder holds: the layouts' names, which files are images, which are not data."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

LAYOUTS = ("original_segmented", "imagefolder", "label_in_name", "cnmc", "labels_csv")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}


def walk_files(root: str | Path) -> list[str]:
    """Every file under ``root`` that is not hidden, as sorted relative POSIX paths."""
    root = str(root)
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        relative = os.path.relpath(folder, root)
        prefix = "" if relative == "." else relative.replace(os.sep, "/") + "/"
        found.extend(prefix + name for name in files if not name.startswith("."))
    return sorted(found)


def is_hidden(relative_path: str) -> bool:
    """Dot-files and dot-folders (``.DS_Store``, ``.ipynb_checkpoints``) are not data."""
    return any(part.startswith(".") for part in PurePosixPath(relative_path).parts)
