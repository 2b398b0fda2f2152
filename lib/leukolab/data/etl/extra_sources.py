"""Extra sources beside the raw folder: ``labels_csv`` folders (reviewed cases, :mod:`leukolab.review.snapshot`)
whose images join the dataset in ``train`` only.

The original raw folder is curated and split exactly as without them, so its val, test and holdout rows are the
same, byte for byte, in every version of the dataset and figures stay comparable. An extra image that is a copy
of an image of the dataset, or a near duplicate (perceptual hash) of a val, test or holdout image, is quarantined
instead (it would put a held-out image's twin in train). Each source's rows are named ``extra/<folder>/<path>``;
the manifest's ``extra_sources`` says what each gave to train, what it quarantined and, where its CSV has a
``review_id`` column, which reviews entered.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from leukolab.config import workspace_path
from leukolab.data.etl.params import EtlParams
from leukolab.data.etl.raw_files import walk_files
from leukolab.data.etl.sources import Layout

EXTRA_PREFIX = "extra"
REVIEW_COLUMN = "review_id"


@dataclass(frozen=True)
class ExtraSource:
    """One extra folder: its files, the ``labels_csv`` layout that reads them, the parameters its images are
    processed with (no label map or label names: a reviewer's labels are the dataset's classes) and its prefix."""

    name: str
    root: Path
    files: list[str]
    layout: Layout
    params: EtlParams

    @property
    def prefix(self) -> str:
        return f"{EXTRA_PREFIX}/{self.name}/"


def resolve_extra_sources(folders: list[str] | None, params: EtlParams) -> list[ExtraSource]:
    """The :class:`ExtraSource` of each folder (relative ones under the workspace); a clear error for a missing,
    empty or repeated one."""
    sources = []
    for given in folders or []:
        root = workspace_path(given).resolve()
        if not root.is_dir():
            raise FileNotFoundError(f"extra source {root} does not exist")
        files = walk_files(root)
        if not files:
            raise ValueError(f"extra source {root} holds no files")
        if root.name in {source.name for source in sources}:
            raise ValueError(f"two extra sources are named {root.name!r}: give folders of different names")
        source_params = params.model_copy(update={"label_map": None, "label_names": {}, "layout": "labels_csv",
                                                  "labels_files": None, "file_column": None, "label_column": None,
                                                  "patient_column": None})
        sources.append(ExtraSource(root.name, root, files, source_params.layout_for("labels_csv", root, files),
                                   source_params))
    return sources


def add_extra_rows(table: pd.DataFrame, quarantine: list[dict], metas: list[pd.DataFrame],
                   sources: list[ExtraSource], params: EtlParams) -> tuple[pd.DataFrame, list[dict], list[dict]]:
    """The curated ``table`` with each source's usable originals added to ``train``, the quarantine with what they
    could not add, and the manifest's ``extra_sources`` entries."""
    classes = params.classes or sorted(table["class_name"].unique())
    held_out = table.loc[table["split"] != "train", "phash"].dropna().tolist()
    known = set(table["content_hash"])
    next_group = int(table["group_id"].max()) + 1 if len(table) else 0
    added, entries = [], []
    for source, meta in zip(sources, metas):
        reviews = _review_ids(source)
        refused = []
        for row in meta[meta["status"] == "quarantined"].itertuples():
            refused.append({"source_path": row.source_path, "reason": row.reason, "message": row.message})
        originals = meta[(meta["status"] == "ok") & (meta["role"] == "original")]
        labels_per_hash = originals.groupby("content_hash")["class_name"].nunique()
        rows = []
        for row in originals.sort_values("source_path").itertuples():
            why = _refusal(row, classes, known, held_out, labels_per_hash, params)
            if why:
                refused.append({"source_path": row.source_path, "reason": why[0], "message": why[1]})
            else:
                rows.append(row._asdict())
        frame = pd.DataFrame(rows, columns=[c for c in originals.columns]).drop(columns="Index", errors="ignore")
        groups = {digest: next_group + n for n, digest in enumerate(dict.fromkeys(frame["content_hash"]))}
        next_group += len(groups)
        frame = frame.assign(mask_path=None, mask_status=None, mask_reason=None, mask_message=None,
                             mask_fraction=np.nan, mask_raw_fraction=np.nan, split="train",
                             group_id=frame["content_hash"].map(groups).astype("int64"),
                             label=frame["class_name"].map({name: i for i, name in enumerate(classes)}))
        if "source_class" in table:
            frame["source_class"] = frame["class_name"]
        if "acquisition_split" in table and table["acquisition_split"].notna().any():
            # train only under every split assignment; in no acquisition block (-1), so the columns keep their
            # integer type and the held-out rows stay byte-identical
            frame["acquisition_split"] = "train"
            for column in ("acquisition_block", "acquisition_rank"):
                frame[column] = pd.Series(-1, index=frame.index).astype(table[column].dtype)
        added.append(frame)
        quarantine = quarantine + refused
        relative = [path[len(source.prefix):] for path in frame["source_path"]]
        entries.append({"name": source.name, "folder": str(source.root), "files": len(meta), "train": len(frame),
                        "quarantined": len(refused),
                        "quarantine_reasons": pd.Series([r["reason"] for r in refused], dtype=object).value_counts().to_dict(),
                        "reviews": sorted(reviews[p] for p in relative if p in reviews),
                        "reviews_left_out": sorted(reviews[p[len(source.prefix):]] for p in (r["source_path"] for r in refused)
                                                   if p[len(source.prefix):] in reviews)})
    combined = pd.concat([table, *added], ignore_index=True) if added else table
    return combined, sorted(quarantine, key=lambda q: q["source_path"]), entries


def _refusal(row, classes, known: set[str], held_out: list[str], labels_per_hash: pd.Series,
             params: EtlParams) -> tuple[str, str] | None:
    """Why an extra original cannot enter train: (reason, message), or None."""
    if row.class_name not in classes:
        return "unknown_class", f"class {row.class_name!r} is not one of the dataset's {list(classes)}"
    if labels_per_hash[row.content_hash] > 1:
        return "conflicting_labels", "a byte-identical image of this source has another label"
    if row.content_hash in known:
        return "already_in_dataset", "a byte-identical image is already in the dataset"
    if params.near_duplicates and held_out and _nearest_distance(row.phash, held_out) <= params.near_duplicate_distance:
        return "near_held_out", "a near duplicate of a val, test or holdout image: it stays out of train"
    return None


def _nearest_distance(phash: str, others: list[str]) -> int:
    """Fewest bits in which the 64-bit perceptual hash ``phash`` differs from any of ``others`` (hex)."""
    values = np.array([int(h, 16) for h in others], dtype=np.uint64)
    return int(np.bitwise_count(values ^ np.uint64(int(phash, 16))).min())


def _review_ids(source: ExtraSource) -> dict[str, int]:
    """File -> review id from the source's label files' ``review_id`` column, where they have one."""
    ids = {}
    for label_file in source.layout.labels.label_files:
        frame = pd.read_csv(source.root / label_file, dtype=str, keep_default_na=False)
        file_column = source.layout.labels.report[label_file]["columns"]["file"]
        if REVIEW_COLUMN in frame:
            names = {Path(p).name: p for p in source.files}
            ids.update({names.get(Path(f).name, f): int(r) for f, r in zip(frame[file_column], frame[REVIEW_COLUMN]) if r})
    return ids

