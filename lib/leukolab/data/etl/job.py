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
import shutil
import time
import uuid
from collections.abc import Collection, Iterable, Iterator
from functools import partial
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from leukolab.data.etl import labels as csv_labels
from leukolab.data.etl.curation import build_manifest, curate, fingerprint
from leukolab.data.etl.extra_sources import add_extra_rows, resolve_extra_sources
from leukolab.data.etl.masks import derive_mask, nucleus_estimate, pack_bitmap
from leukolab.data.etl.memory import arrow_through_malloc, arrow_to_pandas, large_allocations_returned, return_freed_memory
from leukolab.data.etl.near_duplicates import find_near_duplicates
from leukolab.data.etl.params import EtlParams
from leukolab.data.etl.parquet import write_dataset
from leukolab.data.etl.raw_files import walk_files
from leukolab.data.etl.schema import DISTINCT_META_COLUMNS, META_SCHEMA, PIXEL_SUMS, PROCESSED_COLUMNS
from leukolab.data.etl.sources import Layout, detect_layout
from leukolab.images import ImageRejected, decode_image, encode_png, resize_square

log = logging.getLogger(__name__)

_MAX_PARTITION_BYTES = 128 * 1024 * 1024  # Spark's default ceiling on one read partition
_VALUES = np.arange(256, dtype=np.float64) / 255.0


def process_file(relative_path: str, content: bytes, layout: Layout, params: EtlParams,
                 masked: Collection[tuple[str, str]] | None = None) -> dict:
    """Decode, validate, resize, encode and hash one raw file (runs on Spark workers).

    ``masked``: the ``(class_name, stem)`` of every mask file (:func:`mask_keys`). Only an original with a mask
    gets its ``stem`` (what pairs it) and the colour estimate of its nuclei that the mask audit compares
    (``bitmap``); ``None``: every original.
    """
    source = layout.locate(relative_path)
    row = dict.fromkeys(PROCESSED_COLUMNS)
    pairable = source.role != "original" or masked is None or (source.class_name, source.stem) in masked
    row.update(source_path=relative_path, role=source.role, class_name=source.class_name,
               stem=source.stem if pairable else None,  # only where a mask can pair: 6 MB less at 100,000 smears
               patient_id=source.patient_id, status="ok", content_hash=hashlib.sha256(content).hexdigest())
    if source.role in ("ignored", "label_file"):
        return {**row, "status": "quarantined" if source.role == "ignored" else "label_file",
                "reason": source.reason, "message": source.message}
    refusal = csv_labels.class_refusal(source.class_name, params.label_map, params.classes)
    if refusal:
        return {**row, "status": "quarantined", "reason": "unknown_class", "message": refusal}
    try:
        image = decode_image(content, params.image_rules)
    except ImageRejected as rejected:
        return {**row, "status": "quarantined", "reason": rejected.reason, "message": str(rejected)}
    row["width"], row["height"] = image.size
    if source.role == "mask":
        mask, row["mask_raw_fraction"], row["mask_fraction"] = derive_mask(image, params.image_size, params)
        row["png"], row["bitmap"] = encode_png(mask * 255, params.png_compress_level), pack_bitmap(mask)
        return row
    resized = resize_square(image, params.image_size)
    row["png"] = encode_png(resized, params.png_compress_level)
    if pairable:
        row["bitmap"] = pack_bitmap(nucleus_estimate(resized, params.mask_min_component))
    row["phash"] = perceptual_hash(resized)
    counts = np.asarray(resized.histogram(), dtype=np.float64).reshape(3, 256)  # exact, and far faster than numpy sums
    row.update(zip(PIXEL_SUMS, [*(counts @ _VALUES).tolist(), *(counts @ _VALUES**2).tolist()]))
    return row


def mask_keys(layout: Layout, relative_paths: Iterable[str]) -> frozenset[tuple[str, str]]:
    """``(class_name, stem)`` of the mask files among ``relative_paths``: the key that pairs a mask with its original."""
    located = (layout.locate(path) for path in relative_paths)
    return frozenset((source.class_name, source.stem) for source in located if source.role == "mask")


def perceptual_hash(image) -> str:
    """64-bit DCT perceptual hash (``imagehash.phash``) as 16 hex digits; near duplicates differ in few bits."""
    import imagehash

    return str(imagehash.phash(image))


def _process_batches(root_uri: str, layout: Layout, params: EtlParams, parts_dir: str, masked: frozenset,
                     prefix: str = ""):
    """The first pass's ``mapInPandas`` function: binaryFile rows in, metadata out, encoded images to a part file per batch.

    Part files get unique names, so a retried or speculative task attempt
    never overwrites one that the driver's metadata points to; a row's ``part`` is its file's name in ``parts_dir``.
    ``prefix`` starts every ``source_path`` (an extra source's rows: :mod:`leukolab.data.etl.extra_sources`).
    """
    root = unquote(root_uri)  # Spark's paths are URIs: a space in a name arrives as %20

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            frame = pd.DataFrame([process_file(unquote(path)[len(root):], bytes(content), layout, params, masked)
                                  for path, content in zip(batch["path"], batch["content"])], columns=list(PROCESSED_COLUMNS))
            frame["source_path"] = prefix + frame["source_path"]
            encoded = frame["png"].notna()
            frame["part"], frame["png_bytes"] = None, frame["png"].map(len, na_action="ignore")
            if encoded.any():
                part = f"part-{uuid.uuid4().hex}.parquet"
                pixels = pa.table({"source_path": frame.loc[encoded, "source_path"].tolist(),
                                   "png": pa.array(frame.loc[encoded, "png"].tolist(), pa.binary())})
                pq.write_table(pixels, f"{parts_dir}/{part}", compression="none", use_dictionary=False)
                frame.loc[encoded, "part"] = part
            yield frame.drop(columns="png")

    return run


@large_allocations_returned()
def run_etl(spark, raw_dir: str | Path, output_root: str | Path, params: EtlParams, dataset_name: str | None = None,
            *, tasks_per_core: int = 3, extra_sources: list[str] | None = None) -> Path:
    """Run the ETL; return the dataset folder ``<output_root>/<dataset>/<fingerprint>/``.

    A dataset with the same fingerprint (same input files, same parameters) is
    reused, not rewritten. Raises ``ValueError`` when more than
    ``params.max_bad_fraction`` of the files are quarantined.
    ``tasks_per_core`` sets the read partitions (``defaultParallelism`` x it,
    by bytes); it changes the speed, never the output. ``extra_sources``: ``labels_csv`` folders whose images
    join ``train`` only (:mod:`leukolab.data.etl.extra_sources`); their files are part of the fingerprint.
    """
    raw_dir = Path(raw_dir).resolve()
    on_disk = walk_files(raw_dir)
    if not on_disk:
        raise ValueError(f"no files found under {raw_dir}")
    layout = params.layout or detect_layout(raw_dir, params.label_pattern)
    if params.acquisition_column is not None and layout != "labels_csv":
        raise ValueError(f"acquisition_column {params.acquisition_column!r} names a column of the labels_csv layout's "
                         f"label files, but this dataset's layout is {layout!r}: leave it unset to order images by the "
                         "last number in their file names")
    located = params.layout_for(layout, raw_dir, on_disk)
    dataset_name = dataset_name or raw_dir.name
    extras = resolve_extra_sources(extra_sources, params)
    started = time.perf_counter()
    tasks = spark.sparkContext.defaultParallelism * tasks_per_core
    staging = Path(output_root).resolve() / dataset_name / f".staging-{uuid.uuid4().hex[:8]}"
    (staging / "processed").mkdir(parents=True)
    try:
        settings, masked = _session_settings(raw_dir, on_disk, tasks), mask_keys(located, on_disk)
        del on_disk  # listed again after the first pass, rather than held through it: 9 MB at 100,000 smears
        with _spark_conf(spark, settings):
            meta = _first_pass(spark, raw_dir, located, params, staging / "processed", masked)
            if params.acquisition_column is not None:
                meta["acquisition_key"] = meta["source_path"].map(located.labels.acquisition_keys)
            extra_metas = [_first_pass(spark, extra.root, extra.layout, extra.params, staging / "processed",
                                       mask_keys(extra.layout, extra.files), extra.prefix) for extra in extras]
        processed_at = time.perf_counter()
        table, quarantine, duplicates = curate(meta, params, partial(find_near_duplicates, spark=spark),
                                               keep_in_meta=("source_path", "role", "status", "content_hash", "part"))
        return_freed_memory()
        csv_labels.require_two_classes(table["class_name"], layout, params.layout is None, meta["source_path"],
                                       params.label_map)
        if extras:
            table, quarantine, extra_entries = add_extra_rows(table, quarantine, extra_metas, extras, params)
            meta = pd.concat([meta, *extra_metas], ignore_index=True)
        dataset_fingerprint = fingerprint(meta, params, layout)
        dataset_dir = staging.parent / dataset_fingerprint
        manifest = build_manifest(dataset_name, raw_dir, layout, params, dataset_fingerprint, meta, table, quarantine, duplicates)
        return_freed_memory()
        manifest.update(csv_labels.label_entries(located.labels, table, params.label_map))
        if extras:
            manifest["extra_sources"] = extra_entries
        if (dataset_dir / "manifest.json").is_file():
            log.info("dataset %s is up to date (fingerprint %s); reusing it", dataset_name, dataset_fingerprint)
            return Path(output_root) / dataset_name / dataset_fingerprint
        curated_at = time.perf_counter()
        write_dataset(spark, meta, table, staging / "processed", staging / "data", tasks)
        shutil.rmtree(staging / "processed")
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if dataset_dir.exists():
            shutil.rmtree(dataset_dir)
        staging.rename(dataset_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already when the run succeeded
    log.info("wrote %d images to %s (process %.1f s, curate %.1f s, write %.1f s)", len(table), dataset_dir,
             processed_at - started, curated_at - processed_at, time.perf_counter() - curated_at)
    return Path(output_root) / dataset_name / dataset_fingerprint


def _first_pass(spark, root: Path, layout: Layout, params: EtlParams, parts_dir: Path, masked: frozenset,
                prefix: str = "") -> pd.DataFrame:
    """The first pass over one folder: every file's metadata (``source_path`` starting with ``prefix``), its
    encoded image in a part file under ``parts_dir``; ``masked``: :func:`mask_keys` of its files."""
    from pyspark.sql import functions as F

    root_uri = root.as_uri().replace("file:///", "file:/") + "/"
    files = (
        spark.read.format("binaryFile")
        .option("recursiveFileLookup", "true")
        .option("ignoreCorruptFiles", "false")
        .load(str(root))
    )
    relative = F.expr(f"substring(path, {len(root_uri) + 1})")
    files = files.filter(~relative.rlike(r"(^|/)\.")).select("path", "content")  # hidden files are not data
    processed = files.mapInPandas(
        _process_batches(root_uri, layout, params, str(parts_dir), masked, prefix), META_SCHEMA)
    # Through Arrow, each column's buffers freed as it is converted (selfDestruct gives every column its own): a
    # lower peak than toPandas's, which holds the batches, the table and the pandas columns at once.
    with arrow_through_malloc():
        meta = arrow_to_pandas(processed.toArrow(), distinct=DISTINCT_META_COLUMNS)
    return _add_unread_files(meta, root, walk_files(root), prefix)


def _session_settings(raw_dir: Path, on_disk: list[str], partitions: int) -> dict[str, str]:
    """Spark SQL settings for one run: the input cut into about ``partitions`` parts of equal bytes, and the
    collected metadata in one buffer per column (``selfDestruct``: :func:`_first_pass`).

    Spark's defaults count 4 MB of "open cost" per file, which turns 2,000
    small JPEGs into ~60 tasks whose fixed cost (a Python round trip each)
    outweighs their work.
    """
    open_cost = 8 * 1024
    total = sum((raw_dir / path).stat().st_size + open_cost for path in on_disk)
    per_partition = min(_MAX_PARTITION_BYTES, max(open_cost, math.ceil(total / max(partitions, 1))))
    return {"spark.sql.files.openCostInBytes": str(open_cost), "spark.sql.files.maxPartitionBytes": str(per_partition),
            "spark.sql.execution.arrow.pyspark.selfDestruct.enabled": "true"}


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


def _add_unread_files(meta: pd.DataFrame, raw_dir: Path, on_disk: list[str], prefix: str = "") -> pd.DataFrame:
    """Files on disk that Spark did not hand over become quarantine rows.

    Spark's listing skips empty files and names starting with ``_``.
    """
    seen = set(meta["source_path"])
    unread = []
    for relative in on_disk:
        if prefix + relative in seen:
            continue
        content = (raw_dir / relative).read_bytes()
        unread.append({"source_path": prefix + relative, "status": "quarantined", "reason": "empty" if not content else "not_read",
                       "message": "the file is empty (0 bytes)" if not content else
                       "Spark's file listing skips this file (names starting with '_' are skipped)",
                       "content_hash": hashlib.sha256(content).hexdigest()})
    return pd.concat([meta, pd.DataFrame(unread, columns=meta.columns)], ignore_index=True) if unread else meta
