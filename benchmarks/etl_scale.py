"""The ETL's cost per smear, for sizing a cluster: CPU time on Spark ``local[1]``, and what the driver does alone.

1. ``run_etl`` on ``local[1]`` (one core: CPU per smear is what a cluster core does) over ``--smears`` and half as
   many synthetic smears (raw JPEGs of ``--raw-size`` px with their segmentation masks, as the pipeline reads them),
   after a warm-up run. CPU is the user + system time of the whole process tree (this driver, the JVM, its Python
   workers), which other jobs on a shared machine do not change; the difference between the two sizes gives the
   cost per smear without the per-run fixed costs.
2. The driver's share, which more executors do not shrink: the first pass's metadata rows collected to the driver
   (bytes per smear), ``curate`` (pairing, quarantine, duplicate groups, splits) on that metadata replicated to
   ``--driver-sizes`` smears with near-duplicate search off, and ``near_duplicate_pairs`` (brute force, O(n^2)) alone.

    python benchmarks/etl_scale.py                 # about 3 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from etl import cpu_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smears", type=int, default=400, help="smears of the larger run (split over 4 classes)")
    parser.add_argument("--raw-size", type=int, default=256, help="side of the raw JPEGs")
    parser.add_argument("--image-size", type=int, default=96, help="side of the processed images (the real profile's)")
    parser.add_argument("--driver-sizes", default="20000,80000", help="smears for the driver-side timings")
    parser.add_argument("--workdir", help="default: a new temporary folder")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from leukolab.data.etl.job import run_etl
    from leukolab.data.etl.params import EtlParams
    from leukolab.data.spark import spark_session
    from leukolab.data.synthetic.folder import generate_dataset

    work = Path(args.workdir or tempfile.mkdtemp(prefix="leukolab-bench-etl-scale-"))
    params = EtlParams(image_size=args.image_size)
    print(f"{work}; {len(os.sched_getaffinity(0))} CPUs, load average {os.getloadavg()[0]:.2f}; raw {args.raw_size} px "
          f"JPEGs with masks, processed to {args.image_size} px")
    sizes = {"warm-up": 40, "half": args.smears // 2, "full": args.smears}
    raws = {name: generate_dataset(work / f"raw-{n}", n // 4, image_size=args.raw_size, seed=1) for name, n in sizes.items()}
    started = time.perf_counter()
    spark = spark_session("local[1]")
    print(f"Spark local[1] session start {time.perf_counter() - started:.1f} s, CPU so far {cpu_seconds():.1f} s")
    cpu = {}
    for name, raw in raws.items():
        c0, t0 = cpu_seconds(), time.perf_counter()
        dataset = run_etl(spark, raw, work / f"out-{name}", params)
        cpu[name], wall = cpu_seconds() - c0, time.perf_counter() - t0
        print(f"  {name:<8} {sizes[name]:5d} smears  wall {wall:6.1f} s  CPU {cpu[name]:6.1f} s  "
              f"= {1000 * cpu[name] / sizes[name]:5.1f} ms/smear  (load {os.getloadavg()[0]:.1f})")
    spark.stop()
    marginal = 1000 * (cpu["full"] - cpu["half"]) / (sizes["full"] - sizes["half"])
    fixed = cpu["full"] - marginal * sizes["full"] / 1000
    print(f"ETL CPU per smear (image + mask), local[1]: {marginal:.1f} ms marginal; fixed per run {fixed:.1f} s")
    print(f"  dataset written: {sum(f.stat().st_size for f in dataset.rglob('*.parquet')) / sizes['full'] / 1e3:.1f} kB/smear")
    driver_side(raws["full"], params, [int(n) for n in args.driver_sizes.split(",")])
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


def driver_side(raw: Path, params, sizes: list[int]) -> None:
    """What only the driver does: the first pass's metadata, curation and the near-duplicate search, by smears."""
    from leukolab.data.etl.curation import curate
    from leukolab.data.etl.job import process_file
    from leukolab.data.etl.raw_files import walk_files
    from leukolab.data.etl.sources import detect_layout
    from leukolab.data.etl.splits import near_duplicate_pairs

    on_disk = walk_files(raw)
    layout = params.layout_for(detect_layout(raw, params.label_pattern), raw, on_disk)
    rows = pd.DataFrame([process_file(path, (raw / path).read_bytes(), layout, params) for path in on_disk])
    meta = rows.drop(columns="png").assign(part="part-0", png_bytes=rows["png"].map(len, na_action="ignore"))
    smears = int((meta["role"] == "original").sum())
    print(f"driver: metadata collected by the first pass {pa.Table.from_pandas(meta).nbytes / smears / 1e3:.2f} kB/smear "
          f"(the packed nucleus bitmap {meta['bitmap'].str.len().sum() / 2 / smears / 1e3:.2f} kB of it)")
    rng = np.random.default_rng(0)
    for n in sizes:
        copies = -(-n // smears)
        big = pd.concat([meta.assign(source_path=f"c{k}/" + meta["source_path"], stem=meta["stem"] + f"-c{k}",
                                     content_hash=meta["content_hash"] + f"{k}") for k in range(copies)], ignore_index=True)
        originals = big["role"] == "original"
        big.loc[originals, "phash"] = [f"{v:016x}" for v in rng.integers(0, 2**63, originals.sum(), dtype=np.int64)]
        t0 = time.process_time()
        curate(big, params.model_copy(update={"near_duplicates": False}))
        curation = time.process_time() - t0
        t0 = time.process_time()
        near_duplicate_pairs(list(big.loc[originals, "phash"]), params.near_duplicate_distance)
        near = time.process_time() - t0
        print(f"  {int(originals.sum()):7d} smears: curate without near duplicates {curation:6.1f} s CPU, "
              f"near_duplicate_pairs {near:6.1f} s CPU")


if __name__ == "__main__":
    main()
