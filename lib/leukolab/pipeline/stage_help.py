"""What each stage accepts, for ``leukolab params STAGE`` and ``leukolab run --help``: the parameters its notebook
declares (with their values there, and the library's typed default where the notebook says ``None``), and for the
experiment stages every experiment key ``STAGE.section.key`` reaches."""

from __future__ import annotations

import ast
from pathlib import Path

from leukolab.config.errors import ConfigError, unknown_key
from leukolab.config.experiment import SHORTCUTS, Experiment
from leukolab.config.pipeline import PIPELINE_FILE, PipelineSpec, load_pipeline
from leukolab.pipeline.parameters import EXPERIMENT_OVERRIDES, RUNNER_PARAMETERS, notebook_parameters, schema_rows


def stage_table(stage: str, pipeline_file: str | Path | None = None) -> str:
    """A table of ``stage``'s parameters: name, type, default, meaning."""
    pipeline_file = Path(pipeline_file or PIPELINE_FILE)
    spec = load_pipeline(pipeline_file)
    if stage not in spec.stages:
        raise ConfigError(unknown_key("leukolab params", stage, spec.stages, what="stage"))
    stage_spec = spec.stages[stage]
    schema = _typed_defaults(spec, stage)
    rows = []
    for name, declared in notebook_parameters(_notebook(pipeline_file, spec, stage)).items():
        if name in RUNNER_PARAMETERS:
            continue
        typed = schema.get(name)
        if declared.value == "None" and typed:
            rows.append((name, typed[0], typed[1], declared.comment or typed[2]))
        else:
            rows.append((name, _literal_type(declared.value), declared.value, declared.comment))
    lines = [f"stage {stage} ({stage_spec.notebook}): `--param {stage}.KEY=VALUE` (or a bare KEY for every stage "
             f"that declares it)", "", *_format(rows)]
    if stage_spec.schema_class() is Experiment:
        lines += ["", f"experiment keys, `--param {stage}.SECTION.KEY=VALUE` (into `{EXPERIMENT_OVERRIDES}`; the "
                  f"experiment YAML's value when not given):", "", *_format(schema_rows(Experiment))]
    return "\n".join(lines)


def stages_summary(pipeline_file: str | Path | None = None) -> str:
    """One line per stage: the parameters its notebook declares (for ``leukolab run --help``)."""
    pipeline_file = Path(pipeline_file or PIPELINE_FILE)
    spec = load_pipeline(pipeline_file)
    lines = []
    for stage, stage_spec in spec.stages.items():
        names = [n for n in notebook_parameters(_notebook(pipeline_file, spec, stage)) if n not in RUNNER_PARAMETERS]
        extra = ", and every experiment key as SECTION.KEY" if stage_spec.schema_class() is Experiment else ""
        lines.append(f"  {stage}: {', '.join(names)}{extra}")
    return "\n".join(lines)


def _notebook(pipeline_file: Path, spec: PipelineSpec, stage: str) -> Path:
    return pipeline_file.resolve().parent / spec.notebooks / spec.stages[stage].notebook


def _typed_defaults(spec: PipelineSpec, stage: str) -> dict[str, tuple[str, str, str]]:
    """Notebook parameter -> (type, default, meaning) from the stage's schema, or the experiment's for shortcuts."""
    schema = spec.stages[stage].schema_class()
    if schema is Experiment:
        rows = {row[0]: row[1:] for row in schema_rows(Experiment)}
        return {name: (rows[".".join(path)][0], "the experiment's", rows[".".join(path)][2])
                for name, path in SHORTCUTS.items()}
    return {row[0]: row[1:] for row in schema_rows(schema)} if schema else {}


def _literal_type(source: str) -> str:
    try:
        value = ast.literal_eval(source)
    except (ValueError, SyntaxError):
        return "expression"
    return "any" if value is None else type(value).__name__


def _format(rows: list[tuple]) -> list[str]:
    widths = [max(len(str(row[i])) for row in rows) for i in range(3)] if rows else [0, 0, 0]
    return [f"  {row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}".rstrip() for row in rows]
