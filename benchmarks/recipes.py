"""Recipe costs: seconds per epoch of each experiment here, and what a profile's training budget adds up to.

Each experiment (``params/experiments/<name>.yaml``) is built with
``build_model`` and trained by ``leukolab.training.loop.fit`` itself for one
short epoch of ``--warmup`` + ``--steps`` batches of its own batch size, on
synthetic smears at the profile's image size (with masks for segmentation and
joint tasks): the DataLoader, batch augmentation, normalisation, ``TaskLoss``,
AdamW with its schedule, gradient clipping and weight EMA, as the pipeline
trains. A forward pre-hook stamps the start of every training forward pass; the
time between two stamps is one whole step, and the median of the timed steps
after the warm-up is the step's cost. Inference per image is then timed with
``predict`` over the image pool without and with test-time augmentation (the 8
rotations/mirrors).

From these, per experiment: ms per training image; seconds per epoch for
``--train-images`` (the steps of one epoch, ``drop_last`` as ``fit``, plus the
epoch's validation of ``--val-images`` without TTA, as ``fit`` validates); the
epochs the profile runs (its ``epochs`` stage parameter, else the experiment's;
early stopping can only end a run sooner) and the training seconds; evaluation
seconds for one pass over ``--eval-images`` (with TTA where the experiment uses
it); and the training cost per image against ``simple-cnn`` measured in the same
run ("x simple-cnn"). A profile with ``acquisition_aware: true`` trains each
classifier a second time, on the acquisition-aware train split
(``--acquisition-train-images``), validated and evaluated as the first. The total is the sum of training and
evaluation seconds of the listed experiments: the model stages of the budget, without the ETL, the
evaluate/publish/serve stages, notebook start-up and MLflow logging.

Every time is measured twice: wall clock, and CPU (user + system time of this process, all its threads) divided
by the cores torch uses, which is what the wall clock would be on an otherwise idle machine; on a shared machine
the wall clock grows with the other jobs' load and the CPU figure barely does.

Pixels do not change the cost of a step, so the synthetic images are a pool of
``POOL_PER_CLASS`` smears per class, repeated to fill the batches.

    python benchmarks/recipes.py                                 # the experiments of the real profile, at its 96 px
    python benchmarks/recipes.py --experiments simple-cnn resnet18-classifier --image-size 128 --markdown
    python benchmarks/recipes.py --profile full --steps 10
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

BASELINE = "simple-cnn"
POOL_PER_CLASS = 16
"""Distinct synthetic smears per class; rendering them costs far more than training on them."""
INFERENCE_REPEATS = 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="real", help="a name in params/profiles/ or a YAML file")
    parser.add_argument("--experiments", nargs="+", help="names in params/experiments/ (default: the profile's)")
    parser.add_argument("--image-size", type=int, help="default: the profile's image_size")
    parser.add_argument("--train-images", type=int, default=2280, help="training split (default: 70%% of 3,256)")
    parser.add_argument("--val-images", type=int, default=490, help="validated every epoch, without TTA")
    parser.add_argument("--eval-images", type=int, default=980, help="evaluated once at the end (val + test)")
    parser.add_argument("--acquisition-train-images", type=int, default=1735,
                        help="acquisition-aware training split of a profile with acquisition_aware (default: the real "
                        "dataset's class mix in 20 blocks with embargo 37)")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per experiment")
    parser.add_argument("--warmup", type=int, default=3, help="untimed training steps before them")
    parser.add_argument("--markdown", action="store_true", help="also print rows for benchmarks/RESULTS.md")
    args = parser.parse_args()
    if min(args.steps, args.train_images, args.eval_images) < 1 or min(args.warmup, args.val_images) < 0:
        parser.error("--steps, --train-images and --eval-images must be positive, --warmup and --val-images not negative")

    import torch

    from leukolab.config import available
    from leukolab.data.reading.dataset import SmearDataset
    from leukolab.data.synthetic.smears import smear_table
    from leukolab.pipeline.graph import load_profile

    try:
        profile = load_profile(args.profile)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    profile_epochs = epochs_in_profile(profile)
    args.twice = bool(profile.parameters.get("acquisition_aware"))
    names = args.experiments or list(profile_epochs)
    if not names:
        parser.error(f"profile {args.profile!r} lists no experiments; name them with --experiments")
    unknown = sorted(set(names) - set(available("experiments")))
    if unknown:
        parser.error(f"unknown experiments {unknown}; choose from {available('experiments')}")
    size = args.image_size or profile.parameters.get("image_size")
    if not size:
        parser.error(f"profile {args.profile!r} sets no image_size; give --image-size")
    pool_frame = smear_table(POOL_PER_CLASS, size, seed=0)
    pools = {masks: SmearDataset(pool_frame, with_masks=masks) for masks in (False, True)}
    pixels = pools[False].images.float().div(255)
    mean, std = pixels.mean(dim=(0, 2, 3)).tolist(), pixels.std(dim=(0, 2, 3)).tolist()
    print(f"profile {args.profile}; {size} px; {args.train_images} training images per epoch, {args.val_images} validated "
          f"per epoch, {args.eval_images} evaluated; {args.warmup} + {args.steps} steps per experiment")
    if args.twice:
        print(f"acquisition_aware: classifiers also train on {args.acquisition_train_images} acquisition-aware images")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, "
          f"{platform.processor() or platform.machine()}, load average {os.getloadavg()[0]:.2f}")

    rows = {}
    for name in [BASELINE] + [n for n in names if n != BASELINE]:
        rows[name] = measure(name, profile_epochs.get(name), pools, mean, std, args)
        rows[name]["x_baseline"] = rows[name]["train_ms"] / rows[BASELINE]["train_ms"]
        print_row(name, rows[name])
    listed = [rows[n] for n in names]
    total = sum(r["train_s"] + r["eval_s"] for r in listed)
    total_cpu = sum(r["train_cpu_s"] + r["eval_cpu_s"] for r in listed)
    scope = f"the {args.profile} profile" if not args.experiments else "the listed experiments"
    print(f"total for {scope}: {total:.0f} s = {total / 60:.1f} min wall (training {sum(r['train_s'] for r in listed):.0f} s, "
          f"evaluation {sum(r['eval_s'] for r in listed):.0f} s); CPU / {torch.get_num_threads()} threads: {total_cpu:.0f} s = "
          f"{total_cpu / 60:.1f} min (load average {os.getloadavg()[0]:.2f})")
    if args.markdown:
        day, load = time.strftime("%Y-%m-%d"), f"{os.getloadavg()[0]:.1f}"
        for name, r in rows.items():
            print(f"| {day} | {args.profile} | {name}{' (x2: grouped + acquisition-aware)' if r['twice'] else ''} | {size} | "
                  f"{r['batch']} | {r['train_ms']:.1f} / {r['train_cpu_ms']:.1f} | {r['epoch_s']:.1f} / {r['epoch_cpu_s']:.1f} | "
                  f"{r['epochs']} | {r['train_s']:.0f} / {r['train_cpu_s']:.0f} | {r['plain_ms']:.1f} / {r['tta_ms']:.1f} | "
                  f"{r['eval_s']:.0f} / {r['eval_cpu_s']:.0f} | {r['x_baseline']:.2f} | {load} |")
        print(f"| {day} | {args.profile} | **total: {total:.0f} s wall, {total_cpu:.0f} s CPU / {torch.get_num_threads()} = "
              f"{total_cpu / 60:.1f} min** ({', '.join(names)}) | {size} | | | | | "
              f"{sum(r['train_s'] for r in listed):.0f} / {sum(r['train_cpu_s'] for r in listed):.0f} | | "
              f"{sum(r['eval_s'] for r in listed):.0f} / {sum(r['eval_cpu_s'] for r in listed):.0f} | | {load} |")


def epochs_in_profile(profile) -> dict[str, int | None]:
    """Experiment name -> the ``epochs`` its stage receives from the profile (None: the experiment's own)."""
    from leukolab.config import deep_merge, read_yaml
    from leukolab.pipeline.graph import PIPELINE_FILE

    stage_of = {spec["foreach"]: stage for stage, spec in read_yaml(PIPELINE_FILE)["stages"].items() if spec.get("foreach")}
    epochs = {}
    for key, names in profile.experiments.items():
        stage = stage_of.get(key, key)
        params = deep_merge(profile.parameters, profile.stage_parameters.get(stage, {}))
        epochs.update({name: params.get("epochs") for name in names})
    return epochs


def measure(name: str, epochs: int | None, pools: dict, mean, std, args) -> dict:
    """Train ``name`` for warm-up + timed steps with ``fit`` and time its inference; the budget arithmetic."""
    from leukolab import CLASS_NAMES
    from leukolab.config.experiment import load_experiment
    from leukolab.models.factory import build_model
    from leukolab.training.loop import fit

    experiment = load_experiment(name)
    epochs = int(epochs or experiment.training.epochs)
    batch = experiment.training.batch_size
    if experiment.distributed.num_processes > 1:
        print(f"  note: {name} trains data-parallel in the pipeline; measured here in one process")
    pool = pools[experiment.task != "classification"]
    train = repeated(pool, (args.warmup + args.steps + 1) * batch)
    model = build_model(experiment, len(CLASS_NAMES))
    stamps: list[tuple[float, float]] = []
    model.register_forward_pre_hook(lambda module, _: stamps.append(clocks()) if module.training else None)
    one_epoch = load_experiment(name, {"training": {"epochs": 1}})
    fit(model, train, pool, one_epoch, mean, std, CLASS_NAMES)
    steps = [b[0] - a[0] for a, b in zip(stamps, stamps[1:])][args.warmup:]
    step_s = statistics.median(steps)
    step_cpu = statistics.median([b[1] - a[1] for a, b in zip(stamps, stamps[1:])][args.warmup:])

    plain_ms, plain_cpu = inference_ms(model, pool, mean, std, tta=False)
    tta_ms, tta_cpu = inference_ms(model, pool, mean, std, tta=True)
    uses_tta = experiment.inference.tta
    twice = args.twice and experiment.task == "classification"
    steps_per_epoch = args.train_images // batch + (args.acquisition_train_images // batch if twice else 0)
    val = args.val_images * (2 if twice else 1)
    epoch_s = steps_per_epoch * step_s + val * plain_ms / 1000
    epoch_cpu_s = steps_per_epoch * step_cpu + val * plain_cpu / 1000
    evaluated = args.eval_images * (2 if twice else 1) / 1000
    return {"task": experiment.task, "batch": batch, "twice": twice, "train_ms": step_s / batch * 1000,
            "train_cpu_ms": step_cpu / batch * 1000, "epoch_s": epoch_s, "epoch_cpu_s": epoch_cpu_s, "epochs": epochs,
            "train_s": epoch_s * epochs, "train_cpu_s": epoch_cpu_s * epochs, "plain_ms": plain_ms, "tta_ms": tta_ms,
            "uses_tta": uses_tta, "eval_s": evaluated * (tta_ms if uses_tta else plain_ms),
            "eval_cpu_s": evaluated * (tta_cpu if uses_tta else plain_cpu), "step_spread": (min(steps), max(steps))}


def clocks() -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process divided by the threads torch uses)."""
    import torch

    return time.perf_counter(), time.process_time() / torch.get_num_threads()


def repeated(pool, count: int):
    """A dataset of ``count`` items drawn from ``pool`` over and over, in a shuffled order."""
    import torch

    return pool.subset(torch.randperm(count, generator=torch.Generator().manual_seed(0)) % len(pool))


def inference_ms(model, pool, mean, std, tta: bool) -> tuple[float, float]:
    """Median wall and CPU (per torch thread) ms per image of ``predict`` over the pool (after one untimed pass),
    with or without TTA."""
    from leukolab.training.loop import predict

    device = str(next(model.parameters()).device)
    kept, model.tta = model.tta, tta
    try:
        predict(model, pool.images, mean, std, device=device)
        times = []
        for _ in range(INFERENCE_REPEATS):
            start = clocks()
            predict(model, pool.images, mean, std, device=device)
            times.append([end - begin for begin, end in zip(start, clocks())])
    finally:
        model.tta = kept
    return tuple(statistics.median(column) / len(pool) * 1000 for column in zip(*times))


def print_row(name: str, r: dict) -> None:
    low, high = r["step_spread"]
    print(f"  {name:28s} {r['task']:14s} batch {r['batch']:3d}  {r['train_ms']:7.1f} ms/train image "
          f"({r['train_cpu_ms']:.1f} CPU; epoch {r['epoch_cpu_s']:.1f} s CPU{', x2' if r['twice'] else ''}) "
          f"(steps {low * 1000:.0f}-{high * 1000:.0f} ms)  {r['epoch_s']:7.1f} s/epoch x {r['epochs']:3d} = "
          f"{r['train_s']:7.0f} s  | inference {r['plain_ms']:.1f} ms/image, {r['tta_ms']:.1f} with TTA  "
          f"| evaluation {r['eval_s']:5.0f} s{' (TTA)' if r['uses_tta'] else ''}  | {r['x_baseline']:.2f} x {BASELINE}  "
          f"(load {os.getloadavg()[0]:.1f})", flush=True)


if __name__ == "__main__":
    main()
