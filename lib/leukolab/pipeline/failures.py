"""Failures from outside a stage, named: a full filesystem, a tracking server that does not answer.

What a stage raises on a full disk may not say so (SQLite: "database or disk is full"; torch: "unexpected pos"), and
the runner's own writes and MLflow calls fail the same way. The runner adds what it finds here to a failed stage's
message and turns its own such failure into one, so the message says what to fix before ``--resume``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from leukolab.config import workspace
from leukolab.disk import full_filesystems
from leukolab.tracking import is_remote, probe_server, tracking_uri


def storage_folders(run_dir: Path) -> list[Path]:
    """Where a run writes: the workspace (data, checkpoints, ``mlartifacts/``), the run's folder, the SQLite store's
    folder, the temporary folder (models are staged there before they are logged)."""
    folders = [workspace(), run_dir, Path(tempfile.gettempdir())]
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        folders.append(Path(uri.removeprefix("sqlite:///")).parent)
    return folders


def server_down() -> str | None:
    """``the MLflow tracking server <uri> does not answer`` when the run tracks to a server that does not, else None."""
    uri = tracking_uri()
    if not is_remote(uri):
        return None
    try:
        probe_server(uri)
    except ConnectionError:
        return f"the MLflow tracking server {uri} does not answer"
    return None


def outside_causes(run_dir: Path, down: str | None = None) -> str:
    """``; <cause>`` for each full filesystem a run writes to, and ``down`` (:func:`server_down`), for a message."""
    return "".join(f"; {cause}" for cause in full_filesystems(storage_folders(run_dir)) + ([down] if down else []))


def runner_failure(error: Exception, lineage: dict) -> str:
    """The message of the runner's own failed write (an ``OSError`` naming its file) or MLflow call, after the
    errors of the run's failed tasks (``lineage`` as the runner holds it: maybe newer than the file)."""
    if isinstance(error, OSError) and error.filename:
        what = f"could not write {error.filename} ({error.strerror})"
    else:
        what = f"failed: {type(error).__name__}: {str(error)[:1000]}"
    failed = [task["error"] for task in lineage["tasks"].values() if task.get("error")]
    return "\n".join(failed + [f"the pipeline runner {what}{outside_causes(Path(lineage['run_dir']), server_down())}; "
                                f"once that is fixed, `leukolab run --resume {lineage['run_id']}` continues"])
