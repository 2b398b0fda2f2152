"""The files a ``leukolab predict`` call scores: files as given, folders walked for the ETL's image extensions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from leukolab.data.etl.raw_files import IMAGE_SUFFIXES, walk_files


@dataclass(frozen=True)
class ScoreItem:
    """One file to score: its ``path`` (as the caller named it, joined with its place under a folder) and ``name``,
    the path relative to the folder it was found in (the file's name when given alone), unique among the items."""

    path: str
    name: str


def collect(paths: list[str | Path]) -> list[ScoreItem]:
    """Every file of ``paths`` in order: a file as it is (whatever its extension), a folder's non-hidden files with
    an image extension the ETL reads (:data:`~leukolab.data.etl.raw_files.IMAGE_SUFFIXES`), recursively and sorted.
    A ``FileNotFoundError`` for a path that does not exist."""
    found: list[tuple[str, str]] = []
    for given in map(Path, paths):
        if given.is_dir():
            found.extend((str(given / relative), relative) for relative in walk_files(given)
                         if PurePosixPath(relative).suffix.lower() in IMAGE_SUFFIXES)
        elif given.exists():
            found.append((str(given), given.name))
        else:
            raise FileNotFoundError(f"no such file or folder: {given}")
    return [ScoreItem(path, name) for path, name in zip((p for p, _ in found), _unique([n for _, n in found]))]


def _unique(names: list[str]) -> list[str]:
    """``names`` with a repeated one numbered (``x.jpg``, ``x-2.jpg``), so outputs named after them never collide."""
    seen: set[str] = set()
    unique = []
    for name in names:
        candidate, n = name, 1
        while candidate in seen:
            n += 1
            stem = PurePosixPath(name)
            candidate = str(stem.with_name(f"{stem.stem}-{n}{stem.suffix}"))
        seen.add(candidate)
        unique.append(candidate)
    return unique
