"""The out-of-distribution detectors, each fitted on the training split and scoring images (higher: further out).

- :class:`Mahalanobis`: the smallest Mahalanobis distance of the penultimate features to a class mean, with one
  covariance shared by the classes (Lee et al. 2018), shrunk by Ledoit-Wolf so that small training sets invert well.
- :class:`Energy`: the negative free energy ``-logsumexp(logits)`` (Liu et al. 2020); it needs no fitting.
- :class:`NearestNeighbours`: the distance of the L2-normalised features to their k-th nearest training neighbour
  (Sun et al. 2022).
- :class:`ColourCheck`, :class:`KindCheck` and :class:`SizeCheck`, the cheap input checks
  (:mod:`leukolab.ood.descriptors`): the k-th nearest-neighbour distance of the image's colour histogram and of its
  spatial-frequency spectrum, and the class-conditional Mahalanobis distance of the sizes of its dark objects.

A detector works on an embedding of the inputs (:meth:`~Mahalanobis.embed`: features, logits or a descriptor of
the image), so that the out-of-fold scores of :func:`leukolab.ood.detector.fit_detector` embed each image once.
Each keeps its fitted state as a dict of arrays (``state``), so a published model carries it in one ``.npz`` file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp

from leukolab.ood.descriptors import colour_histograms, size_distributions, structure_spectra

SCORE_ROWS = 1024
"""Images embedded, or scored against a neighbour bank, at once (bounds the working arrays' memory)."""


@dataclass
class Inputs:
    """What the detectors score, for N images: penultimate features, (temperature-scaled) logits, the images."""

    features: np.ndarray | None
    logits: np.ndarray | None
    images: np.ndarray

    def subset(self, rows: np.ndarray) -> Inputs:
        """The inputs of the images at ``rows``."""
        return Inputs(*(None if part is None else part[rows] for part in (self.features, self.logits)), self.images[rows])


class Detector:
    """A score from an embedding of the inputs: :meth:`embed`, then :meth:`fit_embedded` or :meth:`score_embedded`."""

    name: str
    needs: str
    """The :class:`Inputs` field the embedding is made of: a detector is fitted only when the model provides it."""

    def __init__(self, state: dict | None = None):
        self.state = state or {}

    @staticmethod
    def embed(inputs: Inputs) -> np.ndarray:
        raise NotImplementedError

    @classmethod
    def fit_embedded(cls, embedded: np.ndarray, labels: np.ndarray) -> Detector:
        raise NotImplementedError

    def score_embedded(self, embedded: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @classmethod
    def embed_all(cls, inputs: Inputs) -> np.ndarray:
        """:meth:`embed` of :data:`SCORE_ROWS` images at a time (a descriptor's working arrays are many times the
        images': tens of thousands of images at once would not fit in memory)."""
        chunks = [cls.embed(inputs.subset(np.arange(start, min(start + SCORE_ROWS, len(inputs.images)))))
                  for start in range(0, len(inputs.images), SCORE_ROWS)]
        return np.concatenate(chunks) if chunks else cls.embed(inputs)

    @classmethod
    def fit(cls, inputs: Inputs, labels: np.ndarray) -> Detector:
        return cls.fit_embedded(cls.embed_all(inputs), np.asarray(labels))

    def score(self, inputs: Inputs) -> np.ndarray:
        return self.score_embedded(self.embed_all(inputs))


def shrunk_precision(centred: np.ndarray) -> np.ndarray:
    """The inverse of the Ledoit-Wolf covariance of already centred rows."""
    from sklearn.covariance import LedoitWolf

    return LedoitWolf(assume_centered=True).fit(centred).precision_


class Mahalanobis(Detector):
    name, needs = "mahalanobis", "features"

    @staticmethod
    def embed(inputs: Inputs) -> np.ndarray:
        return np.asarray(inputs.features, np.float64)

    @classmethod
    def fit_embedded(cls, embedded: np.ndarray, labels: np.ndarray) -> Mahalanobis:
        classes = np.unique(labels)
        means = np.stack([embedded[labels == c].mean(0) for c in classes])
        centred = embedded - means[np.searchsorted(classes, labels)]
        return cls({"means": means, "precision": shrunk_precision(centred)})

    def score_embedded(self, embedded: np.ndarray) -> np.ndarray:
        """The squared distance to the nearest class mean."""
        offsets = embedded[:, None, :] - self.state["means"][None, :, :]
        return np.einsum("ncd,de,nce->nc", offsets, self.state["precision"], offsets).min(1)


class Energy(Detector):
    name, needs = "energy", "logits"

    @staticmethod
    def embed(inputs: Inputs) -> np.ndarray:
        return np.asarray(inputs.logits, np.float64)

    @classmethod
    def fit_embedded(cls, embedded: np.ndarray, labels: np.ndarray) -> Energy:
        return cls()

    def score_embedded(self, embedded: np.ndarray) -> np.ndarray:
        return -logsumexp(embedded, axis=1)


class NearestNeighbours(Detector):
    """The k-th nearest training neighbour's distance in an embedding (:meth:`embed`): the L2-normalised features."""

    name, needs = "knn", "features"
    MAX_K = 10
    """k grows with the training set (one neighbour per 20 images) up to this many."""

    @staticmethod
    def embed(inputs: Inputs) -> np.ndarray:
        features = np.asarray(inputs.features, np.float64)
        return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)

    @classmethod
    def fit_embedded(cls, embedded: np.ndarray, labels: np.ndarray) -> NearestNeighbours:
        k = int(np.clip(len(embedded) // 20, 1, cls.MAX_K))
        return cls({"bank": embedded.astype(np.float32), "k": np.array(k)})

    def score_embedded(self, embedded: np.ndarray) -> np.ndarray:
        bank, k = self.state["bank"].astype(np.float64), int(self.state["k"])
        norms = (bank**2).sum(1)[None, :]
        scores = []
        for start in range(0, len(embedded), SCORE_ROWS):
            points = embedded[start:start + SCORE_ROWS]
            squared = (points**2).sum(1)[:, None] - 2 * points @ bank.T + norms
            scores.append(np.sqrt(np.partition(np.maximum(squared, 0), k - 1, axis=1)[:, k - 1]))
        return np.concatenate(scores) if scores else np.zeros(0)


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


class SizeCheck(Mahalanobis):
    """The sizes of the image's dark objects (its cells' size in pixels: another magnification, a crop of one cell)
    against the training images': class means and one shared covariance, as :class:`Mahalanobis` (six dimensions,
    so that few training images estimate them)."""

    name, needs = "size", "images"

    @staticmethod
    def embed(inputs: Inputs) -> np.ndarray:
        return size_distributions(inputs.images)


DETECTORS = {kind.name: kind for kind in (Mahalanobis, Energy, NearestNeighbours, ColourCheck, KindCheck, SizeCheck)}
"""Every detector, by name."""
