"""Read the ETL's Parquet dataset: its manifest, a split as a table, and a torch Dataset."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset

from leukolab.images import image_array
from leukolab.models.preprocessing import Preprocessing


def load_manifest(dataset_dir: str | Path) -> dict:
    """The dataset's ``manifest.json``; a clear error when the folder is not an ETL output."""
    path = Path(dataset_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{dataset_dir} is not a processed dataset (no manifest.json); run 00_etl first")
    return json.loads(path.read_text())


SPLIT_STRATEGIES = {"grouped": "split", "acquisition": "acquisition_split"}
"""Split strategy -> the dataset column holding its assignment (:mod:`leukolab.data.etl.acquisition_splits`)."""


def load_split(dataset_dir: str | Path, split: str | None = None, strategy: str = "grouped") -> pd.DataFrame:
    """Rows of one split (or all) of a split ``strategy`` in a stable order, with the encoded image and mask bytes."""
    if strategy not in SPLIT_STRATEGIES:
        raise ValueError(f"unknown split strategy {strategy!r}; choose one of {sorted(SPLIT_STRATEGIES)}")
    if strategy == "acquisition" and not load_manifest(dataset_dir).get("acquisition", {}).get("available"):
        reason = load_manifest(dataset_dir).get("acquisition", {}).get("reason", "the dataset predates them")
        raise ValueError(f"{dataset_dir} has no acquisition-aware splits: {reason}. Name files with a running number "
                         "in acquisition order (e.g. Pro-001.jpg) and run the ETL again, or use the grouped strategy")
    filters = [(SPLIT_STRATEGIES[strategy], "=", split)] if split else None
    frame = pq.read_table(Path(dataset_dir) / "data", filters=filters).to_pandas()
    if split and frame.empty:
        raise ValueError(f"split {split!r} ({strategy}) is empty in {dataset_dir}")
    return frame.sort_values("source_path").reset_index(drop=True)


class SmearDataset(Dataset):
    """Decoded uint8 images (HxWx3), labels and binary masks of one split, held in memory.

    Images are small after the ETL (128 px: 48 KB each), so decoding once up
    front makes every epoch pure tensor work. Items are ``(image, label, mask,
    has_mask)`` with the image as a uint8 CHW tensor; normalisation and
    augmentation happen on whole batches in :mod:`leukolab.training.augment`.
    With ``with_masks``, rows without a (plausible) mask get an empty mask and
    ``has_mask`` False; without, every mask is a 1x1 placeholder.
    """

    def __init__(self, frame: pd.DataFrame, with_masks: bool = False):
        self.images = torch.from_numpy(np.stack([image_array(b) for b in frame["image"]])).permute(0, 3, 1, 2).contiguous()
        self.labels = torch.as_tensor(frame["label"].to_numpy(), dtype=torch.long)
        self.has_mask = torch.as_tensor(frame["mask"].notna().to_numpy() if with_masks else np.zeros(len(frame), bool))
        if self.has_mask.any():
            masks = np.zeros((len(frame), *self.images.shape[-2:]), bool)
            masks[self.has_mask.numpy()] = np.stack([image_array(b) > 0 for b in frame["mask"] if b is not None])
            self.masks = torch.from_numpy(masks).unsqueeze(1).to(torch.uint8)
        else:
            self.masks = torch.zeros((len(frame), 1, 1, 1), dtype=torch.uint8)
        self.source_paths = list(frame["source_path"])

    @property
    def mask_images(self) -> int:
        """How many images have a mask."""
        return int(self.has_mask.sum())

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.images[index], self.labels[index], self.masks[index], self.has_mask[index]

    def preprocessed(self, preprocessing: Preprocessing, chunk: int = 256) -> SmearDataset:
        """These items with ``preprocessing`` applied to the images (chunk by chunk); itself when it does nothing."""
        if not preprocessing.active:
            return self
        part = copy.copy(self)
        part.images = torch.cat([preprocessing.apply(self.images[i:i + chunk]) for i in range(0, len(self), chunk)]
                                or [self.images])
        return part

    def subset(self, indices) -> SmearDataset:
        """The items at ``indices`` (e.g. cross-validation folds), without decoding anything again."""
        part, index = copy.copy(self), torch.as_tensor(np.asarray(indices), dtype=torch.long)
        part.images, part.labels, part.masks, part.has_mask = (self.images[index], self.labels[index], self.masks[index],
                                                                self.has_mask[index])
        part.source_paths = [self.source_paths[i] for i in index.tolist()]
        return part


def load_datasets(dataset_dir: str | Path, splits: tuple[str, ...], task: str,
                  strategy: str = "grouped") -> dict[str, SmearDataset]:
    """In-memory datasets of the named splits for a task: a ``segmentation`` task gets only the rows with a
    (plausible) mask, a ``joint`` one every row with its mask where there is one, ``classification`` no masks."""
    datasets = {}
    for name in splits:
        frame = load_split(dataset_dir, name, strategy)
        if task == "segmentation":
            frame = frame[frame["mask"].notna()].reset_index(drop=True)
            if frame.empty:
                raise ValueError(f"split {name!r} of {dataset_dir} has no plausible masks for a segmentation experiment; "
                                 "see the manifest's masks section (mask_status, mask_reason)")
        datasets[name] = SmearDataset(frame, with_masks=task in ("segmentation", "joint"))
    return datasets


def test_examples(run_dir: str | Path, count: int = 8) -> list[tuple[str, bytes]]:
    """(label, PNG bytes) of a few test-split images of a run's dataset; empty when the run has no dataset yet."""
    from leukolab.stages import resolve_dataset

    try:
        frame = load_split(resolve_dataset(None, run_dir), "test")
    except (FileNotFoundError, ValueError):
        return []
    frame = frame.groupby("class_name", sort=True).head(max(1, count // 4)).head(count)
    return [(f"{r.class_name} · {Path(r.source_path).name}", r.image) for r in frame.itertuples()]
