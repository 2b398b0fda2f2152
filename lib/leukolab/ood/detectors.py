"""The out-of-distribution detectors, each fitted on the training split and scoring images (higher: further out).

- :class:`Mahalanobis`: the smallest Mahalanobis distance of the penultimate features to a class mean, with one
  covariance shared by the classes (Lee et al. 2018), shrunk by Ledoit-Wolf so that small training sets invert well.
- :class:`Energy`: the negative free energy ``-logsumexp(logits)`` (Liu et al. 2020); it needs no fitting.
- :class:`NearestNeighbours`: the distance of the L2-normalised features to their k-th nearest training neighbour
  (Sun et al. 2022).
- :class:`ColourCheck` and :class:`KindCheck`, the cheap input checks: the same k-th nearest-neighbour distance for
  the image's colour histogram and its spatial-frequency spectrum (:mod:`leukolab.ood.descriptors`). A distance to
  neighbours needs no covariance, so it holds up on small training sets.

Each keeps its fitted state as a dict of arrays (``state``), so a published model carries it in one ``.npz`` file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp

from leukolab.ood.descriptors import colour_histograms, structure_spectra


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
    """The k-th nearest training neighbour's distance in an embedding (:meth:`embed`): the L2-normalised features."""

    name, needs = "knn", "features"
    MAX_K = 10
    """k grows with the training set (one neighbour per 20 images) up to this many."""

    def __init__(self, state: dict):
        self.state = state

    @classmethod
    def fit(cls, inputs: Inputs, labels: np.ndarray) -> NearestNeighbours:
        bank = cls.embed(inputs)
        k = int(np.clip(len(bank) // 20, 1, cls.MAX_K))
        return cls({"bank": bank.astype(np.float32), "k": np.array(k)})

    @staticmethod
    def embed(inputs: Inputs) -> np.ndarray:
        return _unit(inputs.features)

    def score(self, inputs: Inputs) -> np.ndarray:
        bank, k = self.state["bank"].astype(np.float64), int(self.state["k"])
        points = self.embed(inputs)
        squared = (points**2).sum(1)[:, None] - 2 * points @ bank.T + (bank**2).sum(1)[None, :]
        return np.sqrt(np.partition(np.maximum(squared, 0), k - 1, axis=1)[:, k - 1])


class ColourCheck(NearestNeighbours):
    """Nearest training images by colour histogram (Hellinger distance)."""

    name, needs = "colour", "images"

    @staticmethod
    def embed(inputs: Inputs) -> np.ndarray:
        return colour_histograms(inputs.images)


class KindCheck(NearestNeighbours):
    """Nearest training images by spatial-frequency spectrum."""

    name, needs = "kind", "images"

    @staticmethod
    def embed(inputs: Inputs) -> np.ndarray:
        return structure_spectra(inputs.images)


def _unit(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, np.float64)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


DETECTORS = {kind.name: kind for kind in (Mahalanobis, Energy, NearestNeighbours, ColourCheck, KindCheck)}
"""Every detector, by name."""
