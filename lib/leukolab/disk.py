"""Files written whole, and a full disk named.

A file written with :func:`write_whole` is the old one or the new one after a crash or a full disk, never half of
either, and a failed write leaves no scratch file to fill the disk further. :func:`full_filesystems` says which of
some folders sit on a filesystem that is (nearly) full: the pipeline runner adds it to a failed stage's message,
since what the stage raised may not say (SQLite: "database or disk is full"; torch: "unexpected pos").
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

LOW_BYTES = 64 * 1024**2
"""Free space below which a filesystem counts as full, when it is also below :data:`LOW_FRACTION` of its size."""
LOW_FRACTION = 0.1


def write_whole(path: str | os.PathLike, data: bytes | str) -> None:
    """``data`` at ``path`` or nothing: a temporary file in the same folder, flushed to disk, then renamed into place.

    Raises ``OSError`` naming ``path`` when it cannot be written (a full disk: ``ENOSPC``); the scratch file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode() if isinstance(data, str) else data
    descriptor, scratch = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.partial-")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(payload)
            file.flush()
            os.fsync(file.fileno())
        os.replace(scratch, path)
    except OSError as error:
        Path(scratch).unlink(missing_ok=True)
        raise OSError(error.errno, error.strerror, str(path)) from error
    except BaseException:
        Path(scratch).unlink(missing_ok=True)
        raise


def is_no_space(error: BaseException) -> bool:
    """Whether ``error`` is a full disk or an exhausted quota."""
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def full_filesystems(folders: list[str | os.PathLike]) -> list[str]:
    """``the filesystem of <folder> is full (<free> free of <size>)`` for each filesystem among ``folders`` (each
    named by the first folder on it) with less than :data:`LOW_BYTES` and :data:`LOW_FRACTION` of it free."""
    found, seen = [], set()
    for folder in folders:
        existing = Path(folder)
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        try:
            device, stats = existing.stat().st_dev, os.statvfs(existing)
        except OSError:
            continue
        if device in seen:
            continue
        seen.add(device)
        free, size = stats.f_bavail * stats.f_frsize, stats.f_blocks * stats.f_frsize
        if free < LOW_BYTES and free < LOW_FRACTION * size:
            found.append(f"the filesystem of {folder} is full ({_size(free)} free of {_size(size)})")
    return found


def _size(count: int) -> str:
    value, unit = float(count), "bytes"
    for larger in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, larger
    return f"{value:.1f} {unit}"
