"""The evaluate stage (``30_evaluate``) as two calls: :func:`run_evaluation` and :func:`track_evaluation`.

:func:`run_evaluation` loads every experiment model of a pipeline run back from MLflow and evaluates it on the
selection split, ``test`` and every holdout; chooses the champion classifier (and the best segmenter) on the
selection split, the acquisition-aware one when every classifier has it; gates both against the registered
versions on that split; chooses the referral threshold there; and reports the champion on ``test``, the shortcut
probes, the external datasets and its out-of-distribution check (reported only, choosing nothing). Nothing is
logged yet: :func:`track_evaluation` saves the figures in the run folder, logs them, the tables, tags and metrics
to the active MLflow run, and returns the stage's :class:`~leukolab.stages.records.EvaluationRecord`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import mlflow
import pandas as pd
from matplotlib.figure import Figure
from pydantic import BaseModel, ConfigDict

from leukolab import curves, plots
from leukolab.data.reading.dataset import load_manifest
from leukolab.data.etl.probes import shortcut_probes, shortcut_warning
from leukolab.evaluation import acquisition, external
from leukolab.evaluation import ood as ood_evaluation
from leukolab.evaluation.compare import (candidate_summary, choose_champion, evaluate_runs, experiment_runs,
                                         load_run_model, log_comparison, log_to_source_runs)
from leukolab.evaluation.explanations import explained_examples
from leukolab.evaluation.gate import gate
from leukolab.evaluation.selective import referral_metrics, select_referral
from leukolab.experiments.resampling import resampling_table
from leukolab.stages import run_folder
from leukolab.stages.records import Candidate, EvaluationRecord, ExperimentRecord, resolve_dataset

REPORT_SPLIT = "test"
"""The split the champion is reported on, once, for what the selection split chose."""
CLASSIFIERS = ("classification", "joint")


class EvaluationSettings(BaseModel):
    """``30_evaluate``'s parameters (its ``parameters`` cell has the same defaults; the notebook says what each is)."""

    model_config = ConfigDict(extra="forbid")
    selection_split: str = "val"
    champion_metric: str = "macro_f1"
    tie_breaker: str = "latency_ms_per_image"
    segmenter_metric: str = "dice"
    gate_margin: float = 0.005
    force_promote: bool = False
    model_name: str = "leukolab"
    segmenter_name: str = "leukolab-segmenter"
    bootstrap_samples: int = 1000
    bootstrap_seed: int = 0
    external_datasets: list[str | dict] = []
    ood_synthetic_sets: list[str] = []
    ood_synthetic_images: int = 40
    ood_synthetic_seed: int = 1
    target_risk: float = 0.01
    selection_strategy: str = "auto"
    probe_samples: int = 1000
    probe_warn_above: float = 0.25

    def run_params(self) -> dict:
        """The parameters logged to the stage's MLflow run."""
        return self.model_dump(exclude={"model_name", "segmenter_name", "probe_samples", "probe_warn_above"})


@dataclass
class Evaluation:
    """What :func:`run_evaluation` found: for the notebook to show and :func:`track_evaluation` to hand on."""

    settings: EvaluationSettings
    dataset: Path
    table: pd.DataFrame  # one row per run and split (leukolab.evaluation.compare.evaluate_runs)
    evaluated: dict  # split -> dataset, class names, each run's outputs
    resampling: pd.DataFrame  # folds and seeds beside the single split; empty when no experiment resampled
    aware: dict[str, dict]  # run id -> acquisition-aware figures
    strategy: str  # grouped or acquisition: which val split chose
    champion: pd.Series  # the champion's row on the selection split (image-level)
    chosen_score: float  # its champion_metric on the split that chose it
    segmenter: pd.Series | None
    probes: list[dict]
    probe_warning: str | None
    gates: dict[str, dict] = field(default_factory=dict)
    referral: dict | None = None
    referral_curve: pd.DataFrame | None = None
    shift: list[dict] = field(default_factory=list)  # the champion on in-domain test and each external dataset
    ood: dict | None = None
    figures: dict[str, Figure] = field(default_factory=dict)

    def summary(self, row: pd.Series | None) -> Candidate | None:
        """A chosen run's summary for the gate, the record and the registry (its figures on every split)."""
        return candidate_summary(row, self.table, REPORT_SPLIT)

    def reported(self) -> pd.Series:
        """The champion's row on the report split."""
        return self.table[(self.table["run_id"] == self.champion.run_id) & (self.table["split"] == REPORT_SPLIT)].iloc[0]


def run_evaluation(settings: EvaluationSettings, run_dir: str | Path, dataset_dir: str | None = None) -> Evaluation:
    """Evaluate the pipeline run's experiments, choose, gate and report (see the module docstring)."""
    s = settings
    externals = external.external_datasets(s.external_datasets)
    dataset = resolve_dataset(dataset_dir, run_dir)
    table, evaluated = evaluate_runs(experiment_runs(run_dir), dataset, bootstrap_samples=s.bootstrap_samples,
                                     seed=s.bootstrap_seed, selection_split=s.selection_split)
    aware = acquisition.acquisition_figures(ExperimentRecord.read_all(run_dir, ("classify",)))
    strategy = acquisition.selection_strategy(table, aware, s.selection_strategy)
    chosen = choose_champion(acquisition.selection_rows(table, aware, s.selection_split, strategy), s.champion_metric,
                             s.tie_breaker, split=s.selection_split)
    on_split = table[table["split"] == s.selection_split]
    segmenters = on_split[on_split["task"] == "segmentation"]
    probes = shortcut_probes(dataset, s.probe_samples) if s.probe_samples else []
    evaluation = Evaluation(
        s, dataset, table, evaluated, resampling_table(ExperimentRecord.read_all(run_dir)), aware, strategy,
        champion=table[(table["run_id"] == chosen.run_id) & (table["split"] == s.selection_split)].iloc[0],
        chosen_score=float(chosen[s.champion_metric]),
        segmenter=choose_champion(table, s.segmenter_metric, s.tie_breaker, tasks=("segmentation",),
                                  split=s.selection_split) if len(segmenters) else None,
        probes=probes, probe_warning=shortcut_warning(probes, s.probe_warn_above))
    evaluation.figures["comparison"] = plots.metric_comparison(on_split[on_split["task"].isin(CLASSIFIERS)], s.champion_metric)
    if evaluation.segmenter is not None:
        evaluation.figures["segmentation"] = plots.metric_comparison(segmenters, s.segmenter_metric)
    champion_model = load_run_model(evaluation.champion)
    evaluation.figures.update(champion_figures(evaluation, champion_model))
    evaluation.gates = gates(evaluation)
    choose_referral(evaluation)
    if externals:
        evaluation.shift = external.compare_domains(champion_model, externals, load_manifest(dataset)["dataset"], REPORT_SPLIT,
                                                    evaluation.summary(evaluation.champion)["metrics"],
                                                    s.bootstrap_samples, s.bootstrap_seed)
        evaluation.figures["domain_shift"] = plots.domain_shift(pd.DataFrame(evaluation.shift))
    if champion_model.ood is not None:
        evaluation.ood = out_of_distribution(evaluation, champion_model, externals)
        evaluation.figures["out_of_distribution"] = ood_evaluation.ood_figure(evaluation.ood)
    for figure in evaluation.figures.values():
        plt.close(figure)  # shown where the notebook displays them, not all at once
    return evaluation


def champion_figures(evaluation: Evaluation, model) -> dict[str, Figure]:
    """The champion on the report split: reliability (beside the other classifiers), confusion matrix, most
    confident mistakes, ROC and precision-recall curves, Grad-CAM heatmaps."""
    test, name = evaluation.evaluated[REPORT_SPLIT], evaluation.champion.run_name
    labels, probabilities = test["dataset"].labels.numpy(), test["runs"][evaluation.champion.run_id]["probabilities"]
    table = evaluation.table
    classifiers = table[(table["split"] == REPORT_SPLIT) & table["task"].isin(CLASSIFIERS)]
    return {
        "reliability": plots.reliability_diagram(labels, {r.run_name: test["runs"][r.run_id]["probabilities"]
                                                          for r in classifiers.itertuples()}),
        "confusion_matrix": plots.confusion_matrix(labels, probabilities.argmax(1), test["class_names"],
                                                   title=f"{name} on {REPORT_SPLIT}"),
        "failure_cases": plots.failure_cases(test["dataset"].images, labels, probabilities, test["class_names"]),
        "roc": curves.roc_figure(labels, probabilities, test["class_names"], f"{name} on {REPORT_SPLIT}: ROC, one class vs rest"),
        "precision_recall": curves.precision_recall_figure(labels, probabilities, test["class_names"],
                                                           f"{name} on {REPORT_SPLIT}: precision-recall, one class vs rest"),
        "heatmaps": plots.heatmap_grid(*explained_examples(model, test["dataset"].images, labels, probabilities)),
    }


def gates(evaluation: Evaluation) -> dict[str, dict]:
    """The champion's gate (and the segmenter's) against the registered version, on the selection split."""
    s, chooser = evaluation.settings, evaluation.evaluated[evaluation.settings.selection_split]
    roles = [("champion", evaluation.champion, s.model_name, s.champion_metric)]
    if evaluation.segmenter is not None:
        roles.append(("segmenter", evaluation.segmenter, s.segmenter_name, s.segmenter_metric))
    return {role: gate(evaluation.summary(row), name, metric, chooser["dataset"], chooser["class_names"], s.gate_margin,
                       s.force_promote) for role, row, name, metric in roles}


def choose_referral(evaluation: Evaluation) -> None:
    """The referral threshold chosen on the selection split for ``target_risk``, reported on the report split."""
    s, run_id = evaluation.settings, evaluation.champion.run_id
    outputs = {split: (evaluation.evaluated[split]["dataset"].labels.numpy(), evaluation.evaluated[split]["runs"][run_id]["probabilities"])
               for split in (s.selection_split, REPORT_SPLIT)}
    evaluation.referral, evaluation.referral_curve = select_referral(
        outputs[s.selection_split], outputs[REPORT_SPLIT], evaluation.evaluated[REPORT_SPLIT]["class_names"], s.target_risk,
        s.selection_split, REPORT_SPLIT, s.bootstrap_samples, s.bootstrap_seed)
    evaluation.figures["risk_coverage"] = plots.risk_coverage(evaluation.referral_curve, evaluation.referral)


def out_of_distribution(evaluation: Evaluation, model, externals: list) -> dict:
    """The champion's out-of-distribution check measured on the report split, the synthetic stand-ins and the
    external sets (:func:`leukolab.evaluation.ood.ood_report`)."""
    s, in_domain = evaluation.settings, evaluation.evaluated[REPORT_SPLIT]["dataset"]
    sets = ood_evaluation.synthetic_sets(s.ood_synthetic_sets, s.ood_synthetic_images,
                                         load_manifest(evaluation.dataset)["image_size"], s.ood_synthetic_seed)
    sets.update({d.name: ood_evaluation.external_images(model, d) for d in externals})
    return ood_evaluation.ood_report(model, (list(in_domain.images.permute(0, 2, 3, 1).numpy()), in_domain.labels.numpy()),
                                     sets, evaluation.referral["threshold"], s.bootstrap_samples, s.bootstrap_seed)


def track_evaluation(run_dir: str | Path, evaluation: Evaluation) -> EvaluationRecord:
    """Save the figures (and the resampling table) under ``<run_dir>/evaluation/``, log them, the tables, tags and
    metrics to the active MLflow run and to each experiment's run; return the stage's record."""
    s, folder = evaluation.settings, run_folder(run_dir) / "evaluation"
    folder.mkdir(exist_ok=True)
    figure_files = {}
    for name, figure in evaluation.figures.items():
        figure.savefig(folder / f"{name}.png", dpi=110, bbox_inches="tight")
        figure_files[name] = str(folder / f"{name}.png")
    mlflow.log_metrics(referral_metrics(evaluation.referral))
    mlflow.log_table(evaluation.referral_curve, f"evaluation/risk_coverage_{s.selection_split}.json")
    if evaluation.ood:
        mlflow.log_metrics(ood_evaluation.ood_metrics(evaluation.ood))
    log_comparison(evaluation.table, evaluation.figures)
    log_to_source_runs(evaluation.table)
    if evaluation.shift:
        external.log_external(evaluation.shift)
    if len(evaluation.resampling):
        evaluation.resampling.to_json(folder / "resampling.json", orient="records", indent=2)
        mlflow.log_table(evaluation.resampling, "evaluation/resampling.json")
    champion = evaluation.champion
    mlflow.set_tags({"champion_run_id": champion.run_id, "champion_metric": s.champion_metric,
                     "selection_split": s.selection_split, "report_split": REPORT_SPLIT,
                     "gate": evaluation.gates["champion"]["reason"][:5000], "selection_strategy": evaluation.strategy,
                     "split_strategy": "grouped"})
    if evaluation.probe_warning:
        mlflow.set_tag("shortcut_warning", evaluation.probe_warning[:5000])
    mlflow.log_metrics({f"champion_{s.selection_split}_{s.champion_metric}": float(champion[s.champion_metric]),
                        f"champion_{REPORT_SPLIT}_{s.champion_metric}": float(evaluation.reported()[s.champion_metric])})
    return EvaluationRecord(
        selection_split=s.selection_split, report_split=REPORT_SPLIT, dataset_dir=str(evaluation.dataset),
        champion_metric=s.champion_metric, champion=evaluation.summary(champion),
        segmenter=evaluation.summary(evaluation.segmenter), gates=evaluation.gates, figures=figure_files,
        external=evaluation.shift, resampling=evaluation.resampling.to_dict("records"),
        table=evaluation.table.drop(columns=["model_uri"]).to_dict("records"), referral=evaluation.referral,
        split_strategy="grouped", selection_strategy=evaluation.strategy,
        acquisition_aware=acquisition.acquisition_summary(evaluation.aware, champion.run_id, evaluation.strategy == "acquisition"),
        shortcut_probes=evaluation.probes, shortcut_warning=evaluation.probe_warning, ood=evaluation.ood)
