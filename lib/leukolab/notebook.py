"""What the stage notebooks share: the set-up cell, showing an experiment (10_segment, 20_classify), and the last cell
of a stage: its record handed on and its MLflow run ended."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
from IPython import get_ipython
from IPython.display import display

from leukolab import tracking
from leukolab.config.experiment import Experiment
from leukolab.evaluation.stage import Evaluation, track_evaluation
from leukolab.experiments.resampling import resampling_summary
from leukolab.experiments.run import ExperimentResult
from leukolab.logs import configure_logging
from leukolab.stages.records import ExperimentRecord, StageRecord


def setup() -> None:
    """Logs in the cell outputs and figures inline: the first code cell of every notebook calls this."""
    configure_logging(force=True)
    shell = get_ipython()
    if shell is not None:
        shell.run_line_magic("matplotlib", "inline")


def show_experiment(config: Experiment) -> None:
    """The experiment about to train: its description and every key, flattened."""
    print(config.description)
    display(pd.Series(tracking.flatten(config.model_dump()), name="value").to_frame())


def show_result(result: ExperimentResult) -> None:
    """The best epoch, the figures the run logged, validation and test metrics, and the resampling summary."""
    print("best epoch", result.fit.best_epoch, "of", len(result.fit.history), "by", result.fit.monitor)
    for figure in result.figures.values():
        display(figure)
    display(pd.DataFrame({"validation": result.val_metrics, "test": result.test_metrics}).round(4))
    if result.resampling:
        display(resampling_summary(result.resampling).round(4))


def hand_on(run_dir: str | Path, record: StageRecord, name: str | None = None) -> Path:
    """End the stage: write its record, with the active MLflow run's id, into ``run_dir`` (as ``name`` when given)
    and end that run."""
    record.mlflow_run_id = mlflow.active_run().info.run_id
    path = record.write(run_dir, name)
    mlflow.end_run()
    return path


def finish_experiment(stage: str, run_dir: str | Path, result: ExperimentResult) -> Path:
    """Hand the trained model on to the evaluation (``<run_dir>/<stage>-<experiment>.json``) and end the stage's run."""
    record = ExperimentRecord(experiment=result.experiment.name, task=result.experiment.task, model_uri=result.model_uri,
                              val_metrics=result.val_metrics, test_metrics=result.test_metrics,
                              resampling=result.resampling, acquisition_aware=result.acquisition_aware)
    return hand_on(run_dir, record, f"{stage}-{result.experiment.name}")


def finish_evaluation(run_dir: str | Path, evaluation: Evaluation) -> Path:
    """Log the evaluation (:func:`~leukolab.evaluation.stage.track_evaluation`), hand its record on to the publish
    stage (``<run_dir>/evaluate.json``) and end the stage's run."""
    return hand_on(run_dir, track_evaluation(run_dir, evaluation))
