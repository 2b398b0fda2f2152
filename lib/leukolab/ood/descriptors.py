"""Cheap input checks: how an image is coloured, what kind of image it is and how large its cells are, as vectors.

A pathologist tells a smear field from another kind of image at a glance: a field of view is mostly pale background
and pink red cells with a few purple white cells, in colour, at one magnification. The descriptors are measured on
the image the network sees (HxWx3 uint8 at the model's input size) and compared with the training images' by a
distance (:mod:`leukolab.ood.detectors`), so no number here is a hand-set limit:

- :func:`colour_histograms`: the joint RGB histogram (6 levels per channel), square-rooted, so that Euclidean
  distance is the Hellinger distance between colour distributions (another stain, illumination, greyscale, black);
- :func:`structure_spectra`: the share of the image's variance in each band of spatial frequency, square-rooted
  (its texture at each scale: another magnification, one cell filling a crop, a cell on black);
- :func:`size_distributions`: how the image's darkness divides among objects of each size (a granulometry), square-
  rooted: red cells have one size in a lab's fields, so their size in pixels tells the magnification, and a crop of
  one cell or a cell on black has no small cells at all.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

LEVELS = 6
"""Levels per channel of the colour histogram (216 bins)."""
BANDS = (0.0, *np.geomspace(1 / 64, 0.71, 7))
"""Edges of the spatial-frequency bands, in cycles per pixel: everything under 1/64, then six bands each about 1.9
times the last up to 0.71 (the corner of the spectrum), so that a change of scale moves power by about a band."""
SIZES = tuple(np.geomspace(0.03, 0.3, 6))
"""Sides of the squares of :func:`size_distributions`, as fractions of the image's side (2 to 19 px at 64 px): each
about 1.6 times the last, from under a red cell's radius to over a white cell's diameter."""


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


def size_distributions(images: np.ndarray) -> np.ndarray:
    """N x 6 square-rooted shares of each image's darkness (255 minus its grey level) removed between consecutive
    grey-level openings by the squares of :data:`SIZES` (fewer under about 50 px, where sides coincide): the share
    of its darkness in objects of each width (what is left, in objects wider than the largest square, is not
    counted)."""
    darkness = 255 - np.asarray(images, np.float64).mean(3)
    sides = sorted({max(2, round(fraction * darkness.shape[1])) for fraction in SIZES})
    volumes = np.stack([darkness.sum((1, 2))] + [ndimage.grey_opening(darkness, size=(1, side, side)).sum((1, 2))
                                                  for side in sides], 1)
    removed = np.maximum(-np.diff(volumes, axis=1), 0)
    return np.sqrt(removed / np.maximum(volumes[:, :1], 1e-12))
