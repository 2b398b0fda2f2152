"""Training throughput: the full training loop against the bare limit, same model, batch and images.

(a) ``leukolab.training.loop.fit`` as the pipeline runs it: the in-memory
    dataset through a DataLoader, batch augmentation, normalisation, AdamW
    with the schedule, gradient clipping, weight EMA, per-epoch validation,
    metrics logged to MLflow (SQLite) and a checkpoint every epoch.
(b) the bare limit: forward, loss, backward and optimizer step on batches
    already normalised in memory, nothing else.

Both train the same freshly built model for the same number of images; the
variants alternate ``--repeats`` times and the ratio uses the medians.

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
    from leukolab.data.dataset import SmearDataset
    from leukolab.data.synthetic import smear_table
    from leukolab.experiments import load_experiment

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
                "bare limit": lambda: bare_limit(experiment, train, mean, std, len(CLASS_NAMES))}
    for run in variants.values():  # warm-up: allocator, kernels, imports
        run()
    rates = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, run in variants.items():
            start = time.perf_counter()
            images = run()
            rates[name].append(images / (time.perf_counter() - start))
    medians = {name: statistics.median(values) for name, values in rates.items()}
    for name, values in rates.items():
        print(f"  {name:10s}  {medians[name]:7.1f} images/s  (runs: {', '.join(f'{v:.1f}' for v in values)})")
    ratio = medians["full loop"] / medians["bare limit"]
    print(f"full loop / bare limit = {ratio:.2f}  (goal: at least 0.90)")
    if args.markdown:
        print(f"| {args.experiment} | {args.image_size} | {batch} | {len(train)} | {medians['full loop']:.1f} | "
              f"{medians['bare limit']:.1f} | {ratio:.2f} |")


def full_loop(experiment, train, val, mean, std, class_names, scratch: Path) -> int:
    import mlflow

    from leukolab.models.factory import build_model
    from leukolab.training.loop import fit

    model = build_model(experiment, len(class_names))
    with mlflow.start_run() as run:
        result = fit(model, train, val, experiment, mean, std, class_names, scratch / run.info.run_id,
                     on_epoch_end=lambda epoch, metrics: mlflow.log_metrics(metrics, step=epoch))
    return len(train) // experiment["training"]["batch_size"] * experiment["training"]["batch_size"] * len(result.history)


def bare_limit(experiment, train, mean, std, num_classes: int) -> int:
    import torch

    from leukolab.models.factory import build_model
    from leukolab.training.augment import normalize
    from leukolab.training.losses import classification_loss, segmentation_loss

    model = build_model(experiment, num_classes)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(experiment["training"]["lr"]))
    batch = experiment["training"]["batch_size"]
    task, loss_spec = experiment["task"], experiment.get("loss", {})
    cls_loss = classification_loss(loss_spec, None) if task in ("classification", "joint") else None
    seg_loss = segmentation_loss(loss_spec.get("segmentation", loss_spec) if task == "joint" else loss_spec) \
        if task in ("segmentation", "joint") else None
    batches = [(normalize(train.images[i:i + batch], mean, std), train.labels[i:i + batch], train.masks[i:i + batch].float())
               for i in range(0, len(train) - batch + 1, batch)]
    for _ in range(experiment["training"]["epochs"]):
        for images, labels, masks in batches:
            out = model(images)
            loss = 0.0
            if cls_loss:
                loss = loss + cls_loss(out["logits"], labels)
            if seg_loss:
                loss = loss + seg_loss(out["mask"], masks)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return len(batches) * batch * experiment["training"]["epochs"]


if __name__ == "__main__":
    main()
