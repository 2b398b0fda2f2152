"""The files stages hand results on through: a small JSON per stage in the pipeline run's folder.

The stages of the pipeline write and read them through their records (:mod:`leukolab.stages.records`); these
functions are the files under them, for any notebook a pipeline file names."""

from __future__ import annotations

import json
from pathlib import Path

from leukolab.config import workspace, workspace_path


def run_folder(run_dir: str | Path) -> Path:
    """The pipeline run's folder (relative paths are in the workspace), created if missing."""
    folder = workspace_path(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_output(run_dir: str | Path, stage: str, payload: dict) -> Path:
    """Write ``<run_dir>/<stage>.json``; ``stage`` names one stage instance (e.g. ``classify-simple-cnn``)."""
    path = run_folder(run_dir) / f"{stage}.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    return path


def read_output(run_dir: str | Path, stage: str) -> dict:
    """Read one stage's output, saying which stage to run first when it is missing."""
    path = workspace_path(run_dir) / f"{stage}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the {stage.split('-')[0]!r} stage for this run_dir first")
    return json.loads(path.read_text())


def read_outputs(run_dir: str | Path, prefix: str) -> dict[str, dict]:
    """All outputs whose stage name starts with ``prefix`` (the experiment fan-out), by stage name."""
    folder = workspace_path(run_dir)
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob(f"{prefix}*.json"))}


def latest_run_with(stage: str, default: str | Path = "runs/interactive") -> Path:
    """The newest run folder in the workspace holding ``stage``'s output (by modification time), else ``default``."""
    outputs = sorted((workspace() / "runs").glob(f"*/{stage}.json"), key=lambda path: path.stat().st_mtime)
    return outputs[-1].parent if outputs else workspace_path(default)
