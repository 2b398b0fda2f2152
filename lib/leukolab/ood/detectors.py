"""The out-of-distribution detectors, each fitted on the training split and scoring images (higher: further out).

- :class:`Mahalanobis`: the smallest Mahalanobis distance of the penultimate features to a class mean, with one
  covariance shared by the classes (Lee et al. 2018), shrunk by Ledoit-Wolf so that small training sets invert well.
- :class:`Energy`: the negative free energy ``-logsumexp(logits)`` (Liu et al. 2020); it needs no fitting.
- :class:`NearestNeighbours`: the distance of the L2-normalised features to their k-th nearest training neighbour
  (Sun et al. 2022).
- :class:`InputCheck`: the Mahalanobis distance of the image's descriptors (:mod:`leukolab.ood.descriptors`: colour
  and image kind) to the training images' Gaussian.

Each keeps its fitted state as a dict of arrays (``state``), so a published model carries it in one ``.npz`` file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp

from leukolab.ood.descriptors import describe


@dataclass
class Inputs:
    """What the detectors score, for N images: penultimate features, (temperature-scaled) logits, the images."""

    features: np.ndarray | None
    logits: np.ndarray | None
    images: np.ndarray


def shrunk_precision(centred: np.ndarray) -> np.ndarray:
    """The inverse of the Ledoit-Wolf covariance of already centred rows."""
    from sklearn.covariance import LedoitWolf

    return LedoitWolf(assume_centered=True).fit(centred).precision_


def _squared_distances(points: np.ndarray, centres: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """N x C squared Mahalanobis distances of ``points`` to each of ``centres`` under ``precision``."""
    offsets = points[:, None, :] - centres[None, :, :]
    return np.einsum("ncd,de,nce->nc", offsets, precision, offsets)


class Mahalanobis:
    name, needs = "mahalanobis", "features"

    def __init__(self, state: dict):
        self.state = state

    @classmethod
    def fit(cls, inputs: Inputs, labels: np.ndarray) -> Mahalanobis:
        features = inputs.features.astype(np.float64)
        classes = np.unique(labels)
        means = np.stack([features[labels == c].mean(0) for c in classes])
        centred = features - means[np.searchsorted(classes, labels)]
        return cls({"means": means, "precision": shrunk_precision(centred)})

    def score(self, inputs: Inputs) -> np.ndarray:
        return _squared_distances(inputs.features.astype(np.float64), self.state["means"], self.state["precision"]).min(1)


class Energy:
    name, needs = "energy", "logits"

    def __init__(self, state: dict | None = None):
        self.state = state or {}

    @classmethod
    def fit(cls, inputs: Inputs, labels: np.ndarray) -> Energy:
        return cls()

    def score(self, inputs: Inputs) -> np.ndarray:
        return -logsumexp(inputs.logits.astype(np.float64), axis=1)


class NearestNeighbours:
    name, needs = "knn", "features"
    MAX_K = 10
    """k grows with the training set (one neighbour per 20 images) up to this many."""

    def __init__(self, state: dict):
        self.state = state

    @classmethod
    def fit(cls, inputs: Inputs, labels: np.ndarray) -> NearestNeighbours:
        bank = _unit(inputs.features)
        k = int(np.clip(len(bank) // 20, 1, cls.MAX_K))
        return cls({"bank": bank.astype(np.float32), "k": np.array(k)})

    def score(self, inputs: Inputs) -> np.ndarray:
        bank, k = self.state["bank"], int(self.state["k"])
        distances = np.sqrt(np.maximum(2 - 2 * _unit(inputs.features) @ bank.T, 0))
        return np.partition(distances, k - 1, axis=1)[:, k - 1]


class InputCheck:
    name, needs = "input", "images"
    MIN_SCALE = 0.01
    """The smallest spread a descriptor is given (each is a share or an intensity in 0..1): one that never varies
    in training (no black pixels in any field) is measured in steps of 1%, not of rounding error."""

    def __init__(self, state: dict):
        self.state = state

    @classmethod
    def fit(cls, inputs: Inputs, labels: np.ndarray) -> InputCheck:
        descriptors = describe(inputs.images)
        mean, scale = descriptors.mean(0), np.maximum(descriptors.std(0), cls.MIN_SCALE)
        standard = (descriptors - mean) / scale
        return cls({"mean": mean, "scale": scale, "precision": shrunk_precision(standard)})

    def score(self, inputs: Inputs) -> np.ndarray:
        standard = (describe(inputs.images) - self.state["mean"]) / self.state["scale"]
        return np.einsum("nd,de,ne->n", standard, self.state["precision"], standard)


def _unit(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, np.float64)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


DETECTORS = {kind.name: kind for kind in (Mahalanobis, Energy, NearestNeighbours, InputCheck)}
"""Every detector, by name."""
