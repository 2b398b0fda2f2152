"""Scale past one machine's memory: the ETL (with near duplicates) and one streaming training epoch at 10k and 100k smears.

For each size: small synthetic smears (``--size`` px JPEGs from the cheap generator of
``benchmarks/scale_smears.py``, not the full painter, with 1% planted exact and near
duplicates), then in separate processes, so each peak RSS is that process's own:

1. the ETL driver: ``run_etl`` on Spark ``local[<cores>]`` with near duplicates on (the banded Spark search
   from ``SPARK_FROM`` hashes, see ``leukolab.data.etl.near_duplicates``); wall time and the driver's peak RSS
   (the Python driver, taken before anything imports torch, which the ETL does not; the JVM's heap is bounded by
   ``spark.driver.memory``, a setting);
2. a training rank: one epoch of ``simple-cnn`` (``--width``) streaming train from the Parquet
   (``data.loading: streaming``, one DataLoader worker), then the streamed validation; wall time and the
   peak RSS of the rank and of its worker.

Then the near-duplicate search alone on the dataset's perceptual hashes: the Spark join and the driver's
all-pairs search, at each size. The last line compares the largest size with the smallest:
``peak RSS 100k/10k = R; time per smear 100k/10k = S`` (R: the larger of driver and rank ratios;
S: ETL + epoch wall time per smear). A shared machine slows both sizes alike only roughly: run it quiet.

    python benchmarks/scale.py                       # 10,000 and 100,000 smears: about 30 CPU-minutes
    python benchmarks/scale.py --sizes 2000,8000     # a quick look
    python benchmarks/scale.py --reuse --figure docs/scale.svg   # the figure in docs/scale.md, from the last run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--size", type=int, default=96, help="side of the raw and processed images")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--width", type=int, default=8, help="simple-cnn's first channels")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/leukolab-scale"))
    parser.add_argument("--reuse", action="store_true", help="take a size's results from an earlier run's result-N.json")
    parser.add_argument("--figure", type=Path, help="also draw peak RSS and time per smear against the size (SVG)")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from scale_smears import generate

    print(f"{len(os.sched_getaffinity(0))} CPUs, load average {os.getloadavg()[0]:.1f}; {args.size} px smears; "
          f"Spark local[{args.cores}]; simple-cnn width {args.width}", flush=True)
    rows = {}
    for count in map(int, args.sizes.split(",")):
        saved = args.workdir / f"result-{count}.json"
        if args.reuse and saved.is_file():
            rows[count] = json.loads(saved.read_text())
            continue
        started = time.perf_counter()
        raw = generate(args.workdir / f"raw-{count}", count, args.size, seed=0)
        print(f"{count} smears generated in {time.perf_counter() - started:.0f} s", flush=True)
        etl = phase("etl", str(raw), str(args.workdir / f"processed-{count}"), str(args.size), str(args.cores))
        train = phase("train", etl["dataset"], str(args.width), str(args.cores))
        search = phase("search", etl["dataset"], str(args.cores))
        rows[count] = {"etl": etl, "train": train, "search": search}
        saved.write_text(json.dumps(rows[count]))
        print(f"{count:>7} smears  ETL {etl['seconds']:6.0f} s  driver {etl['rss_mb']:5.0f} MB | epoch "
              f"{train['seconds']:6.0f} s ({train['images']} train + {train['val']} val)  rank {train['rss_mb']:5.0f} MB"
              f"  worker {train['worker_rss_mb']:5.0f} MB | near duplicates {etl['near_pairs']} pairs, search: Spark "
              f"{search['spark_seconds']:.1f} s, all pairs {search['all_pairs_seconds']:.1f} s, same {search['same']}"
              f"  (load {os.getloadavg()[0]:.1f})", flush=True)
    for count, row in rows.items():
        print(f"{count:>7} smears  CPU: ETL {row['etl']['cpu_seconds']:6.0f} s, epoch {row['train']['cpu_seconds']:6.0f} s")
    small, large = rows[min(rows)], rows[max(rows)]
    rss = max(large["etl"]["rss_mb"] / small["etl"]["rss_mb"], large["train"]["rss_mb"] / small["train"]["rss_mb"])
    per_smear = {n: (r["etl"]["seconds"] + r["train"]["seconds"]) / n for n, r in rows.items()}
    cpu_per_smear = {n: (r["etl"]["cpu_seconds"] + r["train"]["cpu_seconds"]) / n for n, r in rows.items()}
    print(json.dumps(rows))
    growth = (large["etl"]["rss_mb"] - small["etl"]["rss_mb"]) * 1024 / (max(rows) - min(rows))
    print(f"driver RSS {large['etl']['rss_mb'] / small['etl']['rss_mb']:.2f} ({growth:.2f} kB more per smear), rank RSS "
          f"{large['train']['rss_mb'] / small['train']['rss_mb']:.2f}, ETL time per smear "
          f"{large['etl']['seconds'] / max(rows) / (small['etl']['seconds'] / min(rows)):.2f}, epoch time per smear "
          f"{large['train']['seconds'] / max(rows) / (small['train']['seconds'] / min(rows)):.2f}; CPU time per smear "
          f"{cpu_per_smear[max(rows)] / cpu_per_smear[min(rows)]:.2f}")
    if args.figure:
        draw(rows, args.figure)
    label = "/".join(f"{n // 1000}k" if n % 1000 == 0 else str(n) for n in (max(rows), min(rows)))
    print(f"peak RSS {label} = {rss:.2f}; time per smear {label} = {per_smear[max(rows)] / per_smear[min(rows)]:.2f}")


def draw(rows: dict[int, dict], path: Path) -> None:
    """Peak RSS and wall time per smear against the number of smears: flat lines are what scaling out needs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(rows)
    plt.rcParams["svg.fonttype"] = "none"  # text stays text: a smaller, searchable SVG
    figure, (memory, speed) = plt.subplots(1, 2, figsize=(10, 3.6))
    for label, phase_name, key in (("training rank", "train", "rss_mb"), ("its DataLoader worker", "train", "worker_rss_mb"),
                                   ("ETL driver", "etl", "rss_mb")):
        memory.plot(sizes, [rows[n][phase_name][key] for n in sizes], marker="o", label=label)
    for label, phase_name in (("one streaming epoch", "train"), ("ETL", "etl")):
        speed.plot(sizes, [rows[n][phase_name]["seconds"] * 1000 / n for n in sizes], marker="o", label=label)
    memory.set(ylabel="peak RSS (MB)", title="Memory per process")
    speed.set(ylabel="wall ms per smear", title="Time per smear")
    for axes in (memory, speed):
        axes.set(xscale="log", xlabel="smears", ylim=(0, axes.get_ylim()[1] * 1.35))  # room for the legend on top
        axes.set_xticks(sizes, [f"{n:,}" for n in sizes])
        axes.grid(alpha=0.3)
        axes.legend(loc="upper center", ncol=2, fontsize="small")
    figure.tight_layout()
    figure.savefig(path, metadata={"Date": None})
    plt.close(figure)
    print(f"figure: {path}")


def phase(name: str, *args: str) -> dict:
    """Run one phase in a fresh interpreter; its last output line is its JSON result."""
    done = subprocess.run([sys.executable, __file__, f"_{name}", *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"phase {name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def peak_mb(who=resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def process_cpu() -> float:
    """User + system CPU seconds of this process and its ended children (the DataLoader workers)."""
    return sum(getattr(resource.getrusage(who), field) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for field in ("ru_utime", "ru_stime"))


def run_etl_phase(raw: str, out: str, size: str, cores: str) -> dict:
    import shutil

    from etl import cpu_seconds

    from leukolab.data.etl.job import run_etl
    from leukolab.data.etl.params import EtlParams
    from leukolab.data.spark import spark_session

    shutil.rmtree(out, ignore_errors=True)
    spark = spark_session(f"local[{cores}]")
    started, cpu_before = time.perf_counter(), cpu_seconds()
    dataset = run_etl(spark, raw, out, EtlParams(image_size=int(size), min_side=16, seed=0))
    seconds = time.perf_counter() - started
    cpu = cpu_seconds() - cpu_before  # the driver, the JVM and its Python workers
    spark.stop()
    manifest = json.loads((dataset / "manifest.json").read_text())  # not load_manifest: its module imports torch
    if "torch" in sys.modules:
        raise SystemExit("the ETL phase imported torch: its peak RSS would not be the ETL driver's own")
    return {"dataset": str(dataset), "seconds": seconds, "cpu_seconds": cpu, "rss_mb": peak_mb(), "images": sum(
        sum(c.values()) for c in manifest["counts"].values()), "near_pairs": len(manifest["near_duplicate_pairs"]),
        "duplicate_groups": len(manifest["duplicate_groups"])}


def run_train_phase(dataset: str, width: str, cores: str) -> dict:
    import torch

    from leukolab.config.experiment import load_experiment
    from leukolab.data.reading.dataset import load_manifest
    from leukolab.data.reading.loading import load_experiment_splits
    from leukolab.models.factory import build_model
    from leukolab.training.loop import fit

    torch.set_num_threads(int(cores))
    experiment = load_experiment("simple-cnn", {"training": {"epochs": 1, "batch_size": 64}, "model": {"width": int(width)},
                                                "data": {"loading": "streaming", "workers": 1}})
    manifest = load_manifest(dataset)
    splits = load_experiment_splits(experiment, dataset, ("train", "val"))
    model = build_model(experiment, len(manifest["classes"]))
    started, cpu_before = time.perf_counter(), process_cpu()
    result = fit(model, splits["train"], splits["val"], experiment, manifest["train_mean"], manifest["train_std"],
                 manifest["classes"])
    return {"seconds": time.perf_counter() - started, "cpu_seconds": process_cpu() - cpu_before, "rss_mb": peak_mb(), "worker_rss_mb": peak_mb(resource.RUSAGE_CHILDREN),
            "images": len(splits["train"]), "val": len(splits["val"]), "val_macro_f1": result.history[-1]["val_macro_f1"],
            "train_seconds": result.history[-1]["train_seconds"], "val_seconds": result.history[-1]["val_seconds"]}


def run_search_phase(dataset: str, cores: str) -> dict:
    import pyarrow.parquet as pq

    from leukolab.data.etl.near_duplicates import spark_near_duplicate_pairs
    from leukolab.data.etl.splits import near_duplicate_pairs
    from leukolab.data.spark import spark_session

    table = pq.read_table(Path(dataset) / "data", columns=["source_path", "phash"]).to_pandas().sort_values("source_path")
    hashes = list(table["phash"])
    spark = spark_session(f"local[{cores}]")
    spark_near_duplicate_pairs(spark, hashes[:100], 4)  # warm-up: the first job pays the JVM's class loading
    started = time.perf_counter()
    banded = spark_near_duplicate_pairs(spark, hashes, 4)
    spark_seconds = time.perf_counter() - started
    spark.stop()
    started = time.perf_counter()
    exact = near_duplicate_pairs(hashes, 4)
    return {"spark_seconds": spark_seconds, "all_pairs_seconds": time.perf_counter() - started, "pairs": len(exact),
            "same": banded == exact}


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        phases = {"_etl": run_etl_phase, "_train": run_train_phase, "_search": run_search_phase}
        print(json.dumps(phases[sys.argv[1]](*sys.argv[2:])))
    else:
        main()
