"""The penultimate features of a network: the input of its last linear layer, captured during a forward pass."""

from __future__ import annotations

import threading
from contextlib import contextmanager

import torch
from torch import nn


def last_linear(network: nn.Module) -> nn.Linear | None:
    """The network's last ``nn.Linear`` (the classifier head of every classifying network here), None without one."""
    linears = [module for module in network.modules() if isinstance(module, nn.Linear)]
    return linears[-1] if linears else None


@contextmanager
def captured_features(network: nn.Module):
    """Within the block, this thread's forward passes append their penultimate features (N x D) to the yielded
    list; with test-time augmentation (8 views per image, one pass), the mean over the views.

    Threads may share the network (the API's inference workers do): the last linear layer gets one hook for good,
    which records into the list of the thread whose pass it is; so no hook is added or removed while another
    thread's pass runs, and no thread sees another's features.
    """
    captured: list[torch.Tensor] = []
    layer = last_linear(network)
    if layer is None:
        yield captured
        return
    with _hook_lock:
        if not getattr(layer, _HOOKED, False):
            layer.register_forward_hook(_record_features)
            setattr(layer, _HOOKED, True)
    outer = getattr(_capturing, "features", None)
    _capturing.features = captured
    try:
        yield captured
    finally:
        _capturing.features = outer


_HOOKED = "_leukolab_features_hook"
_hook_lock = threading.Lock()
_capturing = threading.local()


def _record_features(_module: nn.Module, inputs, _output) -> None:
    captured = getattr(_capturing, "features", None)
    if captured is not None:
        captured.append(inputs[0].detach())


def features_per_image(captured: list[torch.Tensor], images: int):
    """The features of one pass over ``images`` images as N x D numpy (the 8 views of test-time augmentation averaged)."""
    features = captured[-1]
    if features.shape[0] == 8 * images and images:
        features = features.reshape(8, images, -1).mean(0)
    return features.float().cpu().numpy()
