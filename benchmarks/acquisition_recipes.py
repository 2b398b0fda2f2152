"""Recipes on the session stand-in: the image-level and the acquisition-aware figure of each, side by side.

Synthetic smears photographed in acquisition sessions whose look follows the class, with Pre fields crowded as in the
real data (:mod:`leukolab.data.synthetic.sessions`), go through the real Spark ETL, which writes both split
assignments. Each recipe (an experiment with augmentation or preprocessing overrides) is trained by ``leukolab.training.loop.fit``
twice: on the grouped split (scored on its test: the image-level figure, bootstrap over duplicate groups) and on the
acquisition-aware split (scored on its test: the acquisition-aware figure, cluster bootstrap over blocks). The recipe
to keep is the one with the best acquisition-aware *val* balanced accuracy; test only reports. Seconds per epoch are
wall and CPU (user + system of this process, all its threads) of the grouped training, validation included; the
preprocessing's cost (border crop, stain normalisation) is its wall time per image over the grouped test split, what
serving pays for it on top of the network.

    python benchmarks/acquisition_recipes.py --images-per-class 150 --image-size 48 --epochs 6
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from leukolab.config.experiment import load_experiment
from leukolab.data.reading.dataset import SmearDataset, load_manifest, load_split
from leukolab.data.etl.job import run_etl
from leukolab.data.etl.params import EtlParams
from leukolab.data.etl.probes import CLUSTERS
from leukolab.data.spark import spark_session
from leukolab.data.synthetic.folder import generate_dataset
from leukolab.experiments.acquisition import scored
from leukolab.models.factory import build_model
from leukolab.training.inputs import colour_statistics, prepare_inputs
from leukolab.training.loop import fit

RECIPES = {
    "flips only": {"augmentation": {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "stain": 0.0}},
    "colour + stain jitter (the default)": {},
    "strong colour + stain": {"augmentation": {"brightness": 0.3, "contrast": 0.3, "saturation": 0.4, "stain": 0.2}},
    "stain normalisation + default jitter": {"preprocessing": {"stain_normalization": "reinhard"}},
    "stain normalisation + border crop 0.1 + default jitter": {"preprocessing": {"stain_normalization": "reinhard",
                                                                                "border_crop": 0.1}},
}


def figures(experiment, dataset_dir: Path, strategy: str, class_names: list[str]) -> dict:
    """Train ``experiment`` on the ``strategy`` split's train (early stopping on its val); its val and test metrics
    with intervals over the strategy's clusters, and wall and CPU seconds per epoch."""
    frames = {name: load_split(dataset_dir, name, strategy) for name in ("train", "val", "test")}
    data = {name: SmearDataset(frame) for name, frame in frames.items()}
    inputs = prepare_inputs(experiment, data, **colour_statistics(data["train"]))
    started = time.perf_counter()
    inputs.preprocessing.apply(data["test"].images)
    preprocessing_ms = (time.perf_counter() - started) / len(data["test"]) * 1000
    data, context = inputs.splits, {"class_names": class_names, "mean": inputs.mean, "std": inputs.std}
    torch.manual_seed(experiment.seed)
    model = build_model(experiment, len(class_names))
    wall, cpu = time.perf_counter(), time.process_time()
    epochs = len(fit(model, data["train"], data["val"], experiment, context["mean"], context["std"], class_names).history)
    out = {"wall_per_epoch": (time.perf_counter() - wall) / epochs, "cpu_per_epoch": (time.process_time() - cpu) / epochs,
           "epochs": epochs, "images": {name: len(d) for name, d in data.items()}, "preprocessing_ms": preprocessing_ms}
    for name in ("val", "test"):
        out[name] = scored(model.eval(), data[name], frames[name][CLUSTERS[strategy]].to_numpy(), context, 1000, 0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images-per-class", type=int, default=150)
    parser.add_argument("--image-size", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--experiment", default="resnet10t-classifier", help="the real profile's classifier")
    parser.add_argument("--work", default=None, help="folder for the raw and processed data (default: a temporary one)")
    parser.add_argument("--seed", type=int, default=None, help="the training seed (default: the experiment's)")
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES), metavar="RECIPE",
                        help=f"the recipes to train (default: all): {', '.join(repr(r) for r in RECIPES)}")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="acquisition-recipes-"))
    started, cpu = time.perf_counter(), time.process_time()
    raw = generate_dataset(work / "raw", args.images_per_class, image_size=max(96, args.image_size), seed=5,
                           sessions={"size": 10})
    spark = spark_session("local[2]")
    dataset_dir = run_etl(spark, raw, work / "processed", EtlParams(image_size=args.image_size, seed=5))
    spark.stop()
    class_names = load_manifest(dataset_dir)["classes"]
    print(f"{args.experiment}, {args.images_per_class} images per class in sessions of 10, {args.image_size} px, "
          f"{args.epochs} epochs, training seed {'of the experiment' if args.seed is None else args.seed}; data ready after {time.perf_counter() - started:.0f} s wall; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    print("| recipe | px | epochs run (grouped / acquisition) | s per epoch here, wall / CPU | preprocessing ms per image "
          "| image-level test acc | image-level test bal. acc [95% CI] | acquisition-aware val bal. acc "
          "| acquisition-aware test bal. acc [95% CI] | load |\n|---|---|---|---|---|---|---|---|---|---|", flush=True)
    chosen = {}
    for name in args.recipes:
        overrides = RECIPES[name]
        experiment = load_experiment(args.experiment, {**overrides, "training": {"epochs": args.epochs},
                                                       "inference": {"tta": False}, "seed": args.seed})
        grouped = figures(experiment, dataset_dir, "grouped", class_names)
        aware = figures(experiment, dataset_dir, "acquisition", class_names)
        image_level, honest = grouped["test"], aware["test"]
        chosen[name] = aware["val"]["balanced_accuracy"]
        print(f"| {name} | {args.image_size} | {grouped['epochs']} / {aware['epochs']} | "
              f"{grouped['wall_per_epoch']:.1f} / {grouped['cpu_per_epoch']:.1f} | {grouped['preprocessing_ms']:.2f} | "
              f"{image_level['accuracy']:.3f} | "
              f"{_with_interval(image_level)} | {aware['val']['balanced_accuracy']:.3f} | {_with_interval(honest)} | "
              f"{os.getloadavg()[0]:.1f} |", flush=True)
    print(f"images: grouped {grouped['images']}, acquisition-aware {aware['images']}")
    print(f"chosen on acquisition-aware val: {max(chosen, key=chosen.get)}; "
          f"{time.perf_counter() - started:.0f} s wall, {time.process_time() - cpu:.0f} s CPU in this process")


def _with_interval(metrics: dict) -> str:
    return (f"{metrics['balanced_accuracy']:.3f} [{metrics['balanced_accuracy_ci_low']:.3f}, "
            f"{metrics['balanced_accuracy_ci_high']:.3f}]")


if __name__ == "__main__":
    main()
