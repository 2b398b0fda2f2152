"""A sweep: the profile's ETL run (or reused) by the pipeline runner, then trials of one experiment stage notebook
under papermill, up to ``jobs`` at a time, all under one MLflow parent run; the best trial becomes a new experiment.

Each trial is the stage's notebook (``20_classify`` or ``10_segment``) as the profile would run it, with the trial's
values in its ``overrides``; its MLflow run is a child of the sweep's. The objective is the validation figure the
champion selection uses (``champion_metric`` or ``segmenter_metric`` of the evaluate stage, on ``val``); test
chooses nothing.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from mlflow.entities import Param
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from optuna.trial import TrialState

from leukolab.config import PARAMS_DIR, deep_merge, load_named, workspace_path
from leukolab.config.errors import ConfigError
from leukolab.config.experiment import SHORTCUTS, Experiment, load_experiment, stage_experiment
from leukolab.pipeline.execute import Executor
from leukolab.pipeline.graph import Plan, Task, plan
from leukolab.pipeline.parameters import EXPERIMENT_OVERRIDES, notebook_parameters
from leukolab.pipeline.parameters import threads_per_job
from leukolab.pipeline.runner import run_pipeline
from leukolab.stages.records import ExperimentRecord, resolve_dataset
from leukolab.sweep.space import Dimension, as_overrides, check_values, default_space, read_space
from leukolab.sweep.study import finished_count, open_study, recover, storage_url, study_lock, summary_table, sweeps_dir, write_best
from leukolab.sweep.trial import PRUNED_AT
from leukolab.tracking import EXPERIMENT_NAME, configure, git_tags

log = logging.getLogger(__name__)
OBJECTIVE = {"classify": "champion_metric", "segment": "segmenter_metric"}
"""The evaluate stage's parameter that names the metric each experiment stage is judged by."""


@dataclass
class SweepPlan:
    """What a sweep searches, checked before anything runs."""

    study: str
    profile: str
    experiment: Experiment  # as the profile trains it (its shortcuts and overrides applied)
    task: Task  # the stage task a trial runs, as the profile would run it
    space: dict[str, Dimension]
    metric: str  # a val metric, e.g. macro_f1
    plan: Plan
    overrides: dict = field(default_factory=dict)

    def settings(self) -> dict:
        """What the study searches; a resumed study must have the same."""
        return {"profile": self.profile, "overrides": self.overrides, "experiment": self.experiment.name,
                "stage": self.task.stage, "metric": self.metric, "space": {k: d.as_dict() for k, d in self.space.items()}}


def plan_sweep(profile: str, experiment: str, overrides: dict | None = None, pipeline_file=None,
               space_file: str | None = None, stage: str | None = None, study: str | None = None) -> SweepPlan:
    """Resolve and check a sweep: the profile's stage task for ``experiment``, the space, the objective."""
    overrides = overrides or {}
    the_plan = plan(profile, overrides, pipeline_file)
    stage = stage or ("segment" if load_experiment(experiment).task == "segmentation" else "classify")
    template = next((t for t in the_plan.tasks if t.stage == stage), None)
    if template is None:
        raise ConfigError(f"profile {profile} trains no {stage!r} experiments, so its {stage} parameters are unknown; "
                          "sweep a profile that does")
    declared = notebook_parameters(template.notebook)
    parameters = {**template.parameters, "experiment": experiment}
    shortcuts = {k: parameters.get(k) for k in SHORTCUTS if k in declared}
    base = parameters.get(EXPERIMENT_OVERRIDES) or {}
    resolved = stage_experiment(experiment, base, **shortcuts)
    space = read_space(space_file) if space_file else default_space(resolved)
    check_values(space, deep_merge(load_named("experiments", experiment), base), space_file or "the default space")
    task = Task(stage, f"{stage}-{experiment}", template.notebook, parameters, template.after, template.deps, template.timeout)
    name = study or f"{experiment}-{Path(profile).stem}"
    return SweepPlan(name, profile, resolved, task, space, _objective(the_plan, stage), the_plan, overrides)


def _objective(the_plan: Plan, stage: str) -> str:
    """The metric the evaluate stage chooses by for ``stage``'s experiments, which must choose on ``val``."""
    evaluate = next((t for t in the_plan.tasks if t.stage == "evaluate"), None)
    if evaluate is None:
        return "dice" if stage == "segment" else "macro_f1"
    declared = notebook_parameters(evaluate.notebook)

    def value(name: str):
        return evaluate.parameters[name] if name in evaluate.parameters else ast.literal_eval(declared[name].value)

    if value("selection_split") != "val":
        raise ConfigError(f"the evaluate stage selects on {value('selection_split')!r}; a sweep scores trials on val")
    return value(OBJECTIVE[stage])


class Sweep:
    """Runs the trials of one study until ``trials`` of them finished (completed or pruned)."""

    def __init__(self, sweep_plan: SweepPlan, trials: int, jobs: int, dataset_dir: Path, etl_run: str | None):
        self.plan, self.trials, self.jobs, self.dataset_dir = sweep_plan, trials, max(1, jobs), dataset_dir
        self.folder = sweeps_dir() / sweep_plan.study
        self.study = open_study(sweep_plan.study, sweep_plan.settings(), sweep_plan.experiment.seed)
        self.retried = recover(self.study)
        self.distributions = {key: d.distribution() for key, d in sweep_plan.space.items()}
        self.executor, self.lock, self.stop, self.interrupted = Executor(), threading.Lock(), False, False
        self.failures: list[str] = []
        self.ran: list[int] = []  # trials this sweep ran to their end
        configure()
        self.client = MlflowClient()
        self.parent_run_id = self._parent_run(etl_run)

    def run(self) -> None:
        """Ask and run trials, ``jobs`` at a time; a trial that fails stops new ones (running ones finish). Trials
        that Ctrl-C stops are left to be asked again by the next sweep of the study."""
        self.to_start = max(0, self.trials - finished_count(self.study))
        status = "FAILED"
        try:
            with ThreadPoolExecutor(self.jobs, thread_name_prefix="trial") as pool:
                futures = [pool.submit(self._worker) for _ in range(min(self.jobs, self.to_start))]
                try:
                    wait(futures)
                except KeyboardInterrupt:
                    self.interrupted = True
                    self.executor.kill_all()
                    raise
            for future in futures:
                future.result()
            status = "FAILED" if self.failures else "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            recover(self.study)
            self._close(status)

    def _worker(self) -> None:
        while True:
            with self.lock:
                if self.stop or self.interrupted or self.to_start <= 0:
                    return
                self.to_start -= 1
                trial = self.study.ask(self.distributions)
            self._run_trial(trial)

    def _run_trial(self, trial: optuna.Trial) -> None:
        folder = self.folder / f"trial-{trial.number:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        task = self.plan.task
        name = f"sweep-{self.plan.study}-trial-{trial.number}"
        env = {**os.environ, "LEUKOLAB_TASK": name}
        if self.jobs > 1:
            env.update(dict.fromkeys(("OMP_NUM_THREADS", "MKL_NUM_THREADS"), str(threads_per_job(self.jobs))))
        notebook = folder / task.notebook.name
        log.info("trial %d: %s", trial.number, trial.params)
        outcome = self.executor.run(task.notebook, notebook, self._parameters(trial, folder), env, task.timeout)
        output = folder / f"{task.name}.json"
        result = ExperimentRecord.read(folder, task.name) if outcome.status == "done" and output.is_file() else None
        runs = self.client.search_runs([self._experiment_id()], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{self.parent_run_id}' "
                                                               f"and tags.`leukolab.task` = '{name}'")
        run_id = (result and result.mlflow_run_id) or (runs[0].info.run_id if runs else None)
        if self.interrupted:  # left running, for the next sweep of the study to ask again
            if run_id:
                self.client.set_terminated(run_id, "KILLED")
            return
        self.ran.append(trial.number)
        value = result.val_metrics.get(self.plan.metric) if result else None
        pruned = PRUNED_AT in self._frozen(trial.number).user_attrs
        state = TrialState.COMPLETE if value is not None else TrialState.PRUNED if pruned else TrialState.FAIL
        error = None if state != TrialState.FAIL else \
            f"trial {trial.number} {outcome.error or f'wrote no val {self.plan.metric}'}; executed notebook: {notebook}"
        with self.lock:
            trial.set_user_attr("mlflow_run_id", run_id or "")
            if error:
                trial.set_user_attr("error", error)
                self.failures.append(error)
                self.stop = True
            self.study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
        if run_id:
            self._tag_trial_run(run_id, trial, state, value, error)

    def _parameters(self, trial: optuna.Trial, folder: Path) -> dict:
        """The stage's parameters as the profile gives them, the trial's values in ``overrides`` (a shortcut such as
        ``epochs`` that would overrule a searched key is left out), this trial's folder and study."""
        task, declared = self.plan.task, notebook_parameters(self.plan.task.notebook)
        searched = {tuple(key.split(".")) for key in trial.params}
        parameters = {k: v for k, v in task.parameters.items() if not (k in SHORTCUTS and SHORTCUTS[k] in searched)}
        parameters.update({
            "run_dir": str(folder), "parent_run_id": self.parent_run_id, "dataset_dir": str(self.dataset_dir),
            EXPERIMENT_OVERRIDES: deep_merge(parameters.get(EXPERIMENT_OVERRIDES) or {}, as_overrides(trial.params)),
            "sweep_trial": {"storage": storage_url(self.plan.study), "study": self.plan.study,
                            "trial_id": trial._trial_id, "metric": f"val_{self.plan.metric}"}})
        return {k: v for k, v in parameters.items() if k in declared}

    def _frozen(self, number: int) -> optuna.trial.FrozenTrial:
        return next(t for t in self.study.get_trials(deepcopy=False) if t.number == number)

    def _experiment_id(self) -> str:
        return self.client.get_experiment_by_name(EXPERIMENT_NAME).experiment_id

    def _parent_run(self, etl_run: str | None) -> str:
        """The sweep's MLflow run: created with the study, reopened when it resumes."""
        known = self.study.user_attrs.get("mlflow_parent_run_id")
        if known:
            self.client.update_run(known, status="RUNNING")
            return known
        settings = self.plan.settings()
        run = self.client.create_run(self._experiment_id(), run_name=f"sweep {self.plan.study}", tags={
            "leukolab.sweep": self.plan.study, "leukolab.profile": self.plan.profile, **git_tags()})
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in {
            "experiment": settings["experiment"], "stage": settings["stage"], "objective": f"val_{self.plan.metric}",
            "space": json.dumps(settings["space"]), "storage": storage_url(self.plan.study)}.items()])
        self.study.set_user_attr("mlflow_parent_run_id", run.info.run_id)
        if etl_run:
            self.client.set_tag(run.info.run_id, "leukolab.etl_run", etl_run)
        return run.info.run_id

    def _tag_trial_run(self, run_id: str, trial: optuna.Trial, state: TrialState, value, error: str | None) -> None:
        run = self.client.get_run(run_id)
        self.client.update_run(run_id, name=f"{self.plan.experiment.name} trial {trial.number}")
        self.client.set_tag(run_id, "leukolab.sweep.trial", str(trial.number))
        self.client.set_tag(run_id, "leukolab.sweep.state", state.name.lower())
        self.client.set_tag(run_id, "leukolab.sweep.params", json.dumps(trial.params))
        if value is not None:
            self.client.log_metric(run_id, "sweep_objective", value)
        if error:
            self.client.set_tag(run_id, "leukolab.error", error[:5000])
        if state != TrialState.COMPLETE and run.info.status != ("KILLED" if state == TrialState.PRUNED else "FAILED"):
            self.client.set_terminated(run_id, "KILLED" if state == TrialState.PRUNED else "FAILED")

    def _close(self, status: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / "trials.csv"
        summary_table(self.study, self.plan.metric).to_csv(path, index=False)
        self.client.log_artifact(self.parent_run_id, str(path), "sweep")
        self.client.set_tag(self.parent_run_id, "leukolab.sweep.trials", str(finished_count(self.study)))
        completed = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if completed:
            best = self.study.best_trial
            self.client.log_metric(self.parent_run_id, f"best_val_{self.plan.metric}", best.value, step=len(completed))
            self.client.set_tag(self.parent_run_id, "leukolab.sweep.best_trial", str(best.number))
        self.client.set_terminated(self.parent_run_id, status)


def run_sweep(sweep_plan: SweepPlan, trials: int, jobs: int = 1, out: str | Path | None = None) -> dict:
    """Run the ETL (reused when up to date), then the study's trials; write the best trial's experiment YAML
    (default ``params/experiments/<experiment>-best.yaml``). Returns the summary table, the best YAML and
    the failures."""
    with study_lock(sweep_plan.study):
        the_plan, after = sweep_plan.plan, sweep_plan.task.after
        needed = [t.name for t in the_plan.tasks if t.name in set(after) | the_plan.upstream(after)]
        etl = run_pipeline(sweep_plan.profile, sweep_plan.overrides, until=needed[-1],
                           pipeline_file=the_plan.pipeline_file) if needed else None
        dataset = resolve_dataset(sweep_plan.task.parameters.get("dataset_dir"), etl["run_dir"] if etl else ".")
        sweep = Sweep(sweep_plan, trials, jobs, dataset, etl["run_id"] if etl else None)
        started = time.perf_counter()
        sweep.run()
        seconds = time.perf_counter() - started
        best = None
        if sweep.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            out = workspace_path(out) if out else PARAMS_DIR / "experiments" / f"{sweep_plan.experiment.name}-best.yaml"
            best = write_best(sweep.study, sweep_plan.experiment.name, out, sweep_plan.metric, sweep_plan.profile)
            sweep.client.log_artifact(sweep.parent_run_id, str(out), "sweep")
        return {"table": summary_table(sweep.study, sweep_plan.metric), "best": best, "failures": sweep.failures,
                "retried": sweep.retried, "ran": sweep.ran, "seconds": seconds, "parent_run_id": sweep.parent_run_id,
                "storage": storage_url(sweep_plan.study)}
