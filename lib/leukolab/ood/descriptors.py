"""Cheap input checks: what kind of image this is and how it is stained, as a short vector of numbers.

A pathologist tells a smear field from another kind of image at a glance: a field of view is mostly pale background
and pink red cells with a few purple white cells, in colour, at one magnification. The descriptors measure that on the
image the network sees (HxWx3 uint8 at the model's input size): colour (channel means and spreads, saturation), how
much of it is black (a segmented cell on black) or strongly stained (one cell filling a crop), and edge density at two
scales (red cells of another size: another magnification, or a crop). The detector compares them with the training
split's (:class:`~leukolab.ood.detectors.Gaussian`), so no number here is a hand-set limit.
"""

from __future__ import annotations

import numpy as np

NAMES = ("mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b", "saturation", "saturation_spread", "black",
         "stained", "edges_fine", "edges_coarse")
"""The descriptors, in the order :func:`describe` returns them."""


def describe(images: np.ndarray) -> np.ndarray:
    """N x len(:data:`NAMES`) descriptors of N x H x W x 3 uint8 images."""
    rgb = np.asarray(images, np.float32) / 255.0
    flat = rgb.reshape(len(rgb), -1, 3)
    brightest, darkest = flat.max(2), flat.min(2)
    saturation = (brightest - darkest) / np.maximum(brightest, 1e-3)
    grey = rgb.mean(3)
    coarse = grey[:, : grey.shape[1] // 2 * 2, : grey.shape[2] // 2 * 2]
    coarse = coarse.reshape(len(grey), coarse.shape[1] // 2, 2, coarse.shape[2] // 2, 2).mean((2, 4))
    return np.column_stack([
        flat.mean(1), flat.std(1), saturation.mean(1), saturation.std(1),
        (brightest < 0.12).mean(1),  # black: no smear field has it
        (darkest < 0.45).mean(1),  # strongly stained: nuclei and dense cytoplasm
        _edges(grey), _edges(coarse),
    ]).astype(np.float64)


def _edges(grey: np.ndarray) -> np.ndarray:
    """Mean absolute difference between neighbouring pixels, per image."""
    return np.abs(np.diff(grey, axis=1)).mean((1, 2)) + np.abs(np.diff(grey, axis=2)).mean((1, 2))
