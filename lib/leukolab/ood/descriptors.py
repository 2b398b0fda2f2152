"""Cheap input checks: what kind of image this is and how it is stained, as a short vector of numbers.

A pathologist tells a smear field from another kind of image at a glance: a field of view is mostly pale background
and pink red cells with a few purple white cells, in colour, at one magnification. The descriptors measure that on the
image the network sees (HxWx3 uint8 at the model's input size): colour (channel means and spreads, saturation), how
much of it is black (a segmented cell on black) or strongly stained (one cell filling a crop), edge density, and the
image's autocorrelation at lags of 4%, 8% and 16% of its side, which falls off past the size of its cells (red cells
of another size: another magnification, or one cell filling a crop). The detector compares them with the training
split's (:class:`~leukolab.ood.detectors.Gaussian`), so no number here is a hand-set limit.
"""

from __future__ import annotations

import numpy as np

NAMES = ("mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b", "saturation", "saturation_spread", "black",
         "stained", "edges", "autocorrelation_4", "autocorrelation_8", "autocorrelation_16")
"""The descriptors, in the order :func:`describe` returns them."""


def describe(images: np.ndarray) -> np.ndarray:
    """N x len(:data:`NAMES`) descriptors of N x H x W x 3 uint8 images."""
    rgb = np.asarray(images, np.float32) / 255.0
    flat = rgb.reshape(len(rgb), -1, 3)
    brightest, darkest = flat.max(2), flat.min(2)
    saturation = (brightest - darkest) / np.maximum(brightest, 1e-3)
    grey = rgb.mean(3)
    return np.column_stack([
        flat.mean(1), flat.std(1), saturation.mean(1), saturation.std(1),
        (brightest < 0.12).mean(1),  # black: no smear field has it
        (darkest < 0.45).mean(1),  # strongly stained: nuclei and dense cytoplasm
        _edges(grey), *(_autocorrelation(grey, share) for share in (0.04, 0.08, 0.16)),
    ]).astype(np.float64)


def _edges(grey: np.ndarray) -> np.ndarray:
    """Mean absolute difference between neighbouring pixels, per image."""
    return np.abs(np.diff(grey, axis=1)).mean((1, 2)) + np.abs(np.diff(grey, axis=2)).mean((1, 2))


def _autocorrelation(grey: np.ndarray, share: float) -> np.ndarray:
    """The correlation of each image with itself shifted by ``share`` of its side, across and down, averaged."""
    lag = max(1, round(share * grey.shape[1]))
    centred = grey - grey.mean((1, 2), keepdims=True)
    variance = np.maximum((centred**2).mean((1, 2)), 1e-9)
    across = (centred[:, :, lag:] * centred[:, :, :-lag]).mean((1, 2))
    down = (centred[:, lag:, :] * centred[:, :-lag, :]).mean((1, 2))
    return (across + down) / 2 / variance
