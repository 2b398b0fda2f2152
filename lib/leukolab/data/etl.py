"""Spark ETL: raw smear images to a split, de-duplicated Parquet dataset with a manifest.

Files are read with Spark's ``binaryFile`` source; decoding, validation,
resizing and PNG encoding run in ``mapInPandas`` on the workers. The driver
only sees small metadata (no pixels): it pairs masks with originals,
quarantines what cannot be used, groups duplicates, assigns splits and writes
``manifest.json``. In = out + quarantined, always.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from leukolab.data.sources import LAYOUTS, classify_path, detect_layout, is_hidden
from leukolab.data.splits import assign_splits, split_fractions
from leukolab.images import ImageRejected, decode_image, encode_png, mask_from_image, resize_square

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
PROCESSED_COLUMNS = (
    "source_path", "role", "class_name", "stem", "status", "reason", "message",
    "content_hash", "width", "height", "png", "pixel_sum", "pixel_sq_sum",
)


@dataclass
class EtlParams:
    """Everything that decides the output; part of the dataset fingerprint."""

    image_size: int = 128
    layout: str | None = None
    classes: list[str] | None = None
    train_fraction: float = 0.7
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    holdouts: int = 0
    holdout_fraction: float = 0.1
    min_side: int = 32
    require_masks: bool = False
    max_bad_fraction: float = 0.2
    seed: int = 42

    def __post_init__(self):
        if self.image_size < 16:
            raise ValueError(f"image_size must be at least 16 px, got {self.image_size}")
        if self.layout is not None and self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}; choose one of {LAYOUTS} or None to detect it")
        if not 0 <= self.max_bad_fraction <= 1:
            raise ValueError(f"max_bad_fraction must be between 0 and 1, got {self.max_bad_fraction}")


def process_file(relative_path: str, content: bytes, layout: str, params: EtlParams) -> dict:
    """Decode, validate, resize and encode one raw file (runs on Spark workers)."""
    source = classify_path(relative_path, layout)
    row = {
        "source_path": relative_path, "role": source.role, "class_name": source.class_name,
        "stem": source.stem, "status": "ok", "reason": None, "message": None,
        "content_hash": hashlib.sha256(content).hexdigest(), "width": None, "height": None,
        "png": None, "pixel_sum": None, "pixel_sq_sum": None,
    }
    if source.role == "ignored":
        return {**row, "status": "quarantined", "reason": "unexpected_location",
                "message": f"not where layout {layout!r} puts images"}
    if params.classes and source.class_name not in params.classes:
        return {**row, "status": "quarantined", "reason": "unknown_class",
                "message": f"class {source.class_name!r} is not one of {params.classes}"}
    try:
        image = decode_image(content, min_side=params.min_side)
    except ImageRejected as rejected:
        return {**row, "status": "quarantined", "reason": rejected.reason, "message": str(rejected)}
    row["width"], row["height"] = image.size
    if source.role == "mask":
        mask = mask_from_image(resize_square(image, params.image_size, resample=0))  # nearest: masks stay binary
        row["png"] = encode_png(mask * 255)
        return row
    pixels = np.asarray(resize_square(image, params.image_size), dtype=np.uint8)
    row["png"] = encode_png(pixels)
    scaled = pixels.reshape(-1, 3).astype(np.float64) / 255.0
    row["pixel_sum"], row["pixel_sq_sum"] = scaled.sum(0).tolist(), (scaled**2).sum(0).tolist()
    return row


def _process_batches(root_uri: str, layout: str, params: EtlParams):
    """The ``mapInPandas`` function: binaryFile rows in, processed rows out."""

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            rows = [process_file(path[len(root_uri):], bytes(content), layout, params)
                    for path, content in zip(batch["path"], batch["content"])]
            yield pd.DataFrame(rows, columns=list(PROCESSED_COLUMNS))

    return run


PROCESSED_SCHEMA = (
    "source_path string, role string, class_name string, stem string, status string, reason string, "
    "message string, content_hash string, width int, height int, png binary, "
    "pixel_sum array<double>, pixel_sq_sum array<double>"
)


def run_etl(spark, raw_dir: str | Path, output_root: str | Path, params: EtlParams, dataset_name: str | None = None) -> Path:
    """Run the ETL; return the dataset folder ``<output_root>/<dataset>/<fingerprint>/``.

    A dataset with the same fingerprint (same input files, same parameters) is
    reused, not rewritten. Raises ``ValueError`` when more than
    ``params.max_bad_fraction`` of the files are quarantined.
    """
    raw_dir = Path(raw_dir).resolve()
    layout = params.layout or detect_layout(raw_dir)
    dataset_name = dataset_name or raw_dir.name
    root_uri = raw_dir.as_uri().replace("file:///", "file:/") + "/"
    files = (
        spark.read.format("binaryFile")
        .option("recursiveFileLookup", "true")
        .option("ignoreCorruptFiles", "false")
        .load(str(raw_dir))
        .select("path", "content")
    )
    processed = files.mapInPandas(_process_batches(root_uri, layout, params), PROCESSED_SCHEMA)
    processed = processed.filter(~processed.source_path.rlike(r"(^|/)\."))  # hidden files are not data
    processed.persist()
    try:
        meta = _add_unread_files(processed.drop("png").toPandas(), raw_dir)
        if meta.empty:
            raise ValueError(f"no files found under {raw_dir}")
        table, quarantine, duplicate_groups = _curate(meta, params)
        fingerprint = _fingerprint(meta, params, layout)
        dataset_dir = Path(output_root) / dataset_name / fingerprint
        manifest = _manifest(dataset_name, raw_dir, layout, params, fingerprint, meta, table, quarantine, duplicate_groups)
        if (dataset_dir / "manifest.json").is_file():
            log.info("dataset %s is up to date (fingerprint %s); reusing it", dataset_name, fingerprint)
            return dataset_dir
        _write(spark, processed, table, dataset_dir, manifest)
    finally:
        processed.unpersist()
    log.info("wrote %d images to %s", len(table), dataset_dir)
    return dataset_dir


def _add_unread_files(meta: pd.DataFrame, raw_dir: Path) -> pd.DataFrame:
    """Files on disk that Spark did not hand over (it skips empty files) become quarantine rows."""
    seen = set(meta["source_path"])
    unread = []
    for path in sorted(p for p in raw_dir.rglob("*") if p.is_file()):
        relative = path.relative_to(raw_dir).as_posix()
        if relative not in seen and not is_hidden(relative):
            empty = path.stat().st_size == 0
            unread.append({"source_path": relative, "status": "quarantined", "reason": "empty" if empty else "not_read",
                           "message": "the file is empty (0 bytes)" if empty else "Spark could not read the file",
                           "content_hash": hashlib.sha256(b"").hexdigest() if empty else ""})
    return pd.concat([meta, pd.DataFrame(unread, columns=meta.columns)], ignore_index=True) if unread else meta


def _curate(meta: pd.DataFrame, params: EtlParams):
    """Pair masks, quarantine, group duplicates and split; returns (table, quarantine, duplicate groups)."""
    meta = meta[~meta["source_path"].map(is_hidden)].copy()
    ok = meta["status"] == "ok"
    originals = meta[ok & (meta["role"] == "original")].copy()
    masks = meta[ok & (meta["role"] == "mask")]
    mask_by_key = dict(zip(zip(masks["class_name"], masks["stem"]), masks["source_path"]))
    originals["mask_path"] = [mask_by_key.get(key) for key in zip(originals["class_name"], originals["stem"])]
    used_masks = set(originals["mask_path"].dropna())

    quarantine = [
        {"source_path": r.source_path, "reason": r.reason, "message": r.message}
        for r in meta[~ok].itertuples()
    ]
    quarantine += [
        {"source_path": path, "reason": "mask_without_original", "message": "no original image has this mask's class and stem"}
        for path in sorted(set(masks["source_path"]) - used_masks)
    ]
    if params.require_masks:
        missing = originals["mask_path"].isna()
        quarantine += [
            {"source_path": path, "reason": "missing_mask", "message": "masks are required and this image has none"}
            for path in originals.loc[missing, "source_path"]
        ]
        for path in originals.loc[missing, "mask_path"].dropna():
            quarantine.append({"source_path": path, "reason": "missing_mask", "message": "its original was quarantined"})
        originals = originals[~missing]

    labels_per_hash = originals.groupby("content_hash")["class_name"].nunique()
    conflicting = originals["content_hash"].map(labels_per_hash) > 1
    for r in originals[conflicting].itertuples():
        quarantine.append({"source_path": r.source_path, "reason": "conflicting_labels",
                           "message": "a byte-identical image is filed under another class"})
        if isinstance(r.mask_path, str):
            quarantine.append({"source_path": r.mask_path, "reason": "conflicting_labels", "message": "its original was quarantined"})
    originals = originals[~conflicting].copy()

    originals["group"] = originals["content_hash"]
    fractions = split_fractions(params.train_fraction, params.val_fraction, params.test_fraction,
                                params.holdouts, params.holdout_fraction)
    originals["split"] = assign_splits(originals, fractions, params.seed)
    classes = params.classes or sorted(originals["class_name"].unique())
    originals["label"] = originals["class_name"].map({name: i for i, name in enumerate(classes)})
    duplicate_groups = [
        sorted(group["source_path"]) for _, group in originals.groupby("content_hash") if len(group) > 1
    ]
    quarantine.sort(key=lambda q: q["source_path"])
    return originals.sort_values("source_path").reset_index(drop=True), quarantine, sorted(duplicate_groups)


def _fingerprint(meta: pd.DataFrame, params: EtlParams, layout: str) -> str:
    """Hash of every input file's path and content hash, and of the parameters."""
    digest = hashlib.sha256()
    for path, content_hash in sorted(zip(meta["source_path"], meta["content_hash"])):
        digest.update(f"{path}\0{content_hash}\n".encode())
    digest.update(json.dumps({**asdict(params), "layout": layout, "schema": SCHEMA_VERSION}, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def _manifest(name, raw_dir, layout, params, fingerprint, meta, table, quarantine, duplicate_groups) -> dict:
    classes = params.classes or sorted(table["class_name"].unique())
    train = table[table["split"] == "train"]
    pixels = params.image_size**2 * max(len(train), 1)
    sums = np.sum(np.stack(train["pixel_sum"]), 0) if len(train) else np.zeros(3)
    squares = np.sum(np.stack(train["pixel_sq_sum"]), 0) if len(train) else np.zeros(3)
    mean = sums / pixels
    std = np.sqrt(np.maximum(squares / pixels - mean**2, 1e-12))
    counts = table.groupby(["split", "class_name"]).size()
    n_in = len(meta[~meta["source_path"].map(is_hidden)])
    n_out = len(table) + int(table["mask_path"].notna().sum())
    if n_in != n_out + len(quarantine):
        raise AssertionError(f"ETL lost files: {n_in} in, {n_out} out, {len(quarantine)} quarantined")
    bad_fraction = len(quarantine) / n_in
    if bad_fraction > params.max_bad_fraction:
        raise ValueError(
            f"{len(quarantine)} of {n_in} files ({bad_fraction:.0%}) are unusable, more than max_bad_fraction="
            f"{params.max_bad_fraction}; first reasons: {quarantine[:5]}"
        )
    return {
        "schema_version": SCHEMA_VERSION,
        "dataset": name,
        "fingerprint": fingerprint,
        "raw_dir": str(raw_dir),
        "layout": layout,
        "parameters": asdict(params),
        "classes": list(classes),
        "image_size": params.image_size,
        "has_masks": bool(table["mask_path"].notna().any()),
        "files": {"in": n_in, "out": n_out, "quarantined": len(quarantine)},
        "counts": {split: {c: int(counts.get((split, c), 0)) for c in classes} for split in sorted(table["split"].unique())},
        "train_mean": [round(float(v), 6) for v in mean],
        "train_std": [round(float(v), 6) for v in std],
        "quarantine": quarantine,
        "duplicate_groups": duplicate_groups,
    }


def _write(spark, processed, table: pd.DataFrame, dataset_dir: Path, manifest: dict) -> None:
    """Join pixels to the curated table in Spark, write Parquet and the manifest, then move into place."""
    from pyspark.sql import functions as F

    assignments = spark.createDataFrame(
        table[["source_path", "mask_path", "label", "class_name", "split", "content_hash", "width", "height"]]
        .assign(patient_id=None).astype({"patient_id": "string"})
    )
    images = processed.filter(F.col("role") == "original").select("source_path", F.col("png").alias("image"))
    masks = processed.filter(F.col("role") == "mask").select(F.col("source_path").alias("mask_path"), F.col("png").alias("mask"))
    dataset = (
        assignments.join(images, "source_path").join(masks, "mask_path", "left")
        .select("image", "mask", "label", "class_name", "split", "source_path", "content_hash",
                "patient_id", F.col("width").alias("original_width"), F.col("height").alias("original_height"))
        .orderBy("source_path")
    )
    staging = dataset_dir.parent / f".staging-{uuid.uuid4().hex[:8]}"
    dataset.write.mode("overwrite").parquet(str(staging / "data"))
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    if dataset_dir.exists():
        shutil.rmtree(dataset_dir)
    staging.rename(dataset_dir)


def raw_folder(raw_dir: str | None, images_per_class: int, seed: int) -> Path:
    """``raw_dir`` when given (never written to); else synthetic smears generated once into the workspace."""
    from leukolab.config import workspace_path
    from leukolab.data.synthetic import generate_dataset

    if raw_dir:
        folder = workspace_path(raw_dir)
        if not folder.is_dir():
            raise FileNotFoundError(f"raw_dir {folder} does not exist")
        return folder
    return generate_dataset(workspace_path(f"data/raw/synthetic-seed{seed}-n{images_per_class}"), images_per_class, seed=seed)
