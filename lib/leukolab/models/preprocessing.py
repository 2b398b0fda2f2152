"""Per-image preprocessing before the network, against acquisition shortcuts: a central border crop and Reinhard
stain normalisation.

Both work on uint8 N x 3 x H x W batches at the network's input size and give uint8 batches of the same shape, so the
training datasets (images as the ETL resized them) and a published model (images as :meth:`SmearModel.prepare`
resized them) pass through the same function and the network sees the same pixels.

- **Border crop** keeps the centre of each image, ``fraction`` of the side cut from every edge (corner artefacts,
  scale bars, labels), and resizes it back to the input size (bilinear).
- **Reinhard normalisation** (Reinhard et al. 2001) converts each image to CIELAB (OpenCV, float) and maps each
  channel's mean and standard deviation over the whole image to a fixed target, fitted on the training split
  (:func:`fit_stain_target`): the median over training images of their per-image statistics. Whole-image statistics
  are used on purpose: the session effects to remove (background tint, illumination) live mostly in the background,
  which a tissue mask would leave out; the median makes the target robust to a few odd sessions.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

MIN_STD = 1.0
"""Floor on an image's per-channel LAB standard deviation (LAB units; about one just-noticeable difference), so a
nearly flat channel is not blown up into noise."""


@dataclass(frozen=True)
class StainTarget:
    """The LAB statistics every image is mapped to: per channel (L, a, b) mean and standard deviation."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass(frozen=True)
class Preprocessing:
    """What a model does to each uint8 image before it standardises it: crop (share of the side cut from each edge),
    then stain normalisation to ``stain_target`` (None: off). The default does nothing."""

    border_crop: float = 0.0
    stain_target: StainTarget | None = None

    @property
    def active(self) -> bool:
        return bool(self.border_crop) or self.stain_target is not None

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 N x 3 x H x W in, uint8 of the same shape out (the input itself when nothing is on)."""
        if self.border_crop:
            images = crop_border(images, self.border_crop)
        if self.stain_target is not None:
            images = normalize_stain(images, self.stain_target)
        return images


def crop_border(images: torch.Tensor, fraction: float) -> torch.Tensor:
    """Cut ``fraction`` of each side from every edge of uint8 N x 3 x H x W images and resize the centre back to
    H x W (bilinear, rounded to uint8)."""
    height, width = images.shape[-2:]
    top, left = round(fraction * height), round(fraction * width)
    if not (top or left):
        return images
    if 2 * top >= height or 2 * left >= width:
        raise ValueError(f"a border crop of {fraction} leaves nothing of a {width}x{height} image")
    centre = images[..., top:height - top, left:width - left].float()
    resized = F.interpolate(centre, size=(height, width), mode="bilinear", align_corners=False)
    return resized.round_().clamp_(0, 255).to(torch.uint8)


def lab_statistics(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of an H x W x 3 uint8 RGB image in CIELAB (L 0-100, a and b signed)."""
    lab = _lab(image).reshape(-1, 3)
    return lab.mean(0), lab.std(0)


def _lab(image: np.ndarray) -> np.ndarray:
    """An H x W x 3 uint8 RGB image in CIELAB, float32."""
    return cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)


def normalize_stain(images: torch.Tensor, target: StainTarget) -> torch.Tensor:
    """Reinhard normalisation of uint8 N x 3 x H x W images to ``target``: per image and LAB channel,
    ``(x - mean) / std * target.std + target.mean``, back to RGB, rounded to uint8."""
    target_mean, target_std = np.asarray(target.mean, np.float32), np.asarray(target.std, np.float32)
    out = np.empty((len(images), *images.shape[2:], 3), np.uint8)
    for i, image in enumerate(images.permute(0, 2, 3, 1).numpy()):
        lab = _lab(image)
        flat = lab.reshape(-1, 3)
        mean, std = flat.mean(0), np.maximum(flat.std(0), MIN_STD)
        lab = (lab - mean) * (target_std / std) + target_mean
        rgb = cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_Lab2RGB)
        out[i] = np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def fit_stain_target(images: torch.Tensor) -> StainTarget:
    """The target of :func:`normalize_stain` for uint8 N x 3 x H x W training images: per LAB channel, the median over
    images of each image's mean and of its standard deviation."""
    if not len(images):
        raise ValueError("a stain target needs at least one training image")
    stats = [lab_statistics(image) for image in images.permute(0, 2, 3, 1).numpy()]
    means, stds = np.stack([m for m, _ in stats]), np.stack([s for _, s in stats])
    return StainTarget(tuple(float(v) for v in np.median(means, 0)), tuple(float(v) for v in np.median(stds, 0)))
