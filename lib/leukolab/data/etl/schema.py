"""The ETL's tables: what its first pass returns, and the columns of the dataset Parquet later stages read."""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 4
"""2: Parquet gained ``group_id`` and ``phash``; the manifest ``near_duplicate_pairs``, ``quarantine_reasons``, ``patients``.
3: the manifest gained ``leakage``; masks are derived and audited (:mod:`leukolab.data.etl.masks`): Parquet gained
``mask_fraction``, ``mask_raw_fraction``, ``mask_status`` and ``mask_reason`` (``mask`` is null for an implausible mask);
the manifest a ``masks`` section.
4: Parquet gained ``acquisition_split`` (``embargo``: withheld from training), ``acquisition_block`` and
``acquisition_rank`` (null without an acquisition key); the manifest an ``acquisition`` section."""
PIXEL_SUMS = tuple(f"pixel_{kind}_{channel}" for kind in ("sum", "sq_sum") for channel in "rgb")
"""Per image: the sums of its resized pixels (0-1) and of their squares, per channel; scalars, not arrays (two arrays
per row made the driver's metadata 62 MB at 100,000 smears; six scalars, 39 MB)."""
PROCESSED_SCHEMA = (
    "source_path string, role string, class_name string, stem string, patient_id string, status string, "
    "reason string, message string, content_hash string, phash string, width int, height int, png binary, "
    + ", ".join(f"{name} double" for name in PIXEL_SUMS)
    + ", mask_fraction double, mask_raw_fraction double, bitmap string"
)
PROCESSED_COLUMNS = tuple(column.split()[0] for column in PROCESSED_SCHEMA.split(", "))
META_SCHEMA = PROCESSED_SCHEMA.replace("png binary", "part string, png_bytes int")
"""What the first pass returns to Spark: the processed row without its PNG, the part file that holds it and its size."""
DISTINCT_META_COLUMNS = ("source_path", "stem", "content_hash", "phash")
"""Columns of :data:`META_SCHEMA` whose values differ from file to file (where set)."""
DATASET_SCHEMA = pa.schema([
    ("image", pa.binary()), ("mask", pa.binary()), ("label", pa.int64()), ("class_name", pa.string()),
    ("split", pa.string()), ("source_path", pa.string()), ("content_hash", pa.string()), ("patient_id", pa.string()),
    ("original_width", pa.int32()), ("original_height", pa.int32()), ("group_id", pa.int64()), ("phash", pa.string()),
    ("mask_fraction", pa.float64()), ("mask_raw_fraction", pa.float64()), ("mask_status", pa.string()), ("mask_reason", pa.string()),
    ("acquisition_split", pa.string()), ("acquisition_block", pa.int64()), ("acquisition_rank", pa.int64()),
])
DATASET_COLUMNS = tuple(DATASET_SCHEMA.names)
"""Columns of the dataset Parquet, in order; later stages read them by name."""
