"""Spark ETL: raw smear images to a split, de-duplicated Parquet dataset with a manifest.

Two passes of Spark tasks, with the driver's curation between them:

1. Files are read with Spark's ``binaryFile`` source; decoding, validation,
   resizing, PNG encoding and hashing run in ``mapInPandas`` on the workers
   (Arrow batches of ``spark.sql.execution.arrow.maxRecordsPerBatch`` images).
   Each batch's encoded images go straight to a part file in the output's
   staging folder; only metadata returns to Spark.
2. The driver pairs masks with originals, quarantines what cannot be used,
   groups duplicates and patients, assigns splits and builds the manifest.
3. Spark tasks read the part files back, add the curated columns and write
   the dataset's Parquet files.

Pixels never reach the driver, nor the JVM after decoding: in the first pass
they go from the Python worker to disk, in the second from disk to disk. In =
out + quarantined, always. Output folders must be on a filesystem every worker
and the driver see at the same path (any local folder with ``local[*]``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from leukolab.data.leakage import leakage_report
from leukolab.data.sources import (
    ALL_IDB2_LABEL_NAMES,
    ALL_IDB2_LABEL_PATTERN,
    LAYOUTS,
    Layout,
    detect_layout,
    walk_files,
)
from leukolab.data import labels as csv_labels
from leukolab.data.splits import assign_splits, group_rows, near_duplicate_pairs, split_fractions
from leukolab.data.masks import audit_masks, check_mask_params, derive_mask, masks_manifest, nucleus_estimate, pack_bitmap
from leukolab.images import ImageRejected, decode_image, encode_png, resize_square

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3
"""2: Parquet gained ``group_id`` and ``phash``; the manifest ``near_duplicate_pairs``, ``quarantine_reasons``, ``patients``.
3: the manifest gained ``leakage``; masks are derived and audited (:mod:`leukolab.data.masks`): Parquet gained
``mask_fraction``, ``mask_raw_fraction``, ``mask_status`` and ``mask_reason`` (``mask`` is null for an implausible mask);
the manifest a ``masks`` section."""
PROCESSED_SCHEMA = (
    "source_path string, role string, class_name string, stem string, patient_id string, status string, "
    "reason string, message string, content_hash string, phash string, width int, height int, png binary, "
    "pixel_sum array<double>, pixel_sq_sum array<double>, mask_fraction double, mask_raw_fraction double, bitmap string"
)
PROCESSED_COLUMNS = tuple(column.split()[0] for column in PROCESSED_SCHEMA.split(", "))
META_SCHEMA = PROCESSED_SCHEMA.replace("png binary", "part string, png_bytes int")
"""What the first pass returns to Spark: the processed row without its PNG, the part file that holds it and its size."""
DATASET_SCHEMA = pa.schema([
    ("image", pa.binary()), ("mask", pa.binary()), ("label", pa.int64()), ("class_name", pa.string()),
    ("split", pa.string()), ("source_path", pa.string()), ("content_hash", pa.string()), ("patient_id", pa.string()),
    ("original_width", pa.int32()), ("original_height", pa.int32()), ("group_id", pa.int64()), ("phash", pa.string()),
    ("mask_fraction", pa.float64()), ("mask_raw_fraction", pa.float64()), ("mask_status", pa.string()), ("mask_reason", pa.string()),
])
DATASET_COLUMNS = tuple(DATASET_SCHEMA.names)
"""Columns of the dataset Parquet, in order; later stages read them by name."""
_MAX_PARTITION_BYTES = 128 * 1024 * 1024  # Spark's default ceiling on one read partition
_MAX_FILE_BYTES = 256 * 1024 * 1024  # images per dataset Parquet file (and held by one second-pass task)
_VALUES = np.arange(256, dtype=np.float64) / 255.0


@dataclass
class EtlParams:
    """Everything that decides the output; part of the dataset fingerprint.

    ``label_pattern``/``label_names`` are read by the ``label_in_name`` layout,
    ``patient_pattern`` by every layout (``None``: the layout's default, C-NMC
    ids for ``cnmc``). ``near_duplicate_distance`` is the largest Hamming
    distance between two 64-bit perceptual hashes that makes two images near
    duplicates (``None`` turns near-duplicate detection off). ``labels_files`` and the
    ``*_column`` options (``None``: detect) are read by ``labels_csv``; ``label_map``: class -> shared label.

    Masks (:mod:`leukolab.data.masks`): segmented images are thresholded at brightness ``mask_threshold`` (above
    JPEG noise on black), lose components under ``mask_min_component`` of the field and (``mask_fill_holes``) their
    holes; exact binary masks stay as they are. A mask with a cell fraction under ``mask_min_fraction``, or covering
    less than ``mask_min_agreement`` of the original's stained nuclei, is implausible: dropped, its image kept.
    """

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
    label_pattern: str = ALL_IDB2_LABEL_PATTERN
    label_names: dict[str, str] = field(default_factory=lambda: dict(ALL_IDB2_LABEL_NAMES))
    patient_pattern: str | None = None
    near_duplicate_distance: int | None = 4
    png_compress_level: int = 1
    labels_files: list[str] | None = None
    file_column: str | None = None
    label_column: str | None = None
    patient_column: str | None = None
    label_map: dict[str, str] | None = None
    mask_threshold: int = 48
    mask_min_component: float = 0.001
    mask_fill_holes: bool = True
    mask_min_fraction: float = 0.005
    mask_min_agreement: float = 0.5

    def __post_init__(self):
        if self.image_size < 16:
            raise ValueError(f"image_size must be at least 16 px, got {self.image_size}")
        if self.layout is not None and self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}; choose one of {LAYOUTS} or None to detect it")
        if not 0 <= self.max_bad_fraction <= 1:
            raise ValueError(f"max_bad_fraction must be between 0 and 1, got {self.max_bad_fraction}")
        if self.near_duplicate_distance is not None and not 0 <= self.near_duplicate_distance < 64:
            raise ValueError(f"near_duplicate_distance must be 0..63 bits or None, got {self.near_duplicate_distance}")
        if not 0 <= self.png_compress_level <= 9:
            raise ValueError(f"png_compress_level must be 0..9, got {self.png_compress_level}")
        check_mask_params(self)
        self.layout_for(self.layout or "imagefolder")  # checks the patterns
        self.labels_files = csv_labels.checked_label_files(self.labels_files)
        csv_labels.check_label_map(self.label_map, self.classes)

    def layout_for(self, name: str, raw_dir: Path | None = None, on_disk: list[str] | None = None) -> Layout:
        """The :class:`Layout` ``name`` with these parameters' options (``labels_csv`` reads its CSVs under ``raw_dir``)."""
        labels = None if name != "labels_csv" or raw_dir is None else csv_labels.load_csv_labels(
            raw_dir, on_disk, self.labels_files, self.file_column, self.label_column, self.patient_column)
        return Layout(name, self.label_pattern, dict(self.label_names), self.patient_pattern, labels)


def process_file(relative_path: str, content: bytes, layout: Layout, params: EtlParams) -> dict:
    """Decode, validate, resize, encode and hash one raw file (runs on Spark workers)."""
    source = layout.locate(relative_path)
    row = dict.fromkeys(PROCESSED_COLUMNS)
    row.update(source_path=relative_path, role=source.role, class_name=source.class_name, stem=source.stem,
               patient_id=source.patient_id, status="ok", content_hash=hashlib.sha256(content).hexdigest())
    if source.role in ("ignored", "label_file"):
        return {**row, "status": "quarantined" if source.role == "ignored" else "label_file",
                "reason": source.reason, "message": source.message}
    refusal = csv_labels.class_refusal(source.class_name, params.label_map, params.classes)
    if refusal:
        return {**row, "status": "quarantined", "reason": "unknown_class", "message": refusal}
    try:
        image = decode_image(content, min_side=params.min_side)
    except ImageRejected as rejected:
        return {**row, "status": "quarantined", "reason": rejected.reason, "message": str(rejected)}
    row["width"], row["height"] = image.size
    if source.role == "mask":
        mask, row["mask_raw_fraction"], row["mask_fraction"] = derive_mask(image, params.image_size, params)
        row["png"], row["bitmap"] = encode_png(mask * 255, params.png_compress_level), pack_bitmap(mask)
        return row
    resized = resize_square(image, params.image_size)
    row["png"], row["bitmap"] = encode_png(resized, params.png_compress_level), pack_bitmap(
        nucleus_estimate(resized, params.mask_min_component))
    row["phash"] = perceptual_hash(resized)
    counts = np.asarray(resized.histogram(), dtype=np.float64).reshape(3, 256)  # exact, and far faster than numpy sums
    row["pixel_sum"], row["pixel_sq_sum"] = (counts @ _VALUES).tolist(), (counts @ _VALUES**2).tolist()
    return row


def perceptual_hash(image) -> str:
    """64-bit DCT perceptual hash (``imagehash.phash``) as 16 hex digits; near duplicates differ in few bits."""
    import imagehash

    return str(imagehash.phash(image))


def _process_batches(root_uri: str, layout: Layout, params: EtlParams, parts_dir: str):
    """The first pass's ``mapInPandas`` function: binaryFile rows in, metadata out, encoded images to a part file per batch.

    Part files get unique names, so a retried or speculative task attempt
    never overwrites one that the driver's metadata points to.
    """
    root = unquote(root_uri)  # Spark's paths are URIs: a space in a name arrives as %20

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            frame = pd.DataFrame([process_file(unquote(path)[len(root):], bytes(content), layout, params)
                                  for path, content in zip(batch["path"], batch["content"])], columns=list(PROCESSED_COLUMNS))
            encoded = frame["png"].notna()
            frame["part"], frame["png_bytes"] = None, frame["png"].map(len, na_action="ignore")
            if encoded.any():
                part = f"{parts_dir}/part-{uuid.uuid4().hex}.parquet"
                pixels = pa.table({"source_path": frame.loc[encoded, "source_path"].tolist(),
                                   "png": pa.array(frame.loc[encoded, "png"].tolist(), pa.binary())})
                pq.write_table(pixels, part, compression="none", use_dictionary=False)
                frame.loc[encoded, "part"] = part
            yield frame.drop(columns="png")

    return run


def run_etl(spark, raw_dir: str | Path, output_root: str | Path, params: EtlParams, dataset_name: str | None = None,
            *, tasks_per_core: int = 3) -> Path:
    """Run the ETL; return the dataset folder ``<output_root>/<dataset>/<fingerprint>/``.

    A dataset with the same fingerprint (same input files, same parameters) is
    reused, not rewritten. Raises ``ValueError`` when more than
    ``params.max_bad_fraction`` of the files are quarantined.
    ``tasks_per_core`` sets the read partitions (``defaultParallelism`` x it,
    by bytes); it changes the speed, never the output.
    """
    raw_dir = Path(raw_dir).resolve()
    on_disk = walk_files(raw_dir)
    if not on_disk:
        raise ValueError(f"no files found under {raw_dir}")
    layout = params.layout or detect_layout(raw_dir, params.label_pattern)
    located = params.layout_for(layout, raw_dir, on_disk)
    dataset_name = dataset_name or raw_dir.name
    root_uri = raw_dir.as_uri().replace("file:///", "file:/") + "/"
    started = time.perf_counter()
    tasks = spark.sparkContext.defaultParallelism * tasks_per_core
    staging = Path(output_root).resolve() / dataset_name / f".staging-{uuid.uuid4().hex[:8]}"
    (staging / "processed").mkdir(parents=True)
    try:
        with _spark_conf(spark, _session_settings(raw_dir, on_disk, tasks)):
            from pyspark.sql import functions as F

            files = (
                spark.read.format("binaryFile")
                .option("recursiveFileLookup", "true")
                .option("ignoreCorruptFiles", "false")
                .load(str(raw_dir))
            )
            relative = F.expr(f"substring(path, {len(root_uri) + 1})")
            files = files.filter(~relative.rlike(r"(^|/)\.")).select("path", "content")  # hidden files are not data
            processed = files.mapInPandas(
                _process_batches(root_uri, located, params, str(staging / "processed")), META_SCHEMA)
            meta = _add_unread_files(processed.toPandas(), raw_dir, on_disk)
        processed_at = time.perf_counter()
        table, quarantine, duplicates = _curate(meta, params)
        csv_labels.require_two_classes(table["class_name"], layout, params.layout is None, on_disk, params.label_map)
        fingerprint = _fingerprint(meta, params, layout)
        dataset_dir = staging.parent / fingerprint
        manifest = _manifest(dataset_name, raw_dir, layout, params, fingerprint, meta, table, quarantine, duplicates)
        manifest.update(csv_labels.label_entries(located.labels, table, params.label_map))
        if (dataset_dir / "manifest.json").is_file():
            log.info("dataset %s is up to date (fingerprint %s); reusing it", dataset_name, fingerprint)
            return Path(output_root) / dataset_name / fingerprint
        curated_at = time.perf_counter()
        _write(spark, meta, table, staging / "data", tasks)
        shutil.rmtree(staging / "processed")
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if dataset_dir.exists():
            shutil.rmtree(dataset_dir)
        staging.rename(dataset_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already when the run succeeded
    log.info("wrote %d images to %s (process %.1f s, curate %.1f s, write %.1f s)", len(table), dataset_dir,
             processed_at - started, curated_at - processed_at, time.perf_counter() - curated_at)
    return Path(output_root) / dataset_name / fingerprint


def _session_settings(raw_dir: Path, on_disk: list[str], partitions: int) -> dict[str, str]:
    """Spark SQL settings for one run: the input cut into about ``partitions`` parts of equal bytes, and Arrow
    for the driver's small tables.

    Spark's defaults count 4 MB of "open cost" per file, which turns 2,000
    small JPEGs into ~60 tasks whose fixed cost (a Python round trip each)
    outweighs their work.
    """
    open_cost = 8 * 1024
    total = sum((raw_dir / path).stat().st_size + open_cost for path in on_disk)
    per_partition = min(_MAX_PARTITION_BYTES, max(open_cost, math.ceil(total / max(partitions, 1))))
    return {"spark.sql.files.openCostInBytes": str(open_cost), "spark.sql.files.maxPartitionBytes": str(per_partition),
            "spark.sql.execution.arrow.pyspark.enabled": "true"}


@contextlib.contextmanager
def _spark_conf(spark, settings: dict[str, str]):
    """Set session SQL settings for the duration of the block, then restore them."""
    before = {key: spark.conf.get(key, None) for key in settings}
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


def _add_unread_files(meta: pd.DataFrame, raw_dir: Path, on_disk: list[str]) -> pd.DataFrame:
    """Files on disk that Spark did not hand over become quarantine rows.

    Spark's listing skips empty files and names starting with ``_``.
    """
    seen = set(meta["source_path"])
    unread = []
    for relative in on_disk:
        if relative in seen:
            continue
        content = (raw_dir / relative).read_bytes()
        unread.append({"source_path": relative, "status": "quarantined", "reason": "empty" if not content else "not_read",
                       "message": "the file is empty (0 bytes)" if not content else
                       "Spark's file listing skips this file (names starting with '_' are skipped)",
                       "content_hash": hashlib.sha256(content).hexdigest()})
    return pd.concat([meta, pd.DataFrame(unread, columns=meta.columns)], ignore_index=True) if unread else meta


@dataclass
class Duplicates:
    """Exact and near duplicates among the curated originals."""

    groups: list[list[str]]
    """Source paths that are byte-identical or near duplicates of each other (connected), each group sorted."""
    near_pairs: list[dict]
    """``{"a", "b", "distance"}`` for every near-duplicate pair of different bytes."""


def _curate(meta: pd.DataFrame, params: EtlParams) -> tuple[pd.DataFrame, list[dict], Duplicates]:
    """Pair masks, quarantine, group duplicates and patients, and split."""
    ok = meta["status"] == "ok"
    originals = meta[ok & (meta["role"] == "original")].copy()
    masks = meta[ok & (meta["role"] == "mask")]
    mask_by_key = dict(zip(zip(masks["class_name"], masks["stem"]), masks["source_path"]))
    originals["mask_path"] = [mask_by_key.get(key) for key in zip(originals["class_name"], originals["stem"])]
    used_masks = set(originals["mask_path"].dropna())
    originals = csv_labels.apply_label_map(originals, params.label_map)  # masks paired by the layout's classes

    quarantine = [
        {"source_path": r.source_path, "reason": r.reason, "message": r.message}
        for r in meta[meta["status"] == "quarantined"].itertuples()
    ]
    any_original = set(zip(meta.loc[meta["role"] == "original", "class_name"], meta.loc[meta["role"] == "original", "stem"]))
    quarantine += [
        {"source_path": r.source_path, "reason": "mask_without_original",
         "message": "its original was quarantined" if (r.class_name, r.stem) in any_original
         else "no original image has this mask's class and stem"}
        for r in masks.itertuples() if r.source_path not in used_masks
    ]
    if params.require_masks:
        missing = originals["mask_path"].isna()
        quarantine += [
            {"source_path": path, "reason": "missing_mask", "message": "masks are required and this image has none"}
            for path in originals.loc[missing, "source_path"]
        ]
        originals = originals[~missing]

    labels_per_hash = originals.groupby("content_hash")["class_name"].nunique()
    conflicting = originals["content_hash"].map(labels_per_hash) > 1
    for r in originals[conflicting].itertuples():
        quarantine.append({"source_path": r.source_path, "reason": "conflicting_labels",
                           "message": "a byte-identical image is filed under another class"})
        if isinstance(r.mask_path, str):
            quarantine.append({"source_path": r.mask_path, "reason": "conflicting_labels", "message": "its original was quarantined"})
    originals = audit_masks(originals[~conflicting].sort_values("source_path").reset_index(drop=True), masks, params)

    near = [] if params.near_duplicate_distance is None else near_duplicate_pairs(
        list(originals["phash"]), params.near_duplicate_distance)
    duplicate_group = group_rows(originals.assign(patient_id=None), near)
    originals["group_id"] = group_rows(originals, near)  # duplicates and patients together
    fractions = split_fractions(params.train_fraction, params.val_fraction, params.test_fraction,
                                params.holdouts, params.holdout_fraction)
    originals["split"] = assign_splits(originals.assign(group=originals["group_id"]), fractions, params.seed)
    classes = params.classes or sorted(originals["class_name"].unique())
    originals["label"] = originals["class_name"].map({name: i for i, name in enumerate(classes)})
    paths, hashes = originals["source_path"], originals["content_hash"]
    duplicates = Duplicates(
        groups=sorted(sorted(group) for group in paths.groupby(duplicate_group).agg(list) if len(group) > 1),
        near_pairs=[{"a": paths[i], "b": paths[j], "distance": d} for i, j, d in near if hashes[i] != hashes[j]],
    )
    quarantine.sort(key=lambda q: q["source_path"])
    return originals, quarantine, duplicates


def _fingerprint(meta: pd.DataFrame, params: EtlParams, layout: str) -> str:
    """Hash of every input file's path and content hash, and of the parameters."""
    digest = hashlib.sha256()
    for path, content_hash in sorted(zip(meta["source_path"], meta["content_hash"])):
        digest.update(f"{path}\0{content_hash}\n".encode())
    digest.update(json.dumps({**asdict(params), "layout": layout, "schema": SCHEMA_VERSION}, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def _manifest(name, raw_dir, layout, params, fingerprint, meta, table, quarantine, duplicates: Duplicates) -> dict:
    classes = params.classes or sorted(table["class_name"].unique())
    train = table[table["split"] == "train"]
    pixels = params.image_size**2 * max(len(train), 1)
    sums = np.sum(np.stack(train["pixel_sum"]), 0) if len(train) else np.zeros(3)
    squares = np.sum(np.stack(train["pixel_sq_sum"]), 0) if len(train) else np.zeros(3)
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
    with_patient = table[table["patient_id"].notna()]
    return {
        "schema_version": SCHEMA_VERSION,
        "dataset": name,
        "fingerprint": fingerprint,
        "raw_dir": str(raw_dir),
        "layout": layout,
        "parameters": asdict(params),
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
    }


def _write(spark, meta: pd.DataFrame, table: pd.DataFrame, data_dir: Path, tasks: int) -> None:
    """The second pass: Spark tasks read the first pass's part files, add the curated columns and write ``data_dir``.

    Part files are packed into output files of about equal bytes: ``tasks``
    of them, or more where that keeps each under ``_MAX_FILE_BYTES``. Each
    task gets only the metadata of its own rows.
    """
    part_of = dict(zip(meta["source_path"], meta["part"]))
    used = table["mask_path"].where(table["mask_status"] == "ok")  # implausible masks stay out of the dataset
    rows = table.assign(mask_path=used, mask_part=used.map(part_of), original_width=table["width"].astype("int32"),
                        original_height=table["height"].astype("int32"))
    rows = rows[["part", "mask_part", "mask_path", *(c for c in DATASET_COLUMNS if c not in ("image", "mask"))]]
    data_dir.mkdir()
    sizes = table.groupby("part")["png_bytes"].sum()
    files = max(tasks, math.ceil(sizes.sum() / _MAX_FILE_BYTES))
    jobs = [(index, str(data_dir), rows[rows["part"].isin(parts)].to_dict("list"))
            for index, parts in enumerate(_pack(sizes, files))]
    written = spark.sparkContext.parallelize(jobs, max(len(jobs), 1)).map(_write_dataset_part).sum()
    if written != len(table):
        raise AssertionError(f"the dataset has {written} rows, the curated table {len(table)}")


def _pack(sizes: pd.Series, bins: int) -> list[list[str]]:
    """Items (index) into at most ``bins`` bins of about equal total size: largest first, each to the emptiest bin."""
    loads, contents = [0] * min(bins, len(sizes)), [[] for _ in range(min(bins, len(sizes)))]
    for item, size in sorted(sizes.items(), key=lambda pair: (-pair[1], pair[0])):
        emptiest = loads.index(min(loads))
        loads[emptiest] += size
        contents[emptiest].append(item)
    return contents


def _write_dataset_part(job) -> int:
    """One second-pass task: its rows' images (and masks) from their part files, with the curated columns, as one Parquet file.

    The pixels stay in Arrow buffers: read, gathered with ``take``, written.
    """
    index, data_dir, rows = job
    rows = pd.DataFrame(rows).sort_values("source_path", ignore_index=True)
    columns = {name: pa.array(rows[name], DATASET_SCHEMA.field(name).type, from_pandas=True)
               for name in DATASET_COLUMNS if name not in ("image", "mask")}
    columns["image"] = _gather_pixels(rows["part"], rows["source_path"])
    columns["mask"] = _gather_pixels(rows["mask_part"], rows["mask_path"])
    table = pa.table([columns[name] for name in DATASET_COLUMNS], schema=DATASET_SCHEMA)
    # PNG bytes do not compress further and every blob is unique: no codec, and dictionaries only for the small columns.
    path, partial = f"{data_dir}/part-{index:05d}.parquet", f"{data_dir}/.part-{index:05d}-{uuid.uuid4().hex}"
    pq.write_table(table, partial, compression="none", use_dictionary=[c for c in DATASET_COLUMNS if c not in ("image", "mask")])
    os.replace(partial, path)  # a retried or speculative attempt replaces the file whole
    return table.num_rows


def _gather_pixels(parts: pd.Series, paths: pd.Series) -> pa.ChunkedArray | pa.Array:
    """The PNG bytes of ``paths`` (null where the path is null), in their order, from the first-pass part files that hold them."""
    known = paths.notna()
    if not known.any():
        return pa.nulls(len(paths), pa.binary())
    pixels = pa.concat_tables([pq.ParquetFile(part).read(columns=["source_path", "png"]) for part in sorted(set(parts[known]))])
    positions = pd.Index(pixels.column("source_path").to_pylist()).get_indexer(paths.where(known, None))
    if (positions[known.to_numpy()] < 0).any():
        raise AssertionError("a curated image is missing from the first pass's part files")
    return pixels.column("png").take(pa.array(positions, pa.int64(), mask=~known.to_numpy()))

