"""Stage parameters: what each notebook declares, and every profile parameter and override checked against it.

A bare ``KEY`` reaches every stage whose notebook declares it; ``STAGE.KEY`` one stage. In a stage that trains
experiments (its ``schema`` is the experiment's), a key the notebook does not declare but the experiment schema has
(``training``, ``augmentation.mixup`` ...) goes into the notebook's ``overrides`` mapping, merged into each experiment. Anything
else is a typo: the run stops before any stage starts, with the key and its closest valid spellings.
"""

from __future__ import annotations

import ast
import datetime as dt
import io
import json
import os
import tokenize
import uuid
from dataclasses import dataclass
from pathlib import Path

from leukolab.config import deep_merge, nested
from leukolab.config.errors import ConfigError, nested_model, unknown_key
from leukolab.config.experiment import Experiment

RUNNER_PARAMETERS = ("run_dir", "parent_run_id")
"""Parameters the runner injects into every stage; they differ per run, so they are not part of a stage's key."""
EXPERIMENT_OVERRIDES = "overrides"
"""The parameter of a fan-out stage's notebook that takes experiment keys."""


@dataclass(frozen=True)
class Declared:
    """One assignment of a notebook's ``parameters`` cell: its name, its value as written, its trailing comment."""

    name: str
    value: str
    comment: str


def notebook_parameters(path: str | Path) -> dict[str, Declared]:
    """What the notebook's ``parameters`` cell assigns (what papermill can inject), in order.

    Read with ``ast`` rather than ``papermill.inspect_notebook``: importing papermill (nbformat, jsonschema)
    takes seconds, which a run where every stage is up to date cannot afford.
    """
    cells = json.loads(Path(path).read_text())["cells"]
    cell = next((c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    if cell is None:
        return {}
    source = "".join(cell["source"])
    comments = {token.start[0]: token.string.lstrip("# ") for token in tokenize.generate_tokens(io.StringIO(source).readline)
                if token.type == tokenize.COMMENT}
    found = {}
    for node in ast.parse(source).body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if isinstance(target, ast.Name):
                    found[target.id] = Declared(target.id, ast.get_source_segment(source, node.value),
                                                comments.get(node.end_lineno, ""))
    return found


def split_overrides(overrides: dict, stages: list[str]) -> tuple[dict, dict[str, dict]]:
    """``--param`` items as (bare keys, per stage ``{key: value}``, nested where the key has more dots)."""
    shared, per_stage = {}, {}
    for key, value in overrides.items():
        stage, dot, rest = key.partition(".")
        if not dot:
            shared[key] = value
            continue
        if stage not in stages:
            raise ConfigError(unknown_key(f"--param {key}", stage, stages, what="stage"))
        per_stage[stage] = deep_merge(per_stage.get(stage, {}), nested(rest.split("."), value))
    return shared, per_stage


def check_shared(shared: dict, declared: dict[str, dict[str, Declared]], where: str) -> None:
    """Every bare key must be declared by at least one stage's notebook."""
    known = set().union(*declared.values()) - set(RUNNER_PARAMETERS) if declared else set()
    for key in shared:
        if key in RUNNER_PARAMETERS:
            raise ConfigError(f"{where}: `{key}` is set by the runner for every run; it cannot be given")
        if key not in known:
            raise ConfigError(unknown_key(where, key, known) + " (`leukolab params STAGE` lists each stage's)")


def stage_parameters(stage: str, values: dict, declared: dict[str, Declared], trains: bool, where: str) -> dict:
    """``values`` for one stage: declared keys as they are; for a stage that ``trains`` experiments, experiment keys
    folded into ``overrides``."""
    params, experiment = {}, {}
    for key, value in values.items():
        if key in declared and key not in RUNNER_PARAMETERS:
            params[key] = value
        elif trains and key in Experiment.model_fields and EXPERIMENT_OVERRIDES in declared:
            experiment[key] = value
        else:
            choices = set(declared) - set(RUNNER_PARAMETERS) | (set(Experiment.model_fields) if trains else set())
            raise ConfigError(unknown_key(f"{where} (stage {stage})", key, choices))
    if experiment:
        params[EXPERIMENT_OVERRIDES] = deep_merge(params.get(EXPERIMENT_OVERRIDES) or {}, experiment)
    return params


def schema_rows(schema, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """Every leaf field of a pydantic ``schema`` as (dotted name, type, default, description), for ``leukolab params``."""
    rows = []
    for name, field in schema.model_fields.items():
        nested = nested_model(field.annotation)
        if nested is not None and nested is not schema:
            rows.extend(schema_rows(nested, f"{prefix}{name}."))
        else:
            default = "required" if field.is_required() else repr(field.get_default(call_default_factory=True))
            rows.append((prefix + name, _type_name(field.annotation), default, field.description or ""))
    return rows


def _type_name(annotation) -> str:
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    return text.replace("typing.", "").replace("leukolab.config.experiment.", "")


def new_run_id() -> str:
    """A run id that sorts by its UTC start time: ``YYYYMMDD-HHMMSS-`` and six random hex digits."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def threads_per_job(jobs: int) -> int:
    """The CPU cores this process may use, shared out among ``jobs`` notebooks running at once."""
    return max(1, len(os.sched_getaffinity(0)) // jobs)
