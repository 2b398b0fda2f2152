"""The penultimate features of a network: the input of its last linear layer, captured during a forward pass."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


def last_linear(network: nn.Module) -> nn.Linear | None:
    """The network's last ``nn.Linear`` (the classifier head of every classifying network here), None without one."""
    linears = [module for module in network.modules() if isinstance(module, nn.Linear)]
    return linears[-1] if linears else None


@contextmanager
def captured_features(network: nn.Module):
    """Within the block, forward passes append their penultimate features (N x D) to the yielded list; with
    test-time augmentation (8 views per image, one pass), the mean over the views."""
    captured: list[torch.Tensor] = []
    layer = last_linear(network)
    if layer is None:
        yield captured
        return
    handle = layer.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0].detach()))
    try:
        yield captured
    finally:
        handle.remove()


def features_per_image(captured: list[torch.Tensor], images: int):
    """The features of one pass over ``images`` images as N x D numpy (the 8 views of test-time augmentation averaged)."""
    features = captured[-1]
    if features.shape[0] == 8 * images and images:
        features = features.reshape(8, images, -1).mean(0)
    return features.float().cpu().numpy()
