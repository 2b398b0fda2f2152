"""Losses by name, for each task."""

from __future__ import annotations

import numpy as np
import segmentation_models_pytorch as smp
import torch
from torch import nn

from leukolab.config.experiment import Experiment, LossSpec

CLASSIFICATION_LOSSES = ("cross_entropy", "focal")
SEGMENTATION_LOSSES = ("bce", "dice", "bce_dice", "focal")


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency ("balanced") weights, so rare classes count as much as common ones."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = len(labels) / (num_classes * np.maximum(counts, 1))
    return torch.as_tensor(weights, dtype=torch.float32)


def classification_loss(spec: LossSpec, weights: torch.Tensor | None) -> nn.Module:
    name = spec.name or "cross_entropy"
    if name == "cross_entropy":
        return nn.CrossEntropyLoss(weight=weights, label_smoothing=spec.label_smoothing)
    if name == "focal":
        return smp.losses.FocalLoss("multiclass", gamma=spec.gamma)
    raise ValueError(f"unknown classification loss {name!r}; choose one of {CLASSIFICATION_LOSSES}")


def segmentation_loss(spec: LossSpec) -> nn.Module:
    name = spec.name or "bce_dice"
    if name == "bce":
        return nn.BCEWithLogitsLoss()
    if name == "dice":
        return smp.losses.DiceLoss("binary", from_logits=True)
    if name == "bce_dice":
        return _Sum(nn.BCEWithLogitsLoss(), smp.losses.DiceLoss("binary", from_logits=True))
    if name == "focal":
        return smp.losses.FocalLoss("binary", gamma=spec.gamma)
    raise ValueError(f"unknown segmentation loss {name!r}; choose one of {SEGMENTATION_LOSSES}")


class TaskLoss(nn.Module):
    """An experiment's loss on a model's outputs: classification, segmentation, or their sum for joint models.

    ``weights``: per-class weights of the classification loss (see :func:`class_weights`). The segmentation loss
    counts only the samples whose ``has_mask`` is True (all when it is ``None``).
    """

    def __init__(self, experiment: Experiment, weights: torch.Tensor | None = None):
        super().__init__()
        task, spec = experiment.task, experiment.loss
        self.classification = classification_loss(spec, weights) if task in ("classification", "joint") else None
        self.segmentation = segmentation_loss(spec.segmentation or spec if task == "joint" else spec) \
            if task in ("segmentation", "joint") else None

    def forward(self, out: dict[str, torch.Tensor], labels: torch.Tensor, masks: torch.Tensor,
                has_mask: torch.Tensor | None = None) -> torch.Tensor:
        loss = 0.0
        if self.classification is not None:
            loss = loss + self.classification(out["logits"], labels)
        if self.segmentation is not None:
            predicted = out["mask"]
            if has_mask is None or bool(has_mask.all()):
                loss = loss + self.segmentation(predicted, masks)
            elif has_mask.any():
                loss = loss + self.segmentation(predicted[has_mask], masks[has_mask])
            else:  # no mask in this batch: no segmentation loss, but the head stays in the graph (DDP needs its gradients)
                loss = loss + predicted.sum() * 0.0
        return loss


class _Sum(nn.Module):
    def __init__(self, *losses: nn.Module):
        super().__init__()
        self.losses = nn.ModuleList(losses)

    def forward(self, prediction, target):
        return sum(loss(prediction, target) for loss in self.losses)
