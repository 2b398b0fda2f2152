"""Batch augmentation of images and masks together.

Works on whole uint8 batches as tensors, so it costs little next to a
training step. Geometric transforms (flips, 90-degree rotations) move image
and mask together; colour transforms (brightness, contrast, saturation and a
per-channel stain gain) touch only the image. Randomness comes from a seeded
``torch.Generator`` so a run is repeatable. Mixup and CutMix (timm's, on the
normalised batch) mix pairs of images and their labels into soft targets; they
are for classifiers only, off unless an experiment asks for them.
"""

from __future__ import annotations

import torch

from leukolab.config.experiment import AugmentationSpec


def label_mixer(config: AugmentationSpec, num_classes: int):
    """timm's ``Mixup`` (mixup and/or CutMix, soft targets, no smoothing of its own), or None when both are off."""
    if not (config.mixup or config.cutmix):
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, label_smoothing=0.0, num_classes=num_classes)


def augment_batch(images: torch.Tensor, masks: torch.Tensor, config: AugmentationSpec, generator: torch.Generator):
    """Augment uint8 NCHW images and N1HW masks; returns float images in [0, 1] and masks."""
    images = images.float() / 255.0
    n = images.shape[0]
    if config.flip:
        flip_h = torch.rand(n, generator=generator) < 0.5
        flip_v = torch.rand(n, generator=generator) < 0.5
        images, masks = _where(flip_h, images.flip(-1), images), _where(flip_h, masks.flip(-1), masks)
        images, masks = _where(flip_v, images.flip(-2), images), _where(flip_v, masks.flip(-2), masks)
    if config.rotate90 and images.shape[-1] == images.shape[-2]:
        turns = torch.randint(0, 4, (n,), generator=generator)
        images = torch.stack([torch.rot90(im, int(k), (-2, -1)) for im, k in zip(images, turns)])
        if masks.shape[-1] == images.shape[-1]:
            masks = torch.stack([torch.rot90(m, int(k), (-2, -1)) for m, k in zip(masks, turns)])
    images = _jitter_colour(images, config, generator)
    return images.clamp_(0.0, 1.0), masks


def _where(condition: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.shape[-1] != a.shape[-2] and a.shape[-1] == 1:  # placeholder masks of size 1
        return b
    return torch.where(condition.view(-1, *([1] * (a.dim() - 1))), a, b)


def _uniform(n: int, strength: float, generator: torch.Generator) -> torch.Tensor:
    return 1.0 + (torch.rand(n, generator=generator) * 2 - 1) * strength


def _jitter_colour(images: torch.Tensor, config: AugmentationSpec, generator: torch.Generator) -> torch.Tensor:
    n = images.shape[0]
    if config.brightness:
        images = images * _uniform(n, config.brightness, generator).view(-1, 1, 1, 1)
    if config.contrast:
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        images = (images - mean) * _uniform(n, config.contrast, generator).view(-1, 1, 1, 1) + mean
    if config.saturation:
        grey = images.mean(dim=1, keepdim=True)
        images = (images - grey) * _uniform(n, config.saturation, generator).view(-1, 1, 1, 1) + grey
    if config.stain:
        gains = 1.0 + (torch.rand(n, 3, generator=generator) * 2 - 1) * config.stain
        images = images * gains.view(n, 3, 1, 1)
    return images
