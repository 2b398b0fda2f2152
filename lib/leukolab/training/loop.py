"""The training loop: AdamW, a cosine or one-cycle schedule, early stopping, checkpoints.

One function, :func:`fit`, trains any task. Each epoch ends with validation
metrics, a callback (MLflow logging) and a checkpoint, so an interrupted
experiment resumes where it stopped. The best epoch's weights are restored;
without a validation set (cross-validation folds) the full schedule runs and
the final weights are kept.
"""

from __future__ import annotations

import copy
import hashlib
import io
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from timm.utils import ModelEmaV3
from tqdm.auto import tqdm

from leukolab.config.experiment import Experiment
from leukolab.data.reading.dataset import SmearDataset
from leukolab.data.reading.streaming import SmearStream
from leukolab.disk import write_whole
from leukolab.metrics.scores import classification_metrics, segmentation_scores
from leukolab.models.factory import without_tta
from leukolab.models.inputs import normalize
from leukolab.training.augment import augment_batch, label_mixer
from leukolab.training.losses import TaskLoss, class_weights

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    """What training produced: per-epoch history and the epoch whose weights were kept."""

    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = float("-inf")
    monitor: str = ""
    stopped_early: bool = False
    shard: list[int] = field(default_factory=list)  # distributed runs: training indices this process saw in its first epoch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


@torch.no_grad()
def predict(model, images: torch.Tensor, mean, std, batch_size: int = 32, device: str = "cpu") -> dict[str, np.ndarray]:
    """Logits and mask probabilities for uint8 NCHW images, batch by batch."""
    model.eval()
    outputs: dict[str, list] = {}
    for start in range(0, len(images), batch_size):
        batch = normalize(images[start:start + batch_size].to(device), mean, std)
        for key, value in model(batch).items():
            value = torch.sigmoid(value) if key == "mask" else value
            outputs.setdefault(key, []).append(value.float().cpu().numpy())
    return {key: np.concatenate(values) for key, values in outputs.items()}


@torch.no_grad()
def dataset_outputs(model, dataset: SmearDataset | SmearStream, mean, std, batch_size: int = 32,
                    device: str = "cpu") -> dict[str, np.ndarray]:
    """``labels``, the model's ``logits`` (if it classifies) and, if it segments, the per-image ``dice`` and ``iou``
    of the images with a mask; batch by batch, so a stream is never held whole."""
    model.eval()
    outputs: dict[str, list] = {}
    batches = (DataLoader(dataset, batch_size=batch_size) if isinstance(dataset, SmearStream) else
               (dataset[start:start + batch_size] for start in range(0, len(dataset), batch_size)))
    for images, labels, masks, has_mask in batches:
        out = model(normalize(images.to(device), mean, std))
        outputs.setdefault("labels", []).append(labels.numpy())
        if "logits" in out:
            outputs.setdefault("logits", []).append(out["logits"].float().cpu().numpy())
        if "mask" in out:
            shown = has_mask.numpy()
            scores = segmentation_scores(torch.sigmoid(out["mask"]).float().cpu().numpy()[shown], masks.numpy()[shown])
            for key, value in zip(("dice", "iou"), scores):
                outputs.setdefault(key, []).append(value)
    return {key: np.concatenate(values) for key, values in outputs.items()}


def evaluate(model, dataset: SmearDataset | SmearStream, mean, std, class_names, task: str,
             device: str = "cpu") -> dict[str, float]:
    """Metrics of the model on a dataset (in memory or streamed): classification and/or segmentation, by task."""
    out = dataset_outputs(model, dataset, mean, std, device=device)
    metrics = {}
    if "logits" in out:
        probabilities = torch.softmax(torch.as_tensor(out["logits"]), 1).numpy()
        metrics.update(classification_metrics(out["labels"], probabilities, list(class_names)))
    if "dice" in out and task != "classification":
        metrics["mask_images"] = len(out["dice"])
        if len(out["dice"]):  # Dice and IoU only where there is a mask to compare with
            metrics.update({"dice": float(out["dice"].mean()), "iou": float(out["iou"].mean())})
    return metrics


def fit(
    model: torch.nn.Module,
    train_set: SmearDataset | SmearStream,
    val_set: SmearDataset | SmearStream | None,
    experiment: Experiment,
    mean, std, class_names,
    checkpoint_dir: str | Path | None = None,
    on_epoch_end: Callable[[int, dict], None] | None = None,
) -> FitResult:
    """Train ``model`` as ``experiment`` says; return the history with the best weights loaded.

    With ``val_set=None`` nothing is validated: no early stopping, all ``epochs`` run and the final weights (the
    EMA's, when enabled) are kept.

    Inside an initialised ``torch.distributed`` process group (see
    :mod:`leukolab.training.distributed`) each process trains on its own shard
    under DistributedDataParallel (``batch_size`` is per process); rank 0
    validates, decides early stopping for all, calls ``on_epoch_end`` and
    writes the checkpoint. A :class:`~leukolab.data.reading.streaming.SmearStream` is sharded by rank itself and read
    by ``data.workers`` DataLoader workers.
    """
    task, train_cfg, seed = experiment.task, experiment.training, experiment.seed
    seed_everything(seed)
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    device_type = device.split(":")[0]
    model.to(device)
    epochs = train_cfg.epochs
    generator = torch.Generator().manual_seed(seed + rank)
    loader, steps, sampler = _train_loader(train_set, experiment, rank, world, generator)
    trained = DistributedDataParallel(model) if distributed else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    scheduler = _scheduler(optimizer, train_cfg.schedule, epochs, steps, train_cfg.lr)
    balanced = experiment.loss.class_weights == "balanced"
    weights = class_weights(train_set.labels.numpy(), len(class_names)) if balanced else None
    task_loss = TaskLoss(experiment, weights).to(device)
    augment = experiment.augmentation
    mixer = label_mixer(augment, len(class_names))
    if mixer and (task != "classification" or (experiment.loss.name or "cross_entropy") != "cross_entropy"):
        raise ValueError("mixup and cutmix mix labels: they need task classification with loss cross_entropy")
    monitor, patience, clip = experiment.monitor, experiment.early_stopping.patience, train_cfg.grad_clip
    scaler = torch.amp.GradScaler("cuda", enabled=device_type == "cuda")
    # An exponential moving average of the weights (and BN statistics) is what gets validated and kept:
    # it evens out the step-to-step noise of small-batch training.
    ema_decay = train_cfg.ema_decay
    # Warm-up ramps the decay from 0, so early epochs are not dominated by the random initial weights.
    ema = ModelEmaV3(model, decay=ema_decay, use_warmup=True) if ema_decay else None
    kept = ema.module if ema else model

    result, best_state, start_epoch = FitResult(monitor=monitor), None, 0
    checkpoint = Path(checkpoint_dir) / "last.pt" if checkpoint_dir else None
    if checkpoint and checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        if state["config_hash"] == _config_hash(experiment):
            model.load_state_dict(state["model"])
            if ema:
                ema.load_state_dict(state["ema"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            generator.set_state(state["generator"])
            result, best_state, start_epoch = state["result"], state["best_state"], state["epoch"] + 1
            log.info("resuming from %s at epoch %d", checkpoint, start_epoch + 1)

    for epoch in range(start_epoch, epochs):
        model.train()
        losses, epoch_started = [], time.perf_counter()
        if sampler is not None:
            sampler.set_epoch(epoch)
        if distributed:
            result.shard = result.shard or (sampler.indices() if isinstance(sampler, SmearStream) else list(sampler))
        for images, labels, masks, has_mask in tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", total=steps, leave=False,
                                                    mininterval=2, disable=rank > 0):
            images, masks = augment_batch(images, masks, augment, generator)
            images = normalize(images.to(device), mean, std)
            labels, masks, has_mask = labels.to(device), masks.to(device).float(), has_mask.to(device)
            if mixer and len(images) % 2 == 0:  # pairs: the batch is mixed with itself reversed
                images, labels = mixer(images, labels)
            with torch.autocast(device_type=device_type, enabled=device_type == "cuda"):
                loss = task_loss(trained(images), labels, masks, has_mask)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            if ema:
                ema.update(model, step=epoch * steps + len(losses) + 1)
            losses.append(loss.item())
        if rank == 0:
            train_seconds = time.perf_counter() - epoch_started
            best_state = _end_epoch(result, epoch, epochs, losses, train_seconds, optimizer, kept, val_set, mean, std,
                                    class_names, task, device, on_epoch_end, best_state)
        if checkpoint and rank == 0:  # whole or not at all: a half-written checkpoint is neither resumed nor left
            state = io.BytesIO()
            torch.save({"config_hash": _config_hash(experiment), "model": model.state_dict(), "ema": ema.state_dict() if ema else None, "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "generator": generator.get_state(), "result": result,
                        "best_state": best_state, "epoch": epoch}, state)
            write_whole(checkpoint, state.getvalue())
        stop = torch.tensor([val_set is not None and epoch + 1 - result.best_epoch >= patience])
        if distributed:
            dist.broadcast(stop, src=0)
        if stop.item():
            result.stopped_early = True
            log.info("early stop: %s did not improve for %d epochs", monitor, patience)
            break
    if val_set is None:
        result.best_epoch, best_state = len(result.history), kept.state_dict()
    if best_state is not None:
        model.load_state_dict(best_state)
    return result


def _train_loader(train_set: SmearDataset | SmearStream, experiment: Experiment, rank: int, world: int, generator):
    """``(loader, batches per epoch, what to tell the epoch)``: a rank's shard of ``train_set``, shuffled per epoch,
    with as many batches on every rank (a partial last batch only when the shard is a single one)."""
    batch_size = experiment.training.batch_size
    if isinstance(train_set, SmearStream):
        stream, workers = train_set.shard(rank, world), experiment.data.workers
        drop_last = len(stream) > batch_size * max(workers, 1)
        loader = DataLoader(stream, batch_size=batch_size, num_workers=workers, drop_last=drop_last)
        return loader, stream.batches(batch_size, workers, drop_last), stream
    sampler = DistributedSampler(train_set, world, rank, shuffle=True, seed=experiment.seed, drop_last=True) if world > 1 else None
    loader = DataLoader(train_set, batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
                        generator=None if sampler else generator, drop_last=len(train_set) > batch_size * world)
    return loader, len(loader), sampler


def _end_epoch(result: FitResult, epoch, epochs, losses, train_seconds, optimizer, kept, val_set, mean, std, class_names,
               task, device, on_epoch_end, best_state):
    """Validate, record the epoch (with the seconds its training steps and its validation took), keep the best
    weights and report; returns the best state so far."""
    metrics = {"train_loss": float(np.mean(losses)), "lr": optimizer.param_groups[0]["lr"], "train_seconds": train_seconds}
    if val_set is not None:
        val_started = time.perf_counter()
        # Epoch validation sees each image once: test-time augmentation would make it 8 times dearer for an
        # early-stopping signal it barely changes; the restored model is evaluated with it afterwards.
        with without_tta(kept):
            metrics.update({f"val_{k}": v for k, v in evaluate(kept, val_set, mean, std, class_names, task, device).items()})
        metrics["val_seconds"] = time.perf_counter() - val_started
    result.history.append({"epoch": epoch + 1, **metrics})
    score = metrics.get(result.monitor, float("-inf"))
    improved = score > result.best_score
    if improved:
        result.best_score, result.best_epoch = score, epoch + 1
        best_state = copy.deepcopy(kept.state_dict())
    log.info("epoch %d/%d loss %.4f %s %.4f%s", epoch + 1, epochs, metrics["train_loss"], result.monitor, score,
             " (best)" if improved else "")
    if on_epoch_end:
        on_epoch_end(epoch + 1, metrics)
    return best_state


def _scheduler(optimizer, name: str, epochs: int, steps_per_epoch: int, lr: float):
    total = max(1, epochs * steps_per_epoch)
    if name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total, eta_min=lr * 0.01)
    if name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    raise ValueError(f"unknown schedule {name!r}; choose cosine, onecycle or constant")


def _config_hash(experiment: Experiment) -> str:
    return hashlib.sha256(experiment.model_dump_json().encode()).hexdigest()
