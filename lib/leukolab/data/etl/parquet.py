"""The ETL's second pass: Spark tasks gather the curated rows' pixels from the part files into the dataset Parquet."""

from __future__ import annotations

import math
import os
import uuid
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from leukolab.data.etl.memory import return_freed_arrow_memory
from leukolab.data.etl.schema import DATASET_COLUMNS, DATASET_SCHEMA

_MAX_FILE_BYTES = 256 * 1024 * 1024  # images per dataset Parquet file (and held by one second-pass task)
_CURATED_CHUNK = 2048  # curated rows converted to Arrow at once
_CURATED_SCHEMA = pa.schema([pa.field(name, pa.string()) for name in ("part", "mask_part", "mask_path")]
                            + [field for field in DATASET_SCHEMA if field.name not in ("image", "mask")])
"""The curated rows' file: where each row's image and mask are, then the dataset's columns but the pixels."""
ROW_GROUP_ROWS = 512
"""Rows per Parquet row group: the unit a training stream reads and shards (leukolab.data.reading.streaming), a few
MB."""


def write_dataset(spark, meta: pd.DataFrame, table: pd.DataFrame, parts_dir: Path, data_dir: Path, tasks: int) -> None:
    """The second pass: Spark tasks read the first pass's part files (``part``: a name in ``parts_dir``), add the
    curated columns and write ``data_dir``.

    Part files are packed into output files of about equal bytes: ``tasks``
    of them, or more where that keeps each under ``_MAX_FILE_BYTES``. The
    curated rows go to one Parquet file beside ``data_dir``, from which each
    task reads only its own rows (rather than the driver pickling them all into the tasks).
    """
    masks = meta[meta["role"] == "mask"]
    part_of = dict(zip(masks["source_path"], masks["part"]))
    curated = data_dir.parent / f".curated-{uuid.uuid4().hex}.parquet"
    with pq.ParquetWriter(curated, _CURATED_SCHEMA) as writer:
        # By chunks: written whole, the Arrow copy raised the driver's peak by 95 MB at 100,000 smears; by chunks of
        # 2,048 converted on one thread, 9 MB (by 8,192 on Arrow's threads: 21 MB).
        for start in range(0, len(table), _CURATED_CHUNK):
            writer.write_table(_curated_rows(table.iloc[start:start + _CURATED_CHUNK], part_of))
            return_freed_arrow_memory()
    data_dir.mkdir()
    jobs = [(index, str(parts_dir), str(data_dir), str(curated), parts) for index, parts in enumerate(output_files(table, tasks))]
    try:
        written = spark.sparkContext.parallelize(jobs, max(len(jobs), 1)).map(_write_dataset_part).sum()
    finally:
        curated.unlink()
    if written != len(table):
        raise AssertionError(f"the dataset has {written} rows, the curated table {len(table)}")


def _curated_rows(table: pd.DataFrame, part_of: dict[str, str]) -> pa.Table:
    """Curated rows as the curated rows' file holds them (``part_of``: each mask file's part file); masks found
    implausible are left out."""
    used = table["mask_path"].where(table["mask_status"] == "ok")
    rows = table.assign(mask_path=used, mask_part=used.map(part_of), original_width=table["width"].astype("int32"),
                        original_height=table["height"].astype("int32"))
    return pa.Table.from_pandas(rows[_CURATED_SCHEMA.names], _CURATED_SCHEMA, preserve_index=False, nthreads=1)


def output_files(table: pd.DataFrame, tasks: int) -> list[list[str]]:
    """The part files (``part``) whose curated rows each dataset Parquet file holds: about equal bytes
    (``png_bytes``), ``tasks`` files or more where that keeps each under ``_MAX_FILE_BYTES``.

    The same rows make the same files on every run: part files are named at random and many hold equal bytes (a
    batch of 64 images each), so they are ordered by their first ``source_path``, not by name. A training stream
    reads in the files' order, so a rebuilt dataset trains as the first did.
    """
    parts = table.groupby("part").agg(size=("png_bytes", "sum"), first=("source_path", "min")).sort_values("first")
    return _pack(parts["size"], max(tasks, math.ceil(parts["size"].sum() / _MAX_FILE_BYTES)))


def _pack(sizes: pd.Series, bins: int) -> list[list[str]]:
    """Items (index) into at most ``bins`` bins of about equal total size: largest first (equal sizes in the order
    given), each to the emptiest bin."""
    loads, contents = [0] * min(bins, len(sizes)), [[] for _ in range(min(bins, len(sizes)))]
    for item, size in sorted(sizes.items(), key=lambda pair: -pair[1]):
        emptiest = loads.index(min(loads))
        loads[emptiest] += size
        contents[emptiest].append(item)
    return contents


def _write_dataset_part(job) -> int:
    """One second-pass task: its rows' images (and masks) from their part files, with the curated columns, as one Parquet file.

    The pixels stay in Arrow buffers: read, gathered with ``take``, written.
    """
    index, parts_dir, data_dir, curated, parts = job
    rows = pq.read_table(curated, filters=[("part", "in", parts)]).sort_by("source_path")
    located = rows.select(["part", "source_path", "mask_part", "mask_path"]).to_pandas()
    columns = {name: rows.column(name) for name in DATASET_COLUMNS if name not in ("image", "mask")}
    columns["image"] = _gather_pixels(parts_dir, located["part"], located["source_path"])
    columns["mask"] = _gather_pixels(parts_dir, located["mask_part"], located["mask_path"])
    table = pa.table([columns[name] for name in DATASET_COLUMNS], schema=DATASET_SCHEMA)
    # PNG bytes do not compress further and every blob is unique: no codec, and dictionaries only for the small columns.
    path, partial = f"{data_dir}/part-{index:05d}.parquet", f"{data_dir}/.part-{index:05d}-{uuid.uuid4().hex}"
    pq.write_table(table, partial, row_group_size=ROW_GROUP_ROWS, compression="none", use_dictionary=[c for c in DATASET_COLUMNS if c not in ("image", "mask")])
    os.replace(partial, path)  # a retried or speculative attempt replaces the file whole
    return table.num_rows


def _gather_pixels(parts_dir: str, parts: pd.Series, paths: pd.Series) -> pa.ChunkedArray | pa.Array:
    """The PNG bytes of ``paths`` (null where the path is null), in their order, from the first-pass part files
    (``parts``: names in ``parts_dir``) that hold them."""
    known = paths.notna()
    if not known.any():
        return pa.nulls(len(paths), pa.binary())
    pixels = pa.concat_tables([pq.ParquetFile(f"{parts_dir}/{part}").read(columns=["source_path", "png"])
                               for part in sorted(set(parts[known]))])
    positions = pd.Index(pixels.column("source_path").to_pylist()).get_indexer(paths.where(known, None))
    if (positions[known.to_numpy()] < 0).any():
        raise AssertionError("a curated image is missing from the first pass's part files")
    return pixels.column("png").take(pa.array(positions, pa.int64(), mask=~known.to_numpy()))
