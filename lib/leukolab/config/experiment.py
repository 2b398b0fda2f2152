"""The experiment schema: what ``params/experiments/<name>.yaml`` may say, with every default in one place."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from leukolab.config import deep_merge, load_named, nested
from leukolab.config.errors import ConfigError
from leukolab.config.files import parse_typed

Task = Literal["classification", "segmentation", "joint"]
DEFAULT_MONITOR = {"classification": "val_macro_f1", "segmentation": "val_dice", "joint": "val_macro_f1"}


class Section(BaseModel):
    """A part of a configuration file: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class ModelSpec(Section):
    architecture: str = Field(description="SimpleCNN, EncoderClassifier, or an smp architecture (Unet, FPN, ...)")
    encoder: str | None = Field(None, description="smp/timm encoder name (`tu-` prefix for timm's)")
    encoder_weights: str | None = Field(None, description='None: from scratch; "imagenet" where the hub is reachable')
    dropout: float = Field(0.2, ge=0, lt=1)
    width: int = Field(32, ge=1, description="SimpleCNN: channels of its first block")
    decoder_channels: list[int] | None = Field(None, description="smp decoders: channels per stage; None: smp's")


class LossSpec(Section):
    name: Literal["cross_entropy", "focal", "bce", "dice", "bce_dice"] | None = Field(
        None, description="None: cross_entropy for classes, bce_dice for masks")
    class_weights: Literal["balanced"] | None = Field(None, description="balanced: inverse class frequency")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    gamma: float = Field(2.0, ge=0, description="focal losses' focusing exponent")
    segmentation: LossSpec | None = Field(None, description="joint models: the mask loss (default: this one)")


class TrainingSpec(Section):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(16, ge=1, description="per process when data-parallel")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["cosine", "onecycle", "constant"] = "cosine"
    grad_clip: float = Field(1.0, ge=0, description="0: no clipping")
    ema_decay: float = Field(0.0, ge=0, lt=1, description="weight EMA that is validated and kept; 0: off")


class AugmentationSpec(Section):
    """Strengths of each transform; 0 or False turns it off."""

    flip: bool = True
    rotate90: bool = True
    brightness: float = Field(0.15, ge=0)
    contrast: float = Field(0.15, ge=0)
    saturation: float = Field(0.15, ge=0)
    stain: float = Field(0.05, ge=0, description="per-channel stain gain")
    mixup: float = Field(0.0, ge=0, description="Beta(alpha, alpha) of mixup; 0: off (classifiers only)")
    cutmix: float = Field(0.0, ge=0, description="Beta(alpha, alpha) of CutMix; with mixup, each batch takes one")


class PreprocessingSpec(Section):
    """Per-image transforms before the network, applied alike at training, evaluation and serving (the published
    model carries them and the fitted stain target); both off by default. See docs/acquisition.md."""

    stain_normalization: Literal["none", "reinhard"] = Field(
        "none", description="reinhard: map each image's per-channel CIELAB mean and std (whole image) to a target "
        "fitted on the training split (median over its images), against session tint, illumination and stain")
    border_crop: float = Field(0.0, ge=0, le=0.25, description="share of the side cut from every edge before the "
                               "network (the centre is resized back to the input size), against corner artefacts, "
                               "scale bars and labels; classifiers only")


class EarlyStoppingSpec(Section):
    monitor: str | None = Field(None, description="a validation metric, higher is better; None: the task's own")
    patience: int = Field(5, ge=1)


class InferenceSpec(Section):
    tta: bool = Field(False, description="mean over the 8 rotations/mirrors of each image")


class OodSpec(Section):
    """The out-of-distribution check fitted with the model (see docs/ood.md): its detectors, share and folds."""

    detectors: list[Literal["mahalanobis", "knn", "colour", "kind", "size", "energy"]] = Field(
        ["mahalanobis", "knn", "colour", "kind", "size"], min_length=1,
        description="the detectors whose standardised scores the combined score averages")
    share: float = Field(0.99, gt=0, lt=1, description="share of in-distribution images the threshold keeps "
                         "(calibrated on train out of fold and val)")
    folds: int = Field(5, ge=1, description="folds of train scored out of fold for the calibration (1: val alone)")


class DistributedSpec(Section):
    num_processes: int = Field(1, ge=1, description="above 1: data-parallel through Spark's TorchDistributor")
    master: str | None = Field(None, description="Spark master of the training job; None: local[num_processes]")
    local_mode: bool = Field(False, description="TorchDistributor local_mode (processes on the driver)")


class DataSpec(Section):
    loading: Literal["auto", "memory", "streaming"] = Field(
        "auto", description="memory: decode the splits up front; streaming: read the Parquet batch by batch "
        "(leukolab.data.reading.streaming); auto: memory while the decoded splits fit memory_limit_mb")
    memory_limit_mb: int = Field(2048, ge=0, description="auto: the decoded size above which a process streams")
    shuffle_buffer: int = Field(2048, ge=1, description="streaming: encoded images a worker shuffles among")
    workers: int = Field(1, ge=0, description="streaming: DataLoader worker processes per rank (0: decode inline)")


class Experiment(Section):
    """One training recipe; the pipeline's ``STAGE.section.key`` overrides reach these fields."""

    name: str = Field("", description="the file's name, set when it is loaded")
    description: str = ""
    task: Task
    model: ModelSpec
    loss: LossSpec = LossSpec()
    training: TrainingSpec = TrainingSpec()
    augmentation: AugmentationSpec = AugmentationSpec()
    preprocessing: PreprocessingSpec = PreprocessingSpec()
    early_stopping: EarlyStoppingSpec = EarlyStoppingSpec()
    inference: InferenceSpec = InferenceSpec()
    ood: OodSpec = OodSpec()
    distributed: DistributedSpec = DistributedSpec()
    data: DataSpec = DataSpec()
    seed: int = 42
    cv_folds: int | None = Field(None, ge=2, description="also k folds of train+val, as child runs")
    cv_strategy: Literal["grouped", "acquisition"] = Field(
        "grouped", description="cv_folds: grouped (random, duplicates and patients together) or acquisition (blocked: "
        "contiguous blocks of acquisition order per class, the embargo withheld from each fold's training)")
    seeds: list[int] | None = Field(None, description="also retrain once per seed, as child runs")
    acquisition_aware: bool = Field(False, description="classifiers: also train and score on the acquisition-aware "
                                    "splits (a child run), when the dataset has them")

    @model_validator(mode="after")
    def _preprocessing_fits(self) -> Experiment:
        if self.preprocessing.border_crop and self.task != "classification":
            raise ValueError("preprocessing.border_crop is for classifiers only: a cropped image no longer matches its "
                             "mask")
        if self.preprocessing != PreprocessingSpec() and self.distributed.num_processes > 1:
            raise ValueError("preprocessing is not available with distributed.num_processes above 1 yet")
        return self

    @property
    def monitor(self) -> str:
        """The validation metric that picks the best epoch."""
        return self.early_stopping.monitor or DEFAULT_MONITOR[self.task]


def load_experiment(name: str, overrides: dict | None = None) -> Experiment:
    """``params/experiments/<name>.yaml`` with ``overrides`` merged in (``None`` values are ignored), validated."""
    return parse_experiment(deep_merge(load_named("experiments", name), overrides or {}) | {"name": name},
                            f"params/experiments/{name}.yaml" + (" with overrides" if overrides else ""))


def parse_experiment(values: dict, where: str = "experiment") -> Experiment:
    """An experiment from a mapping (e.g. a published model's metadata); errors name ``where`` and the key."""
    return parse_typed(Experiment, values, where)


SHORTCUTS = {"seed": ("seed",), "epochs": ("training", "epochs"), "num_processes": ("distributed", "num_processes"),
             "spark_master": ("distributed", "master"), "cv_folds": ("cv_folds",),
             "cv_strategy": ("cv_strategy",), "seeds": ("seeds",),
             "acquisition_aware": ("acquisition_aware",)}
"""Parameters of the experiment stages that set one experiment key (``epochs`` is ``training.epochs``; ``spark_master``,
named like the ETL's, is ``distributed.master``)."""


def stage_experiment(name: str, overrides: dict | None = None, **shortcuts) -> Experiment:
    """The experiment a stage notebook trains: ``name`` with its ``overrides`` and the :data:`SHORTCUTS` that are
    not ``None``, which win over ``overrides``."""
    unknown = set(shortcuts) - set(SHORTCUTS)
    if unknown:
        raise ConfigError(f"not experiment shortcuts: {sorted(unknown)}; choose from {sorted(SHORTCUTS)}")
    merged = dict(overrides or {})
    for key, value in shortcuts.items():
        merged = deep_merge(merged, nested(SHORTCUTS[key], value))
    return load_experiment(name, merged)

