"""A training rank's memory and step time streaming a dataset and the same dataset ten times over.

The cheap half of ``benchmarks/scale.py`` for a machine too busy for its 100,000-smear ETL: the ``--times`` x
dataset is the ETL's output of ``DATASET`` repeated (its Parquet files linked ``--times`` times, so nothing is
copied), and each size trains ``--steps`` batches of ``simple-cnn`` streaming from it (``data.loading:
streaming``, one DataLoader worker, the default shuffle buffer), each in a fresh process. A rank that streams
holds a row group and its shuffle buffer, whatever the size; one that decodes in memory grows with the data (its
figure is computed, 27 kB per 96 px smear).

    python benchmarks/scale_stream.py /tmp/leukolab-scale/processed-10000/raw-10000/<fingerprint> [--times 10]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--times", type=int, default=10)
    parser.add_argument("--steps", type=int, default=100, help="training batches of 64 per size")
    args = parser.parse_args()
    big = args.dataset.parent / f"{args.dataset.name}-x{args.times}"
    shutil.rmtree(big, ignore_errors=True)
    (big / "data").mkdir(parents=True)
    shutil.copy(args.dataset / "manifest.json", big / "manifest.json")
    for part in sorted((args.dataset / "data").glob("*.parquet")):
        for copy in range(args.times):
            (big / "data" / f"{part.stem}-{copy:03d}.parquet").symlink_to(part.resolve())
    rows = {}
    for name, path in (("1x", args.dataset), (f"{args.times}x", big)):
        done = subprocess.run([sys.executable, __file__, "_rank", str(path), str(args.steps)], capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(done.stderr[-4000:])
        rows[name] = json.loads(done.stdout.strip().splitlines()[-1])
        row = rows[name]
        print(f"{name:>4}: {row['train_rows']:7d} train rows  {row['steps']} steps in {row['seconds']:5.0f} s "
              f"({1000 * row['seconds'] / row['steps']:.0f} ms/step, CPU {row['cpu_seconds']:.0f} s)  rank {row['rss_mb']:.0f} MB"
              f"  worker {row['worker_rss_mb']:.0f} MB  (in memory it would decode {row['train_rows'] * 27648 / 2**20:.0f} MB"
              f" of train)", flush=True)
    small, large = rows["1x"], rows[f"{args.times}x"]
    print(f"rank peak RSS {args.times}x/1x = {large['rss_mb'] / small['rss_mb']:.2f}; worker "
          f"{large['worker_rss_mb'] / small['worker_rss_mb']:.2f}; time per step {large['seconds'] / small['seconds']:.2f}")


def rank(dataset: str, steps: str) -> dict:
    """``steps`` training batches streamed from ``dataset``, as a training rank takes them."""
    import itertools

    import torch
    from torch.utils.data import DataLoader

    from leukolab.config.experiment import load_experiment
    from leukolab.data.reading.dataset import load_manifest
    from leukolab.data.reading.loading import load_experiment_splits
    from leukolab.models.factory import build_model
    from leukolab.models.inputs import normalize

    torch.set_num_threads(2)
    experiment = load_experiment("simple-cnn", {"model": {"width": 8}, "data": {"loading": "streaming", "workers": 1}})
    manifest = load_manifest(dataset)
    train = load_experiment_splits(experiment, dataset, ("train",))["train"]
    model = build_model(experiment, len(manifest["classes"]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = DataLoader(train, batch_size=64, num_workers=1, drop_last=True)
    started, cpu_before, taken = time.perf_counter(), cpu(), 0
    for images, labels, _, _ in itertools.islice(loader, int(steps)):
        loss = torch.nn.functional.cross_entropy(model(normalize(images, manifest["train_mean"], manifest["train_std"]))["logits"], labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        taken += 1
    seconds = time.perf_counter() - started
    del loader  # ends the worker, so its peak counts among the children
    return {"train_rows": train.total, "steps": taken, "seconds": seconds, "cpu_seconds": cpu() - cpu_before,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def cpu() -> float:
    return sum(getattr(resource.getrusage(who), field) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for field in ("ru_utime", "ru_stime"))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_rank":
        print(json.dumps(rank(*sys.argv[2:])))
    else:
        main()
