"""What a published model carries, typed: :class:`ModelMeta`, fixed when the model is logged, and :class:`ModelInfo`,
what its registry version says (the referral threshold and the TTA gate, chosen later and changeable without a new
model). The fitted out-of-distribution check is the model's :class:`~leukolab.ood.OodDetector` (``ood.npz``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, model_validator

from leukolab.config.experiment import Experiment, parse_experiment
from leukolab.images import ImageRules
from leukolab.models.preprocessing import Preprocessing, StainTarget


class ModelMeta(BaseModel):
    """The model's ``meta.json``: how it was trained and how an image becomes its input."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    experiment: Experiment
    class_names: list[str]
    """The classes, in the order of the network's outputs (a model that only segments has them too)."""
    image_size: int
    """The side of the square the network takes, in pixels."""
    image_rules: ImageRules = ImageRules()
    """What the ETL that made its training data accepted as an image (models logged before them: the defaults)."""
    mean: list[float]
    std: list[float]
    """Per channel, of the training split (after :attr:`preprocessing`): the network's input is
    ``(pixels / 255 - mean) / std``."""
    stain_target: StainTarget | None = None
    """The LAB target fitted on the training split when the experiment normalises stain (models without: None)."""
    input_mean: list[float] | None = None
    """Per channel (0..1), the training split's mean colour as images arrive, before :attr:`preprocessing`; None when
    there is none (it is :attr:`mean`). The served colour-drift gauge compares arriving images with it."""
    temperature: float = 1.0
    """Divides the logits (fitted on val); 1.0 for models that only segment."""
    dataset_fingerprint: str | None = None

    @model_validator(mode="after")
    def _target_when_normalising(self) -> ModelMeta:
        if (self.experiment.preprocessing.stain_normalization != "none") != (self.stain_target is not None):
            raise ValueError("stain_target is needed exactly when the experiment's preprocessing.stain_normalization "
                             f"is on (it is {self.experiment.preprocessing.stain_normalization!r})")
        return self

    @property
    def arriving_colour(self) -> list[float]:
        """The training split's mean colour as images arrive at the model (before its preprocessing)."""
        return self.input_mean or self.mean

    @property
    def preprocessing(self) -> Preprocessing:
        """What is done to each resized uint8 image before standardising it (nothing for models logged before it)."""
        return Preprocessing(self.experiment.preprocessing.border_crop, self.stain_target)

    @classmethod
    def read(cls, values: ModelMeta | Mapping, where: str = "the model's meta.json") -> ModelMeta:
        """From a mapping as ``meta.json`` holds it (the experiment may also be an :class:`Experiment` already);
        an experiment that does not fit its schema is a ``ConfigError`` naming ``where`` and the key."""
        if isinstance(values, ModelMeta):
            return values
        experiment = values["experiment"]
        if not isinstance(experiment, Experiment):
            experiment = parse_experiment(experiment, where)
        return cls.model_validate({**values, "experiment": experiment})

    @classmethod
    def from_json(cls, text: str) -> ModelMeta:
        return cls.read(json.loads(text))

    def to_json(self) -> str:
        """As ``meta.json`` holds it."""
        return json.dumps(self.model_dump(mode="json"), indent=2)


@dataclass(frozen=True)
class ModelInfo:
    """What stands behind a model URI: registry name and version, source run, dataset fingerprint, and the version's
    ``referral_threshold`` tag (None without one, and for ``runs:/`` URIs: every prediction is accepted)."""

    uri: str
    name: str | None = None
    version: str | None = None
    run_id: str | None = None
    dataset_fingerprint: str | None = None
    referral_threshold: float | None = None
    tta_gate: float | None = None
    """The version's ``tta_gate`` tag (:mod:`leukolab.predictor.gated_tta`); None: every image gets the full TTA."""

    @property
    def label(self) -> str:
        """``name/version`` for registered models, else the run id, else the URI."""
        if self.name and self.version:
            return f"{self.name}/{self.version}"
        return self.run_id or self.uri
