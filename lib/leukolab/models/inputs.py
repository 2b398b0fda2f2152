"""What a network takes in: uint8 smear batches standardised by the training split's mean and std."""

from __future__ import annotations

import torch


def normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 or [0, 1] float NCHW to standardised float32."""
    images = images.float()
    if images.max() > 1.0:
        images = images / 255.0
    mean = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - mean) / std
