"""How an experiment reads its splits: decoded in memory, or streamed from the Parquet, chosen by size and logged."""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow.dataset as ds

from leukolab.config.experiment import Experiment
from leukolab.data.reading.dataset import SmearDataset, load_datasets, load_manifest
from leukolab.data.reading.streaming import SmearStream

log = logging.getLogger(__name__)


def decoded_megabytes(dataset_dir: str | Path, splits: tuple[str, ...], task: str) -> float:
    """What decoding ``splits`` into memory takes (uint8 RGB images, and a mask plane for mask tasks)."""
    manifest = load_manifest(dataset_dir)
    rows = ds.dataset(Path(dataset_dir) / "data", format="parquet").count_rows(filter=ds.field("split").isin(list(splits)))
    planes = 3 + (task in ("segmentation", "joint"))
    return rows * manifest["image_size"] ** 2 * planes / 2**20


def choose_loading(experiment: Experiment, dataset_dir: str | Path, splits: tuple[str, ...]) -> str:
    """``memory`` or ``streaming``: the experiment's ``data.loading``, or for ``auto`` memory while the decoded
    splits fit ``data.memory_limit_mb`` (decoding once makes every epoch pure tensor work); logged."""
    settings = experiment.data
    if settings.loading != "auto":
        log.info("data loading: %s (data.loading)", settings.loading)
        return settings.loading
    size = decoded_megabytes(dataset_dir, splits, experiment.task)
    choice = "memory" if size <= settings.memory_limit_mb else "streaming"
    log.info("data loading: %s (auto: %s decoded would take %.0f MB, limit data.memory_limit_mb=%d)", choice,
             "+".join(splits), size, settings.memory_limit_mb)
    return choice


def load_experiment_splits(experiment: Experiment, dataset_dir: str | Path, splits: tuple[str, ...],
                           loading: str | None = None) -> dict[str, SmearDataset | SmearStream]:
    """The named splits for ``experiment`` as :func:`~leukolab.data.reading.dataset.load_datasets` gives them, or as
    streams (train shuffled, the others in file order) when the loading (``loading``, else
    :func:`choose_loading`) is ``streaming``."""
    loading = loading or choose_loading(experiment, dataset_dir, splits)
    if loading == "memory":
        return load_datasets(dataset_dir, splits, experiment.task)
    task, data = experiment.task, experiment.data
    return {name: SmearStream(dataset_dir, name, with_masks=task in ("segmentation", "joint"),
                              masked_only=task == "segmentation", shuffle=name == "train",
                              shuffle_buffer=data.shuffle_buffer, seed=experiment.seed) for name in splits}
