"""The Optuna study of a sweep, kept in the workspace (``sweeps/<study>.db``): created or resumed, trials left
running by a sweep that died failed and asked again, the summary table and the best trial as an experiment YAML."""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import re
from contextlib import contextmanager
from pathlib import Path

import optuna
import pandas as pd
import yaml
from optuna.trial import TrialState

from leukolab.config import deep_merge, load_named, workspace
from leukolab.config.errors import ConfigError
from leukolab.config.experiment import parse_experiment
from leukolab.sweep.space import as_overrides
from leukolab.sweep.trial import make_pruner, open_storage

STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
TPE_STARTUP_TRIALS = 5
"""Trials sampled at random before TPE models the results."""
SETTINGS = "leukolab.settings"
"""The study's user attribute holding what it searches (profile, experiment, stage, metric, space)."""
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def sweeps_dir() -> Path:
    return workspace() / "sweeps"


def storage_url(name: str) -> str:
    return f"sqlite:///{sweeps_dir() / name}.db"


@contextmanager
def study_lock(name: str):
    """Held while a sweep runs the study, so a second sweep of the same study stops instead of racing it."""
    if not STUDY_NAME.match(name):
        raise ConfigError(f"--study {name!r}: use letters, digits, '.', '_' and '-' (it names a file)")
    sweeps_dir().mkdir(parents=True, exist_ok=True)
    with open(sweeps_dir() / f"{name}.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"study {name!r} is being swept by another process; wait for it or choose another --study") from None
        yield


def open_study(name: str, settings: dict, seed: int) -> optuna.Study:
    """The study ``name``, created with ``settings`` or resumed when they are the same (a changed space, profile
    or experiment needs a new study); TPE seeded with ``seed``, median pruning, higher is better."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sweeps_dir().mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name=name, storage=open_storage(storage_url(name)), direction="maximize",
                                pruner=make_pruner(), load_if_exists=True)
    # Seeded afresh past the trials already asked, so a resumed study does not replay its first random draws.
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.get_trials(deepcopy=False)),
                                               n_startup_trials=TPE_STARTUP_TRIALS)
    settings = json.loads(json.dumps(settings))
    stored = study.user_attrs.get(SETTINGS)
    if stored is None:
        study.set_user_attr(SETTINGS, settings)
    elif stored != settings:
        changed = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
        raise ConfigError(f"study {name!r} ({storage_url(name)}) searched another {', '.join(changed)}: "
                          f"{ {k: stored.get(k) for k in changed} }; name a new --study to search this one")
    return study


def recover(study: optuna.Study) -> list[int]:
    """Trials still RUNNING from a sweep that died are marked failed and their parameters queued to be asked again
    (``retry_of``); returns their numbers. Only call it while holding :func:`study_lock`."""
    dead = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in dead:
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
    return [trial.number for trial in dead]


def finished_count(study: optuna.Study) -> int:
    """Trials that count towards ``--trials``: completed or pruned (failed ones do not)."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def summary_table(study: optuna.Study, metric: str) -> pd.DataFrame:
    """One row per trial asked: number, state, val metric, seconds, the searched values, its MLflow run."""
    rows, trials = [], study.get_trials(deepcopy=False)
    retries = {t.user_attrs["retry_of"]: t.number for t in trials if "retry_of" in t.user_attrs}
    for trial in trials:
        if trial.state == TrialState.WAITING:
            continue
        seconds = (trial.datetime_complete - trial.datetime_start).total_seconds() \
            if trial.datetime_complete and trial.datetime_start else None
        rows.append({"trial": trial.number, "state": trial.state.name.lower(),
                     f"val {metric}": trial.value if trial.state == TrialState.COMPLETE else None,
                     "seconds": round(seconds, 1) if seconds is not None else None,
                     **{key: _short(value) for key, value in trial.params.items()},
                     "note": _note(trial, retries), "mlflow run": trial.user_attrs.get("mlflow_run_id", "")})
    return pd.DataFrame(rows)


def write_best(study: optuna.Study, experiment: str, out: Path, metric: str, profile: str) -> tuple[Path, optuna.trial.FrozenTrial]:
    """``params/experiments/<experiment>.yaml`` with the best trial's values merged in, under a comment header naming
    the study and the val score; checked against the schema before it is written."""
    best = study.best_trial
    merged = deep_merge(load_named("experiments", experiment), as_overrides(best.params))
    parse_experiment(merged | {"name": out.stem}, str(out))
    values = ", ".join(f"{key}={value!r}" for key, value in best.params.items())
    header = (f"# Best trial {best.number} of sweep study `{study.study_name}` (profile {profile}, "
              f"{finished_count(study)} finished trials): val {metric} {best.value:.4f}.\n"
              f"# params/experiments/{experiment}.yaml with {values}\n"
              f"# Written by `leukolab sweep` on {dt.date.today().isoformat()}; a profile lists it as `{out.stem}`.\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(header + yaml.safe_dump(merged, sort_keys=False, width=1000))
    return out, best


def _short(value):
    return float(f"{value:.4g}") if isinstance(value, float) else value


def _note(trial: optuna.trial.FrozenTrial, retries: dict[int, int]) -> str:
    notes = [f"interrupted; asked again as trial {retries[trial.number]}"] if trial.number in retries else []
    if "retry_of" in trial.user_attrs:
        notes.append(f"retry of {trial.user_attrs['retry_of']}")
    if trial.state == TrialState.PRUNED:
        notes.append(f"pruned after epoch {trial.last_step}")
    if trial.user_attrs.get("error"):
        notes.append(trial.user_attrs["error"][:120])
    return "; ".join(notes)
