"""ETL throughput on the same raw synthetic smears: this Spark ETL against two local baselines.

(a) ``leukolab.data.etl.job.run_etl`` on Spark ``local[<cores>]``: decode, validate,
    resize, PNG-encode, hash (SHA-256 and perceptual), curate, split, write Parquet.
    The session is started before the clock (its start time is printed apart:
    a notebook pays it once, whatever the data).
(b) ``transform.py`` of ``../shared/seeds/004_ae7b29d499a85883.txt`` as published:
    torchvision ``ImageFolder`` + ``Resize/ToTensor/Normalize``,
    ``StratifiedShuffleSplit`` train/test and three holdouts,
    ``DataLoader(batch_size=1)`` and ``save_image`` per image, one process.
(c) a ``multiprocessing.Pool(<cores>)`` running the same per-file work as (a)
    (``process_file``) and the same curation, writing one Parquet file with
    pyarrow: what one machine can do without Spark.

All three read the same ``<images>`` JPEGs (``<root>/<class>/*.jpg``, read once
before the clock so every variant finds them in the page cache) and write
224 px images. With ``--repeats N`` the variants run N times, interleaved, and
the ratios use the median of each.

    python benchmarks/etl.py                 # 2,000 images at 224 px on 2 cores
    python benchmarks/etl.py --repeats 3 --markdown
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

CLASSES = ("Benign", "Early", "Pre", "Pro")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="raw images, split evenly over 4 classes")
    parser.add_argument("--size", type=int, default=224, help="side of the raw and the processed images")
    parser.add_argument("--cores", type=int, default=2, help="Spark local[N] and Pool(N)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--variants", default="abc", help="which of a, b, c to run")
    parser.add_argument("--workdir", default=None, help="where raw data is cached and outputs go (default: <workspace>/data/benchmarks)")
    parser.add_argument("--markdown", action="store_true", help="also print a row for benchmarks/RESULTS.md")
    args = parser.parse_args()

    logging.basicConfig(level=logging.WARNING, format="      %(message)s")
    logging.getLogger("leukolab.data.etl.job").setLevel(logging.INFO)  # the ETL's phase timings
    from leukolab.config import workspace_path
    from leukolab.data.synthetic.folder import generate_dataset

    workdir = Path(args.workdir) if args.workdir else workspace_path("data/benchmarks")
    per_class = args.images // len(CLASSES)
    raw = generate_dataset(workdir / f"synthetic-{per_class}x4-{args.size}", per_class, image_size=args.size, seed=0) / "Original"
    files = sorted(raw.rglob("*.jpg"))
    raw_bytes = sum(len(p.read_bytes()) for p in files)  # warms the page cache for every variant
    print(f"{len(files)} JPEGs of {args.size} px ({raw_bytes / 1e6:.1f} MB) in {raw}")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
          f"Python {platform.python_version()}")

    _import_everything()  # no variant pays for its imports
    started = time.perf_counter()
    from leukolab.data.spark import spark_session

    spark = spark_session(f"local[{args.cores}]")
    spark_start = time.perf_counter() - started
    warm_up = raw.parent.parent / f"warm-up-{args.size}"
    generate_dataset(warm_up, 10, image_size=args.size, seed=1)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        spark_etl(warm_up / "Original", Path(scratch), args.size, args.cores, spark)
    spark_warm_up = time.perf_counter() - started
    print(f"Spark session start {spark_start:.1f} s, then a 40-image ETL to warm it up {spark_warm_up:.1f} s "
          "(JIT, Python workers, Arrow): fixed costs, not counted below")

    variants = {"a": ("Spark ETL (run_etl)", spark_etl), "b": ("seed 004 transform.py", seed_transform),
                "c": (f"Pool({args.cores}) of PIL workers", pool_etl)}
    seconds = {key: [] for key in variants}
    cpu = {key: [] for key in variants}
    with tempfile.TemporaryDirectory(dir=workdir, prefix="outputs-") as scratch:
        for repeat in range(args.repeats):
            for key, (name, run) in variants.items():
                if key not in args.variants:
                    continue
                out = Path(scratch) / f"{key}{repeat}"
                t0, c0 = time.perf_counter(), cpu_seconds()
                run(raw, out, args.size, args.cores, spark)
                seconds[key].append(time.perf_counter() - t0)
                cpu[key].append(cpu_seconds() - c0)
                written = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
                print(f"  ({key}) {name:28s} {seconds[key][-1]:6.1f} s  {len(files) / seconds[key][-1]:6.1f} images/s"
                      f"  CPU {cpu[key][-1]:6.1f} s  ({written / 1e6:.0f} MB written, load {os.getloadavg()[0]:.1f})", flush=True)
                shutil.rmtree(out)
    spark.stop()

    rate = {key: len(files) / statistics.median(times) for key, times in seconds.items() if times}
    print()
    for key, (name, _) in variants.items():
        if key in rate:
            print(f"({key}) {name:28s} {rate[key]:7.1f} images/s (median of {len(seconds[key])})")
    if len(rate) < 3:
        return
    cold = len(files) / (statistics.median(seconds["a"]) + spark_start + spark_warm_up)
    per_image = {key: 1000 * statistics.median(times) / len(files) for key, times in cpu.items()}
    print(f"a/b = {rate['a'] / rate['b']:.2f}   (goal >= 2.0)")
    print(f"a/c = {rate['a'] / rate['c']:.2f}   (goal >= 0.7)")
    print(f"counting the session start and warm-up too: a = {cold:.1f} images/s, a/b = {cold / rate['b']:.2f}, "
          f"a/c = {cold / rate['c']:.2f}")
    print(f"CPU time per image (all processes; other jobs' load does not change it): a {per_image['a']:.1f} ms, "
          f"b {per_image['b']:.1f} ms, c {per_image['c']:.1f} ms; b/a = {per_image['b'] / per_image['a']:.2f}, "
          f"c/a = {per_image['c'] / per_image['a']:.2f}")
    if args.markdown:
        print(f"\n| {time.strftime('%Y-%m-%d')} | {len(files)} x {args.size} px | {args.cores} | {os.getloadavg()[0]:.1f} "
              f"| {rate['a']:.0f} | {rate['b']:.0f} | {rate['c']:.0f} | {rate['a'] / rate['b']:.2f} "
              f"| {rate['a'] / rate['c']:.2f} | {per_image['a']:.1f} / {per_image['b']:.1f} / {per_image['c']:.1f} ms "
              f"| {spark_start:.0f} s + {spark_warm_up:.0f} s |")


def cpu_seconds() -> float:
    """CPU time of this process and every process under it (the Spark JVM and its Python workers, the pool's workers)."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:4])  # user, system, and children that have ended (the pool's workers)
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:4])
        except psutil.NoSuchProcess:
            pass
    return total


def _import_everything() -> None:
    import pyarrow.parquet  # noqa: F401
    import sklearn.model_selection  # noqa: F401
    import torchvision  # noqa: F401

    import leukolab.data.etl.job  # noqa: F401


def spark_etl(raw: Path, out: Path, size: int, cores: int, spark) -> None:
    """(a) The ETL as 00_etl runs it."""
    from leukolab.data.etl.job import run_etl
    from leukolab.data.etl.params import EtlParams

    run_etl(spark, raw, out, EtlParams(image_size=size, layout="imagefolder"))


def seed_transform(raw: Path, out: Path, size: int, cores: int, spark) -> None:
    """(b) transform.py of seed 004, its logic unchanged (paths and image size are arguments)."""
    import numpy as np
    from sklearn.model_selection import StratifiedShuffleSplit
    from torch.utils.data import DataLoader, Subset
    from torchvision import transforms
    from torchvision.datasets import ImageFolder
    from torchvision.utils import save_image

    np.random.seed(42)
    base_transform = transforms.Compose([
        transforms.Resize((size, size)),
        transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])
    dataset = ImageFolder(str(raw), transform=base_transform)
    labels = [label for _, label in dataset.samples]
    sss = StratifiedShuffleSplit(n_splits=1, test_size=0.2, random_state=42)
    train_idx, test_idx = next(sss.split(np.zeros(len(labels)), labels))
    train_set, test_set = Subset(dataset, train_idx), Subset(dataset, test_idx)
    holdout_labels = [labels[i] for i in test_idx]
    sss_holdout = StratifiedShuffleSplit(n_splits=3, test_size=1 / 3, random_state=42)
    holdouts, used_indices = [], set()
    for _, test_h in sss_holdout.split(np.zeros(len(holdout_labels)), holdout_labels):
        new_indices = [j for j in test_h if j not in used_indices]
        used_indices.update(new_indices)
        holdouts.append(Subset(dataset, [test_idx[j] for j in new_indices]))

    def save_subset(subset, output_path):
        loader = DataLoader(subset, batch_size=1, shuffle=False)
        for i, (img, label) in enumerate(loader):
            class_dir = os.path.join(output_path, dataset.classes[label.item()])
            os.makedirs(class_dir, exist_ok=True)
            save_image(img, os.path.join(class_dir, f"img_{i:05d}.png"))

    save_subset(train_set, os.path.join(out, "train"))
    save_subset(test_set, os.path.join(out, "test"))
    for i, holdout in enumerate(holdouts):
        save_subset(holdout, os.path.join(out, f"holdout_{i + 1}"))


def _process_path(job):
    """One file, read and processed in a Pool worker exactly as a Spark task does it."""
    from leukolab.data.etl.job import process_file

    raw, relative, layout, params, masked = job
    return process_file(relative, (raw / relative).read_bytes(), layout, params, masked)


def pool_etl(raw: Path, out: Path, size: int, cores: int, spark) -> None:
    """(c) The same work on a local process pool, written as one Parquet file."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from leukolab.data.etl.curation import curate
    from leukolab.data.etl.job import mask_keys
    from leukolab.data.etl.params import EtlParams
    from leukolab.data.etl.raw_files import walk_files
    from leukolab.data.etl.schema import DATASET_COLUMNS, DATASET_SCHEMA

    params = EtlParams(image_size=size, layout="imagefolder")
    layout = params.layout_for("imagefolder")
    on_disk = walk_files(raw)
    masked = mask_keys(layout, on_disk)
    jobs = [(raw, relative, layout, params, masked) for relative in on_disk]
    with multiprocessing.get_context("fork").Pool(cores) as pool:
        rows = pool.map(_process_path, jobs, chunksize=16)
    meta = pd.DataFrame(rows)
    table, _, _ = curate(meta.drop(columns="png"), params)
    table = table.merge(meta[["source_path", "png"]], on="source_path")
    dataset = table.rename(columns={"png": "image", "width": "original_width", "height": "original_height"})
    dataset["mask"] = None
    dataset[["original_width", "original_height"]] = dataset[["original_width", "original_height"]].astype("int32")
    out.mkdir(parents=True)
    pq.write_table(pa.Table.from_pandas(dataset[list(DATASET_COLUMNS)], schema=DATASET_SCHEMA, preserve_index=False),
                   out / "data.parquet", compression="none", use_dictionary=[c for c in DATASET_COLUMNS if c not in ("image", "mask")])


if __name__ == "__main__":
    sys.exit(main())
