"""Training throughput: the full training loop against the bare limit, same model, batch and images.

(a) ``leukolab.training.loop.fit`` as the pipeline runs it: the in-memory
    dataset through a DataLoader, batch augmentation, normalisation, AdamW
    with the schedule, gradient clipping, weight EMA, per-epoch validation,
    metrics logged to MLflow (SQLite) and a checkpoint every epoch.
(b) the bare limit: forward, loss, backward and optimizer step on batches
    already normalised in memory, nothing else.

Both train the same freshly built model for the same number of images; the
variants alternate ``--repeats`` times and the ratios use the medians. Two
ratios are printed: (a) counting its wall time whole, and (a) without the
seconds its per-epoch validation took (``val_seconds`` in the history, a
forward pass over other images that (b) does not do), which is the training
throughput the goal is about: data loading, augmentation, the optimiser step
with schedule and clipping, EMA, logging and checkpoints against the bare step.

    python benchmarks/train.py                                   # simple-cnn, 128 px, batch 16
    python benchmarks/train.py --experiment unet-mobilenet --images 128 --markdown
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

HOT_BATCHES = 4
"""Batches the bare limit cycles through (they stay in the CPU's caches)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="simple-cnn", help="a name in params/experiments/")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--images", type=int, default=256, help="training images (split over 4 classes)")
    parser.add_argument("--val-images", type=int, default=64, help="validation images, evaluated every epoch in (a)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--markdown", action="store_true", help="also print a row for benchmarks/RESULTS.md")
    args = parser.parse_args()

    import mlflow
    import torch

    from leukolab import CLASS_NAMES
    from leukolab.config.experiment import load_experiment
    from leukolab.data.reading.dataset import SmearDataset
    from leukolab.data.synthetic.smears import smear_table

    experiment = load_experiment(args.experiment, {"training": {"epochs": args.epochs},
                                                   "early_stopping": {"patience": args.epochs + 1}})
    masks = experiment["task"] != "classification"
    train = SmearDataset(smear_table(args.images // 4, args.image_size, seed=0), with_masks=masks)
    val = SmearDataset(smear_table(args.val_images // 4, args.image_size, seed=1), with_masks=masks)
    mean, std = train.images.float().div(255).mean(dim=(0, 2, 3)).tolist(), train.images.float().div(255).std(dim=(0, 2, 3)).tolist()
    scratch = Path(tempfile.mkdtemp(prefix="leukolab-train-bench-"))
    mlflow.set_tracking_uri(f"sqlite:///{scratch / 'mlflow.db'}")
    mlflow.set_experiment("train-benchmark")
    batch = experiment["training"]["batch_size"]
    print(f"{args.experiment} ({experiment['task']}), {len(train)} training images of {args.image_size} px, "
          f"batch {batch}, {args.epochs} epochs; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}")

    variants = {"full loop": lambda: full_loop(experiment, train, val, mean, std, CLASS_NAMES, scratch),
                "bare limit": lambda: (bare_limit(experiment, train, mean, std, len(CLASS_NAMES)), 0.0)}
    for run in variants.values():  # warm-up: allocator, kernels, imports
        run()
    rates = {name: [] for name in (*variants, "full loop, training")}
    for _ in range(args.repeats):
        for name, run in variants.items():
            start = time.perf_counter()
            images, validation_seconds = run()
            seconds = time.perf_counter() - start
            rates[name].append(images / seconds)
            if validation_seconds:
                rates[f"{name}, training"].append(images / (seconds - validation_seconds))
    medians = {name: statistics.median(values) for name, values in rates.items()}
    for name, values in rates.items():
        print(f"  {name:20s}  {medians[name]:7.1f} images/s  (runs: {', '.join(f'{v:.1f}' for v in values)})")
    whole = medians["full loop"] / medians["bare limit"]
    training = medians["full loop, training"] / medians["bare limit"]
    print(f"full loop / bare limit = {whole:.2f} with validation, {training:.2f} without (goal: at least 0.90)")
    if args.markdown:
        print(f"| {time.strftime('%Y-%m-%d')} | {args.experiment} | {args.image_size} | {batch} | {len(train)} | "
              f"{len(val)} | {os.getloadavg()[0]:.1f} | {medians['full loop']:.1f} | {medians['full loop, training']:.1f} | "
              f"{medians['bare limit']:.1f} | {whole:.2f} | **{training:.2f}** |")


def full_loop(experiment, train, val, mean, std, class_names, scratch: Path) -> tuple[int, float]:
    """Images trained on, and the seconds validation took."""
    import mlflow

    from leukolab.models.factory import build_model
    from leukolab.training.loop import fit

    model = build_model(experiment, len(class_names))
    with mlflow.start_run() as run:
        result = fit(model, train, val, experiment, mean, std, class_names, scratch / run.info.run_id,
                     on_epoch_end=lambda epoch, metrics: mlflow.log_metrics(metrics, step=epoch))
    images = len(train) // experiment["training"]["batch_size"] * experiment["training"]["batch_size"] * len(result.history)
    return images, sum(row["val_seconds"] for row in result.history)


def bare_limit(experiment, train, mean, std, num_classes: int) -> int:
    import torch

    from leukolab.models.factory import build_model
    from leukolab.models.inputs import normalize
    from leukolab.training.losses import TaskLoss

    model = build_model(experiment, num_classes)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(experiment["training"]["lr"]))
    batch = experiment["training"]["batch_size"]
    task_loss = TaskLoss(experiment)
    # A few batches, cycled: all of them normalised up front would be float32 copies of the whole split, whose
    # cache misses made this "limit" slower than the loop that normalises each uint8 batch as it goes.
    steps = len(train) // batch * experiment["training"]["epochs"]
    batches = [(normalize(train.images[i:i + batch], mean, std), train.labels[i:i + batch], train.masks[i:i + batch].float())
               for i in range(0, min(len(train), HOT_BATCHES * batch) - batch + 1, batch)]
    for step in range(steps):
        images, labels, masks = batches[step % len(batches)]
        loss = task_loss(model(images), labels, masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * batch


if __name__ == "__main__":
    main()
