"""Cheap input checks: how an image is coloured and what kind of image it is, as vectors compared with training's.

A pathologist tells a smear field from another kind of image at a glance: a field of view is mostly pale background
and pink red cells with a few purple white cells, in colour, at one magnification. Both descriptors are measured on
the image the network sees (HxWx3 uint8 at the model's input size) and compared with the training images' by the
distance to the nearest ones (:mod:`leukolab.ood.detectors`), so no number here is a hand-set limit:

- :func:`colour_histograms`: the joint RGB histogram (6 levels per channel), square-rooted, so that Euclidean
  distance is the Hellinger distance between colour distributions (another stain, illumination, greyscale, black);
- :func:`structure_spectra`: the share of the image's variance in each band of spatial frequency, square-rooted
  (its cells' size: another magnification, one cell filling a crop, a cell on black).
"""

from __future__ import annotations

import numpy as np

LEVELS = 6
"""Levels per channel of the colour histogram (216 bins)."""
BANDS = (0.0, *np.geomspace(1 / 64, 0.71, 7))
"""Edges of the spatial-frequency bands, in cycles per pixel: everything under 1/64, then six bands each about 1.9
times the last up to 0.71 (the corner of the spectrum), so that a change of scale moves power by about a band."""


def colour_histograms(images: np.ndarray) -> np.ndarray:
    """N x 216 square-rooted joint colour histograms of N x H x W x 3 uint8 images."""
    levels = np.asarray(images, np.int64) * LEVELS // 256
    bins = ((levels[..., 0] * LEVELS + levels[..., 1]) * LEVELS + levels[..., 2]).reshape(len(levels), -1)
    counts = np.stack([np.bincount(row, minlength=LEVELS**3) for row in bins]).astype(np.float64)
    return np.sqrt(counts / counts.sum(1, keepdims=True))


def structure_spectra(images: np.ndarray) -> np.ndarray:
    """N x 7 square-rooted shares of each grey image's variance in the :data:`BANDS` of spatial frequency."""
    grey = np.asarray(images, np.float64).mean(3)
    grey -= grey.mean((1, 2), keepdims=True)
    power = np.abs(np.fft.fft2(grey)) ** 2
    rows, cols = np.meshgrid(np.fft.fftfreq(grey.shape[1]), np.fft.fftfreq(grey.shape[2]), indexing="ij")
    radius = np.hypot(rows, cols)
    bands = np.stack([power[:, (radius > low) & (radius <= high)].sum(1) for low, high in zip(BANDS[:-1], BANDS[1:])], 1)
    return np.sqrt(bands / np.maximum(bands.sum(1, keepdims=True), 1e-12))
