"""What a training run feeds its network: the experiment's preprocessing (:mod:`leukolab.models.preprocessing`) fitted on
its training split and applied to every split, and the colour mean and std the images are standardised by."""

from __future__ import annotations

from dataclasses import dataclass

from leukolab.config.experiment import Experiment
from leukolab.data.reading.dataset import SmearDataset
from leukolab.data.reading.streaming import SmearStream
from leukolab.models.preprocessing import Preprocessing, crop_border, fit_stain_target

FIT_ROWS = 2000
"""Training images of a streamed split (a uniform sample) the stain target and the colour statistics are fitted on."""


@dataclass(frozen=True)
class Inputs:
    """Splits as the network sees them, the preprocessing that made them and the train colour mean and std."""

    splits: dict[str, SmearDataset | SmearStream]
    preprocessing: Preprocessing
    mean: list[float]
    std: list[float]


def colour_statistics(dataset: SmearDataset) -> dict[str, list[float]]:
    """Per-channel ``mean`` and ``std`` (0..1) of a dataset's images (a training split, a fold's training images)."""
    pixels = dataset.images.float().div_(255)
    return {"mean": pixels.mean((0, 2, 3)).tolist(), "std": pixels.std((0, 2, 3)).tolist()}


def fit_preprocessing(experiment: Experiment, train: SmearDataset | SmearStream) -> Preprocessing:
    """The experiment's preprocessing, its stain target (when it normalises stain) fitted on ``train`` after the crop."""
    spec = experiment.preprocessing
    if spec.stain_normalization == "none":
        return Preprocessing(spec.border_crop)
    images = in_memory(train, experiment.seed).images
    return Preprocessing(spec.border_crop, fit_stain_target(crop_border(images, spec.border_crop)))


def prepare_inputs(experiment: Experiment, splits: dict[str, SmearDataset | SmearStream], mean, std) -> Inputs:
    """``splits`` (one named ``train``) with the experiment's preprocessing fitted on train and applied to each, and
    the colour statistics of the preprocessed train; with no preprocessing the splits, ``mean`` and ``std`` as given."""
    preprocessing = fit_preprocessing(experiment, splits["train"])
    if not preprocessing.active:
        return Inputs(splits, preprocessing, list(mean), list(std))
    splits = {name: split.preprocessed(preprocessing) for name, split in splits.items()}
    return Inputs(splits, preprocessing, **colour_statistics(in_memory(splits["train"], experiment.seed)))


def in_memory(split: SmearDataset | SmearStream, seed: int, rows: int = FIT_ROWS) -> SmearDataset:
    """``split`` itself when decoded in memory; when streamed, a uniform sample of ``rows`` of its rows."""
    return split if isinstance(split, SmearDataset) else split.sample(rows, seed)
