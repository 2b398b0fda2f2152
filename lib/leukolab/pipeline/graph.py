"""The stage graph: a pipeline file (``params/pipeline.yaml``) expanded for a profile into tasks.

A *stage* is a notebook; a *task* is one execution of it: the stage itself, or
one experiment of a stage that fans out (``foreach``). A task runs after every
task of the stages its stage lists under ``after``.
"""

from __future__ import annotations

import os
import string
from dataclasses import dataclass, field
from pathlib import Path

from leukolab.config import deep_merge, workspace_path
from leukolab.config.errors import ConfigError, unknown_key
from leukolab.config.experiment import SHORTCUTS, Experiment, stage_experiment
from leukolab.config.files import from_parameters
from leukolab.config.pipeline import PIPELINE_FILE, PipelineSpec, Profile, load_pipeline, load_profile
from leukolab.pipeline.parameters import EXPERIMENT_OVERRIDES, check_shared, notebook_parameters, split_overrides, stage_parameters


@dataclass
class Task:
    """One notebook execution: a stage, or one experiment of a fanned-out stage."""

    stage: str
    name: str
    notebook: Path
    parameters: dict = field(default_factory=dict)
    after: list[str] = field(default_factory=list)
    deps: list[Path] = field(default_factory=list)
    timeout: float | None = None


@dataclass
class Plan:
    """A profile's tasks in an order that runs every task after its upstream tasks."""

    pipeline_file: Path
    profile: str
    overrides: dict
    tasks: list[Task]

    def __getitem__(self, name: str) -> Task:
        return next(t for t in self.tasks if t.name == name)

    def matching(self, name: str) -> list[str]:
        """Task names of a stage name (every experiment of a fan-out) or of a task name."""
        found = [t.name for t in self.tasks if name in (t.name, t.stage)]
        if not found:
            choices = sorted({t.stage for t in self.tasks} | {t.name for t in self.tasks})
            raise ValueError(f"no stage or task named {name!r}; choose one of {choices}")
        return found

    def upstream(self, names: list[str]) -> set[str]:
        """The tasks ``names`` depend on, directly or not (``names`` excluded)."""
        return self._closure(names, {t.name: t.after for t in self.tasks})

    def downstream(self, names: list[str]) -> set[str]:
        """The tasks that depend on ``names``, directly or not (``names`` excluded)."""
        children = {t.name: [c.name for c in self.tasks if t.name in c.after] for t in self.tasks}
        return self._closure(names, children)

    @staticmethod
    def _closure(names: list[str], edges: dict[str, list[str]]) -> set[str]:
        seen, todo = set(), list(names)
        while todo:
            for nxt in edges[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen - set(names)


def plan(profile: str, overrides: dict | None = None, pipeline_file: str | Path | None = None) -> Plan:
    """The tasks of ``profile`` with resolved parameters (``overrides``: ``key`` for every stage, ``stage.key`` for one).

    Every parameter of the profile and every override is checked first (:mod:`leukolab.pipeline.parameters`),
    and so is every experiment the tasks train: a typo stops here, before anything runs. In the pipeline file,
    ``notebooks`` (the notebooks' folder) and relative ``deps`` are relative to the file's folder; a ``deps`` entry
    that starts with a parameter (``{raw_dir}``) is a path as the notebooks read it, relative to the workspace.
    """
    pipeline_file = Path(pipeline_file or PIPELINE_FILE).resolve()
    spec, settings, overrides = load_pipeline(pipeline_file), load_profile(profile), overrides or {}
    notebooks = pipeline_file.parent / spec.notebooks
    stages = list(spec.stages)
    declared = {stage: notebook_parameters(notebooks / s.notebook) for stage, s in spec.stages.items()}
    cli_shared, cli_stages = split_overrides(overrides, stages)
    check_shared(settings.parameters, declared, f"profile {profile}: parameters")
    check_shared(cli_shared, declared, "--param")
    _check_names(settings, spec, profile)
    shared = deep_merge(settings.parameters, cli_shared)
    tasks: list[Task] = []
    for stage, stage_spec in spec.stages.items():
        schema = stage_spec.schema_class()
        trains = schema is Experiment  # its tasks train the experiments the profile lists
        params = {k: v for k, v in shared.items() if k in declared[stage]}
        for where, values in ((f"profile {profile}: stage_parameters", settings.stage_parameters.get(stage, {})),
                              ("--param", cli_stages.get(stage, {}))):
            params = deep_merge(params, stage_parameters(stage, values, declared[stage], trains, where))
        params = {k: _expand_env(k, v) for k, v in params.items()}
        if schema and not trains:
            from_parameters(schema, params, f"stage {stage}")
        after = [t.name for t in tasks if t.stage in stage_spec.after]
        instances = [(f"{stage}-{e}", {**params, "experiment": e}) for e in settings.experiments.get(stage_spec.foreach, [])] \
            if stage_spec.foreach else [(stage, params)]
        for name, task_params in instances:
            if trains:
                stage_experiment(task_params["experiment"], task_params.get(EXPERIMENT_OVERRIDES),
                                 **{k: task_params.get(k) for k in SHORTCUTS if k in declared[stage]})
            tasks.append(Task(stage, name, notebooks / stage_spec.notebook, task_params, after,
                              _deps(stage_spec.deps, task_params, pipeline_file.parent), stage_spec.timeout))
    return Plan(pipeline_file, profile, overrides, tasks)


def _check_names(settings: Profile, spec: PipelineSpec, profile: str) -> None:
    """The profile's stage names and fan-out keys exist."""
    for stage in settings.stage_parameters:
        if stage not in spec.stages:
            raise ConfigError(unknown_key(f"profile {profile}: stage_parameters", stage, spec.stages, what="stage"))
    fan_outs = {s.foreach for s in spec.stages.values() if s.foreach}
    for key in settings.experiments:
        if key not in fan_outs:
            raise ConfigError(unknown_key(f"profile {profile}: experiments", key, fan_outs, what="fan-out key"))


def _deps(entries: list[str], parameters: dict, base: Path) -> list[Path]:
    """The files and folders a task's key hashes; an entry whose parameter is unset is left out."""
    paths = []
    for entry in entries:
        fields = [name for _, name, _, _ in string.Formatter().parse(entry) if name]
        if all(parameters.get(name) is not None for name in fields):
            text = entry.format(**parameters)
            paths.append(workspace_path(text) if entry.startswith("{") else base / text)
    return paths


def _expand_env(key: str, value):
    """``${VAR}`` in a string parameter is the environment variable VAR, which must be set."""
    if not isinstance(value, str) or "$" not in value:
        return value
    expanded = os.path.expandvars(value)
    if "$" in expanded:
        raise ValueError(f"parameter {key}={value!r} names an environment variable that is not set")
    return expanded


@dataclass
class Selection:
    """Which tasks a run considers, which it must run whatever the cache says, and which it may only reuse."""

    names: list[str]
    forced: set[str]
    reuse_only: set[str]


def select(the_plan: Plan, force: list[str] = (), from_stage: str | None = None, until: str | None = None,
           only: str | None = None) -> Selection:
    """``--force`` (those tasks), ``--from`` (a stage and all that follows it), ``--until`` (a stage and all it
    needs), ``--only`` (a stage alone; what it needs must be reusable from earlier runs)."""
    if until and only:
        raise ValueError("--until and --only do not go together")
    names = {t.name for t in the_plan.tasks}
    reuse_only: set[str] = set()
    for target in (until, only):
        if target:
            targets = the_plan.matching(target)
            names = set(targets) | the_plan.upstream(targets)
    if only:
        reuse_only = names - set(the_plan.matching(only))
    forced = {n for name in force for n in the_plan.matching(name)}
    if from_stage:
        starts = the_plan.matching(from_stage)
        forced |= set(starts) | the_plan.downstream(starts)
    return Selection([t.name for t in the_plan.tasks if t.name in names], forced & (names - reuse_only), reuse_only)
