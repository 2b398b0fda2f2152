"""What each stage hands on, declared: one record per stage output (``<run_dir>/<stage>.json``).

A stage writes its record with :meth:`StageRecord.write`; the stages after it, the runner (which keeps each
task's output in ``lineage.json``), ``leukolab compare``, ``leukolab run``'s summary and the run report read it
back through the same class (:meth:`StageRecord.read` from a run folder, :meth:`StageRecord.from_output` from a
lineage). The JSON keeps the field names and values the stages always wrote, so runs made before the records
read as they are; keys a record does not declare are ignored on reading. Nested parts that lower layers build
and read as plain dicts (the candidate summary, the gate's decision, the referral, a published version) are
``TypedDict``: checked on reading and writing, and still dicts for the functions that take them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel
from typing_extensions import NotRequired, Self, TypedDict

from leukolab.config import workspace_path
from leukolab.stages.outputs import read_output, read_outputs, write_output

Metrics = dict[str, float | int]
"""Metric name -> value (NaN where a model has no such figure)."""


class StageRecord(BaseModel):
    """A stage's output: at least the MLflow run it logged to. A stage without a record of its own (a notebook of
    another pipeline file) is read as this, its other keys left to the notebooks that wrote them."""

    stage: ClassVar[str] = ""
    mlflow_run_id: str | None = None

    def write(self, run_dir: str | Path, name: str | None = None) -> Path:
        """Write ``<run_dir>/<name>.json`` (``name``: the stage's, or one task of a fanned-out stage)."""
        return write_output(run_dir, name or self.stage, self.model_dump())

    @classmethod
    def read(cls, run_dir: str | Path, name: str | None = None) -> Self:
        """The record in ``run_dir``; a missing one says which stage to run first."""
        return cls.model_validate(read_output(run_dir, name or cls.stage))

    @classmethod
    def from_output(cls, output: dict | None) -> Self | None:
        """The record of a task's output as a lineage keeps it (``tasks.<name>.result``); None without one."""
        return cls.model_validate(output) if output else None


class ExtraSourceCounts(TypedDict):
    """What one extra source (a folder of reviewed cases) gave the dataset's train split."""

    name: str
    train: int
    quarantined: int
    reviews: list[int | str]


class EtlRecord(StageRecord):
    """``00_etl``: the dataset it wrote."""

    stage: ClassVar[str] = "etl"
    dataset_dir: str
    fingerprint: str
    counts: dict[str, dict[str, int]]  # split -> class -> images
    extra_sources: list[ExtraSourceCounts] = []

    @classmethod
    def from_manifest(cls, dataset_dir: str | Path, manifest: dict) -> Self:
        """The record of a dataset from its manifest (:func:`leukolab.data.reading.dataset.load_manifest`)."""
        extras = [{key: extra[key] for key in ExtraSourceCounts.__annotations__} for extra in manifest.get("extra_sources", [])]
        return cls(dataset_dir=str(dataset_dir), fingerprint=manifest["fingerprint"], counts=manifest["counts"],
                   extra_sources=extras)


class ExperimentRecord(StageRecord):
    """``10_segment`` and ``20_classify``, one per experiment (``<stage>-<experiment>.json``): the logged model."""

    EXPERIMENT_STAGES: ClassVar[tuple[str, ...]] = ("segment", "classify")
    experiment: str
    task: str
    model_uri: str
    val_metrics: Metrics
    test_metrics: Metrics
    resampling: dict | None = None  # folds and seeds (leukolab.experiments.resampling.run_resampling)
    acquisition_aware: dict | None = None  # leukolab.experiments.acquisition.run_acquisition_aware

    def write(self, run_dir: str | Path, name: str | None = None) -> Path:
        """Write ``<run_dir>/<name>.json``; ``name`` is ``<stage>-<experiment>``."""
        if not name:
            raise ValueError("an experiment's record is named <stage>-<experiment>: give the name")
        return super().write(run_dir, name)

    @classmethod
    def read_all(cls, run_dir: str | Path, stages: tuple[str, ...] = EXPERIMENT_STAGES) -> dict[str, Self]:
        """Every experiment record of ``stages`` in ``run_dir``, by task name (``classify-simple-cnn``), stage by stage."""
        return {name: cls.model_validate(output) for stage in stages
                for name, output in read_outputs(run_dir, f"{stage}-").items()}


class Candidate(TypedDict):
    """The evaluation's summary of a chosen run (:func:`leukolab.evaluation.compare.candidate_summary`)."""

    run_id: str
    experiment: str
    task: str | None
    model_uri: str
    selection_split: str | None
    selection_metrics: Metrics  # on the split that chose it: what the gate compares
    report_split: str | None
    metrics: Metrics  # on the report split: what the registry and the model card report
    metrics_by_split: NotRequired[dict[str, Metrics]]


class GateDecision(TypedDict):
    """The alias a candidate takes and why (:func:`leukolab.evaluation.gate.gate`)."""

    alias: str
    reason: str
    metric: str
    split: str | None
    margin: float
    candidate_score: float
    current_version: int | str | None
    current_score: float | None
    unchanged: NotRequired[bool]  # the candidate is the registered champion already


class Referral(TypedDict):
    """The referral threshold chosen on the selection split and reported on the report split
    (:func:`leukolab.evaluation.selective.select_referral`)."""

    selection_split: str
    report_split: str
    target_risk: float
    confidence: str
    rule: str
    threshold: float
    reached: bool
    note: str
    selection: dict[str, float | int | None]  # coverage, risk, accepted, images
    report: dict[str, Any]  # overall and per_class: coverage and risk at the threshold with intervals


class EvaluationRecord(StageRecord):
    """``30_evaluate``: the champion and segmenter chosen on the selection split, their gates, every figure."""

    stage: ClassVar[str] = "evaluate"
    selection_split: str
    report_split: str
    dataset_dir: str
    champion_metric: str
    champion: Candidate
    segmenter: Candidate | None = None
    gates: dict[str, GateDecision]  # champion, and segmenter when there is one
    figures: dict[str, str]  # name -> PNG file
    table: list[dict[str, Any]]  # every run on every split (leukolab.evaluation.compare.evaluate_runs), no model URI
    external: list[dict[str, Any]] = []  # domain-shift rows (leukolab.evaluation.external.compare_domains)
    resampling: list[dict[str, Any]] = []  # folds and seeds beside the single split (leukolab.experiments.resampling)
    referral: Referral | None = None
    split_strategy: str | None = None  # the split assignment whose figures are reported
    selection_strategy: str | None = None  # grouped or acquisition: which val split chose
    acquisition_aware: dict[str, Any] | None = None  # leukolab.evaluation.acquisition.acquisition_summary
    shortcut_probes: list[dict[str, Any]] = []  # leukolab.data.etl.probes.shortcut_probes
    shortcut_warning: str | None = None
    ood: dict[str, Any] | None = None  # the out-of-distribution report (leukolab.evaluation.ood.ood_report)


class PublishedVersion(TypedDict):
    """A registered version as :func:`leukolab.publishing.registry.publish` returns it."""

    model_name: str
    version: int | str  # as the registry gives it
    alias: str
    model_uri: str
    source_run_id: str
    test_metrics: Metrics
    gate: GateDecision
    model_card: str


class PublishRecord(StageRecord):
    """``40_publish``: the champion's registered version (its fields at the top level) and any other model
    registered with it (the segmenter)."""

    stage: ClassVar[str] = "publish"
    model_name: str
    version: int | str  # as the registry gives it
    alias: str
    model_uri: str
    source_run_id: str
    test_metrics: Metrics
    gate: GateDecision
    model_card: str
    also_registered: list[PublishedVersion] = []


class ServeRecord(StageRecord):
    """``50_serve``: the model it served and how the check went."""

    stage: ClassVar[str] = "serve"
    model_uri: str
    requests: int
    p50_ms: float


RECORDS: dict[str, type[StageRecord]] = {"etl": EtlRecord, "segment": ExperimentRecord, "classify": ExperimentRecord,
                                         "evaluate": EvaluationRecord, "publish": PublishRecord, "serve": ServeRecord}
"""The record of each stage of ``params/pipeline.yaml``; any other stage's output is read as :class:`StageRecord`."""


def record_type(stage: str) -> type[StageRecord]:
    """The record class a stage's output is read as."""
    return RECORDS.get(stage, StageRecord)


def resolve_dataset(dataset_dir: str | None, run_dir: str | Path) -> Path:
    """``dataset_dir`` when given, else the dataset the run's ETL stage wrote."""
    if dataset_dir:
        return workspace_path(dataset_dir)
    return Path(EtlRecord.read(run_dir).dataset_dir)
