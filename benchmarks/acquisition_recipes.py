"""Recipes on the session stand-in: the image-level and the acquisition-aware figure of each, side by side.

Synthetic smears photographed in acquisition sessions whose look follows the class
(:mod:`leukolab.data.synthetic.sessions`) go through the real Spark ETL, which writes both split assignments.
Each recipe (an experiment with augmentation overrides) is trained by ``leukolab.training.loop.fit`` twice: on the
grouped split (scored on its test: the image-level figure) and on the acquisition-aware split (scored on its test:
the acquisition-aware figure, cluster-bootstrap interval over blocks). The recipe to keep is the one with the best
acquisition-aware *val* figure; test only reports.

    python benchmarks/acquisition_recipes.py --images-per-class 160 --image-size 64 --epochs 6
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.special import softmax

from leukolab.config.experiment import load_experiment
from leukolab.data.etl.job import run_etl
from leukolab.data.etl.params import EtlParams
from leukolab.data.reading.dataset import SmearDataset, load_manifest, load_split
from leukolab.data.spark import spark_session
from leukolab.data.synthetic.folder import generate_dataset
from leukolab.metrics.intervals import cluster_intervals
from leukolab.metrics.scores import classification_metrics
from leukolab.models.factory import build_model
from leukolab.training.loop import fit, predict

RECIPES = {
    "flips only": {"augmentation": {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "stain": 0.0}},
    "colour + stain jitter (the default)": {},
    "strong colour + stain": {"augmentation": {"brightness": 0.3, "contrast": 0.3, "saturation": 0.4, "stain": 0.2}},
}
CLUSTERS = {"grouped": "group_id", "acquisition": "acquisition_block"}


def figures(experiment, dataset_dir: Path, strategy: str, class_names: list[str]) -> dict:
    frames = {name: load_split(dataset_dir, name, strategy) for name in ("train", "val", "test")}
    data = {name: SmearDataset(frame) for name, frame in frames.items()}
    pixels = data["train"].images.float().div_(255)
    mean, std = pixels.mean((0, 2, 3)).tolist(), pixels.std((0, 2, 3)).tolist()
    torch.manual_seed(experiment.seed)
    model = build_model(experiment, len(class_names))
    started = time.perf_counter()
    fit(model, data["train"], data["val"], experiment, mean, std, class_names)
    seconds = (time.perf_counter() - started) / experiment.training.epochs
    out = {"seconds_per_epoch": seconds}
    for name in ("val", "test"):
        probabilities = softmax(predict(model, data[name].images, mean, std)["logits"], axis=1)
        labels = data[name].labels.numpy()
        metrics = classification_metrics(labels, probabilities, class_names)
        low, high = cluster_intervals(labels, probabilities.argmax(1), frames[name][CLUSTERS[strategy]].to_numpy(),
                                      len(class_names), 1000, 0)["balanced_accuracy"]
        out[name] = (metrics["accuracy"], metrics["balanced_accuracy"], low, high)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images-per-class", type=int, default=160)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--experiment", default="simple-cnn")
    parser.add_argument("--work", default=None, help="folder for the raw and processed data (default: a temporary one)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="acquisition-recipes-"))
    raw = generate_dataset(work / "raw", args.images_per_class, image_size=max(96, args.image_size), seed=5,
                           sessions={"size": 10})
    spark = spark_session("local[2]")
    dataset_dir = run_etl(spark, raw, work / "processed", EtlParams(image_size=args.image_size, seed=5))
    spark.stop()
    class_names = load_manifest(dataset_dir)["classes"]
    print(f"| recipe | px | epochs | s/epoch (grouped) | image-level test acc | image-level test bal. acc "
          f"| acquisition-aware val bal. acc | acquisition-aware test bal. acc [95% CI] |\n|---|---|---|---|---|---|---|---|")
    for name, overrides in RECIPES.items():
        experiment = load_experiment(args.experiment, {**overrides, "training": {"epochs": args.epochs},
                                                       "inference": {"tta": False}})
        grouped = figures(experiment, dataset_dir, "grouped", class_names)
        aware = figures(experiment, dataset_dir, "acquisition", class_names)
        acc, bal, *_ = grouped["test"]
        _, aware_test, low, high = aware["test"]
        print(f"| {name} | {args.image_size} | {args.epochs} | {grouped['seconds_per_epoch']:.1f} | {acc:.3f} | {bal:.3f} "
              f"| {aware['val'][1]:.3f} | {aware_test:.3f} [{low:.3f}, {high:.3f}] |", flush=True)
    print(f"({args.images_per_class} images per class, sessions of 10; {np.round(time.process_time())} s CPU)")


if __name__ == "__main__":
    main()
