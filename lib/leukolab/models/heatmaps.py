"""Where a network looked: Grad-CAM heatmaps of a class, from the last convolutional stage of its encoder.

:class:`HeatmapExplainer` copies a :class:`~leukolab.models.factory.SmearNet` once (its own hooks, frozen weights,
test-time augmentation off) and explains batches of standardised images with ``pytorch_grad_cam.GradCAM`` on the
``logits`` output. The target layer is chosen per architecture (:func:`target_layer`). Heatmaps are float arrays in
[0, 1] at the input's size, each scaled to its own maximum.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence

import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from leukolab.models.factory import SmearNet
from leukolab.models.simple_cnn import SimpleCNN


class _Logits(nn.Module):
    """A SmearNet's ``logits`` alone, the tensor Grad-CAM differentiates (for smp models with a classification head,
    from the encoder and the head only: the head reads the encoder's deepest features, the decoder plays no part)."""

    def __init__(self, network: SmearNet):
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inner = self.network.network
        if getattr(inner, "classification_head", None) is not None:
            return inner.classification_head(inner.encoder(x)[-1])
        return self.network(x)["logits"]


def target_layer(network: SmearNet, image_size: int = 64) -> nn.Module:
    """The module whose activations Grad-CAM weighs: the last conv block of :class:`SimpleCNN`; for smp and timm
    encoders (``EncoderClassifier``, smp models with a classification head) the encoder's last stage, i.e. the last
    of its modules to finish whose output has the shape of the encoder's deepest feature map (found by one probe
    pass of a blank ``image_size`` image)."""
    if network.task == "segmentation":
        raise ValueError("a segmentation-only model has no class to explain: heatmaps need a classifier or a joint model")
    inner = network.network
    if isinstance(inner, SimpleCNN):
        return inner.features[-1]
    encoder = getattr(inner, "encoder", None)
    if encoder is None:
        raise ValueError(f"no target layer known for {type(inner).__name__}: it has no SimpleCNN features or encoder")
    finished: list[tuple[nn.Module, torch.Tensor]] = []
    hooks = [module.register_forward_hook(lambda module, _, output: finished.append((module, output)))
             for module in encoder.modules() if module is not encoder]
    try:
        with torch.no_grad():
            deepest = encoder(torch.zeros(1, 3, image_size, image_size, device=next(encoder.parameters()).device))[-1]
    finally:
        for hook in hooks:
            hook.remove()
    stages = [module for module, output in finished if isinstance(output, torch.Tensor) and output.shape == deepest.shape]
    if not stages:
        raise ValueError(f"no module of the {type(encoder).__name__} outputs its deepest feature map")
    return stages[-1]


def _start_graph(_module: nn.Module, _inputs, output: torch.Tensor) -> torch.Tensor:
    """The target layer's output as a leaf that requires grad: with frozen weights, the backward pass runs from the
    logits to this layer only (all Grad-CAM needs), not through the encoder below it."""
    return output.detach().requires_grad_(True)


class HeatmapExplainer:
    """Grad-CAM for one network; thread-safe (one explanation at a time), independent of the original's use."""

    def __init__(self, network: SmearNet, image_size: int = 64):
        explained = copy.deepcopy(network).eval()
        explained.tta = False
        explained.requires_grad_(False)
        layer = target_layer(explained, image_size)
        layer.register_forward_hook(_start_graph)  # before GradCAM's hooks, which then see the new leaf
        self._cam = GradCAM(_Logits(explained), [layer])
        self._lock = threading.Lock()

    def __call__(self, images: torch.Tensor, classes: Sequence[int] | None = None) -> np.ndarray:
        """N x H x W heatmaps in [0, 1] of standardised N x 3 x H x W ``images``, for ``classes`` (one index per image;
        ``None``: the class each image's logits rank first)."""
        if classes is not None and len(classes) != len(images):
            raise ValueError(f"give one class per image: {len(classes)} classes for {len(images)} images")
        targets = None if classes is None else [ClassifierOutputTarget(int(c)) for c in classes]
        with self._lock, torch.enable_grad():
            heatmaps = self._cam(input_tensor=images.detach().float(), targets=targets)
        return np.clip(heatmaps, 0.0, 1.0).astype(np.float32)


def class_heatmaps(network: SmearNet, images: torch.Tensor, classes: Sequence[int] | None = None) -> np.ndarray:
    """Heatmaps of ``images`` (standardised N x 3 x H x W) for ``classes`` (default: the predicted ones): N x H x W in
    [0, 1]. Builds a :class:`HeatmapExplainer` each call; keep one to explain many batches."""
    return HeatmapExplainer(network, images.shape[-1])(images, classes)
