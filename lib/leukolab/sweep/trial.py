"""A sweep trial from inside its notebook: each epoch's validation metric goes to the Optuna study, and a trial the
pruner stops raises ``optuna.TrialPruned`` out of the training loop, so it stops training at once.

The notebook gets ``sweep_trial`` = ``{"storage", "study", "trial_id", "metric"}`` from ``leukolab sweep``; the
sweep process and every notebook build the same storage and pruner here.
"""

from __future__ import annotations

from typing import Callable

SQLITE_BUSY_SECONDS = 60
"""How long a process waits for another's write to the study's SQLite file before it gives up."""
PRUNED_AT = "pruned_at_epoch"
"""The trial's user attribute that says it was pruned, and at which epoch."""


def open_storage(url: str):
    """The study's RDB storage (SQLite in the workspace), patient with the writes of the other trial processes."""
    import optuna

    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": SQLITE_BUSY_SECONDS}})


def make_pruner():
    """Median pruning: from the third epoch on, once two trials have finished, a trial whose validation metric is
    below the median of the earlier trials' at the same epoch stops."""
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=3)


def epoch_reporter(sweep_trial: dict | None) -> Callable[[int, dict], None] | None:
    """The per-epoch callback of a sweep trial (None outside a sweep): report ``metric``, stop when pruned."""
    if not sweep_trial:
        return None
    import optuna

    study = optuna.load_study(study_name=sweep_trial["study"], storage=open_storage(sweep_trial["storage"]),
                              pruner=make_pruner())
    trial = optuna.trial.Trial(study, sweep_trial["trial_id"])
    metric = sweep_trial["metric"]

    def report(epoch: int, metrics: dict) -> None:
        if metric not in metrics:
            raise KeyError(f"the sweep's metric {metric!r} is not among this epoch's metrics {sorted(metrics)}")
        trial.report(metrics[metric], epoch)
        if trial.should_prune():
            trial.set_user_attr(PRUNED_AT, epoch)
            raise optuna.TrialPruned(f"pruned after epoch {epoch}: {metric} {metrics[metric]:.4f} is below the median "
                                     "of the earlier trials at this epoch")

    return report
