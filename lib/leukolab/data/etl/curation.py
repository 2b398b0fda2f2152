"""The driver's curation between the ETL's two passes: masks paired, files quarantined, duplicates and patients
grouped, splits assigned; then the dataset's fingerprint and manifest."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import pandas as pd

from leukolab.data.etl import labels as csv_labels
from leukolab.data.etl.acquisition_splits import acquisition_columns, acquisition_manifest
from leukolab.data.etl.leakage import leakage_report
from leukolab.data.etl.masks import audit_masks, masks_manifest
from leukolab.data.etl.params import EtlParams
from leukolab.data.etl.schema import PIXEL_SUMS, SCHEMA_VERSION
from leukolab.data.etl.splits import assign_splits, group_rows, near_duplicate_pairs, split_fractions

_NOT_CURATED = (
    "role", "status", "reason", "message",  # the same on every curated original
    "mask_fraction", "mask_raw_fraction",  # filled on mask rows only; an original gets its mask's from the audit
    "stem",  # what paired the masks
)
"""Columns of the first pass's metadata that the curated table leaves out."""


@dataclass
class Duplicates:
    """Exact and near duplicates among the curated originals."""

    groups: list[list[str]]
    """Source paths that are byte-identical or near duplicates of each other (connected), each group sorted."""
    near_pairs: list[dict]
    """``{"a", "b", "distance"}`` for every near-duplicate pair of different bytes."""


def curate(meta: pd.DataFrame, params: EtlParams, near_search=near_duplicate_pairs,
           keep_in_meta: Collection[str] | None = None) -> tuple[pd.DataFrame, list[dict], Duplicates]:
    """Pair masks, quarantine, group duplicates and patients, and split; ``near_search(phashes, distance)`` finds
    the near-duplicate pairs (:func:`leukolab.data.etl.near_duplicates.find_near_duplicates` on a Spark session).

    ``keep_in_meta``: where given, every other column is deleted from ``meta``, in place, as soon as the curated
    table has taken its rows (at 100,000 smears, 12-16 MB less at curation's peak than deleting them afterwards).
    """
    ok = meta["status"] == "ok"
    masks = meta[ok & (meta["role"] == "mask")]
    mask_by_key = dict(zip(zip(masks["class_name"], masks["stem"]), masks["source_path"]))
    quarantine = [
        {"source_path": r.source_path, "reason": r.reason, "message": r.message}
        for r in meta[meta["status"] == "quarantined"].itertuples()
    ]
    # Which originals stay is decided on the few columns that decide it; their rows are then taken once, in
    # source_path order, and columns added in place (copies of every column raised curation's peak at 100,000
    # smears to 90 MB over its input; this way, 68 MB).
    chosen = meta.loc[ok & (meta["role"] == "original"), ["source_path", "class_name", "stem", "content_hash"]]
    chosen["mask_path"] = [mask_by_key.get(key) for key in zip(chosen["class_name"], chosen["stem"])]
    chosen = csv_labels.apply_label_map(chosen, params.label_map)  # masks paired by the layout's classes
    quarantine += _unpaired_masks(meta, masks, set(chosen["mask_path"].dropna()))
    if params.require_masks:
        missing = chosen["mask_path"].isna()
        quarantine += [
            {"source_path": path, "reason": "missing_mask", "message": "masks are required and this image has none"}
            for path in chosen.loc[missing, "source_path"]
        ]
        chosen = chosen[~missing]

    labels_per_hash = chosen.groupby("content_hash")["class_name"].nunique()
    conflicting = chosen["content_hash"].map(labels_per_hash) > 1
    for r in chosen[conflicting].itertuples():
        quarantine.append({"source_path": r.source_path, "reason": "conflicting_labels",
                           "message": "a byte-identical image is filed under another class"})
        if isinstance(r.mask_path, str):
            quarantine.append({"source_path": r.mask_path, "reason": "conflicting_labels", "message": "its original was quarantined"})
    chosen = chosen[~conflicting].sort_values("source_path")
    taken = [column for column in meta.columns if column not in _NOT_CURATED]
    originals = meta.loc[chosen.index, taken]
    if keep_in_meta is not None:
        for column in meta.columns.difference(keep_in_meta):
            del meta[column]  # every column is its own block: freed here
    originals.index = pd.RangeIndex(len(originals))
    originals["class_name"] = chosen["class_name"].to_numpy()  # the shared label where a label_map maps
    for column in chosen.columns.difference(meta.columns, sort=False):  # mask_path; source_class with a label_map
        originals[column] = chosen[column].to_numpy()
    del chosen
    for column, values in audit_masks(originals, masks, params).items():
        originals[column] = values

    near = [] if not params.near_duplicates else near_search(list(originals["phash"]), params.near_duplicate_distance)
    duplicate_group = group_rows(originals[["source_path", "content_hash"]].assign(patient_id=None), near)
    originals["group_id"] = group_rows(originals, near)  # duplicates and patients together
    fractions = split_fractions(params.train_fraction, params.val_fraction, params.test_fraction,
                                params.holdouts, params.holdout_fraction)
    groups = pd.DataFrame({"class_name": originals["class_name"], "group": originals["group_id"]})
    originals["split"] = assign_splits(groups, fractions, params.seed)
    for column, values in acquisition_columns(originals, fractions, params).items():
        originals[column] = values
    classes = params.classes or sorted(originals["class_name"].unique())
    originals["label"] = originals["class_name"].map({name: i for i, name in enumerate(classes)})
    paths, hashes = originals["source_path"], originals["content_hash"]
    shared = duplicate_group.duplicated(keep=False)  # rows in a group of two or more: a list per group, not per row
    duplicates = Duplicates(
        groups=sorted(sorted(group) for group in paths[shared].groupby(duplicate_group[shared]).agg(list)),
        near_pairs=[{"a": paths[i], "b": paths[j], "distance": d} for i, j, d in near if hashes[i] != hashes[j]],
    )
    quarantine.sort(key=lambda q: q["source_path"])
    return originals, quarantine, duplicates


def _unpaired_masks(meta: pd.DataFrame, masks: pd.DataFrame, used: set[str]) -> list[dict]:
    """Quarantine entries of the usable masks that no original took (``used``: the paired masks' paths)."""
    unpaired = masks[~masks["source_path"].isin(used)]
    if unpaired.empty:
        return []
    originals = meta[meta["role"] == "original"]
    any_original = set(zip(originals["class_name"], originals["stem"]))
    return [{"source_path": r.source_path, "reason": "mask_without_original",
             "message": "its original was quarantined" if (r.class_name, r.stem) in any_original
             else "no original image has this mask's class and stem"} for r in unpaired.itertuples()]


def fingerprint(meta: pd.DataFrame, params: EtlParams, layout: str) -> str:
    """Hash of every input file's path and content hash, and of the parameters."""
    digest = hashlib.sha256()
    for path, content_hash in sorted(zip(meta["source_path"], meta["content_hash"])):
        digest.update(f"{path}\0{content_hash}\n".encode())
    digest.update(json.dumps({**params.model_dump(), "layout": layout, "schema": SCHEMA_VERSION}, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def build_manifest(name, raw_dir, layout, params, fingerprint, meta, table, quarantine, duplicates: Duplicates) -> dict:
    """The dataset's manifest; checks that no file was lost and that at most ``max_bad_fraction`` were unusable."""
    classes = params.classes or sorted(table["class_name"].unique())
    train = table.loc[table["split"] == "train", list(PIXEL_SUMS)]
    pixels = params.image_size**2 * max(len(train), 1)
    sums = np.sum(np.ascontiguousarray(train[list(PIXEL_SUMS[:3])]), 0) if len(train) else np.zeros(3)
    squares = np.sum(np.ascontiguousarray(train[list(PIXEL_SUMS[3:])]), 0) if len(train) else np.zeros(3)
    mean = sums / pixels
    std = np.sqrt(np.maximum(squares / pixels - mean**2, 1e-12))
    counts = table.groupby(["split", "class_name"]).size()
    n_in, n_labels = len(meta), int((meta["status"] == "label_file").sum())
    n_out = len(table) + int(table["mask_path"].notna().sum())  # an implausible mask is out too, just not a target
    if n_in != n_out + len(quarantine) + n_labels:
        raise AssertionError(f"ETL lost files: {n_in} in, {n_out} out, {len(quarantine)} quarantined, {n_labels} label files")
    bad_fraction = len(quarantine) / n_in
    if bad_fraction > params.max_bad_fraction:
        raise ValueError(
            f"{len(quarantine)} of {n_in} files ({bad_fraction:.0%}) are unusable, more than max_bad_fraction="
            f"{params.max_bad_fraction}; first reasons: {quarantine[:5]}"
        )
    reasons = pd.Series([q["reason"] for q in quarantine], dtype=object).value_counts()
    with_patient = table.loc[table["patient_id"].notna(), ["split", "patient_id"]]
    return {
        "schema_version": SCHEMA_VERSION,
        "dataset": name,
        "fingerprint": fingerprint,
        "raw_dir": str(raw_dir),
        "layout": layout,
        "parameters": params.model_dump(),
        "classes": list(classes),
        "image_size": params.image_size,
        "has_masks": bool((table["mask_status"] == "ok").any()),
        "masks": masks_manifest(table, list(classes), params),
        "files": {"in": n_in, "out": n_out, "quarantined": len(quarantine), **({"label_files": n_labels} if n_labels else {})},
        "counts": {split: {c: int(counts.get((split, c), 0)) for c in classes} for split in sorted(table["split"].unique())},
        "patients": {split: int(n) for split, n in with_patient.groupby("split")["patient_id"].nunique().items()},
        "train_mean": [round(float(v), 6) for v in mean],
        "train_std": [round(float(v), 6) for v in std],
        "quarantine": quarantine,
        "quarantine_reasons": {reason: int(n) for reason, n in sorted(reasons.items())},
        "duplicate_groups": duplicates.groups,
        "near_duplicate_pairs": duplicates.near_pairs,
        "leakage": leakage_report(table, duplicates.near_pairs, params),
        "acquisition": acquisition_manifest(table, list(classes), params),
    }
