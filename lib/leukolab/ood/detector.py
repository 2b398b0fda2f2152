"""The combined out-of-distribution check a published model carries: fitted on train, calibrated on every
in-distribution image it may look at (train, out of fold, and val), never on test.

Each detector's score (:mod:`leukolab.ood.detectors`) is standardised by its mean and spread on the calibration
scores, and the combined score is the mean standardised score of the detectors in use: an image is as far out as its
detectors say together (one noisy detector cannot refer an in-domain image alone, and a shift that one detector sees
far out, or several see a little, adds up). An image whose combined score is over the threshold is out of
distribution.

The calibration scores are those of images the detectors were not fitted on, as a new image's are: each training
image scored by the detectors fitted on the other folds of train (:func:`out_of_fold_scores`), and each val image
by the detectors fitted on all of train. The threshold is the conformal quantile of their combined scores
(:func:`in_distribution_threshold`): a new in-distribution image scores at or under it with probability at least
:func:`kept_share`. The network itself was trained on the training images, so where it overfits their features lie
closer to the training data than a new image's would, and their scores would pull the threshold down: it is never
under the conformal quantile of val's alone, images the network never saw. Nothing here sees test, a holdout or an
external set.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from leukolab.ood.detectors import DETECTORS, Inputs

DEFAULT_DETECTORS = ("mahalanobis", "knn", "colour", "kind", "size")
"""Those the combined score uses unless told otherwise (energy is scored and reported, not used: see docs/ood.md)."""
DEFAULT_SHARE = 0.99
DEFAULT_FOLDS = 5
MIN_SPREAD = 1e-6


def conformal_rank(images: int, share: float) -> int:
    """The rank (1 = smallest) of the calibration score that keeps ``share`` of new images at or under it:
    ``ceil(share * (images + 1))``, at most ``images``."""
    if not 0 < share < 1 or images < 1:
        raise ValueError(f"a threshold needs 0 < share < 1 and at least one calibration score, got {share} and {images}")
    return min(math.ceil(share * (images + 1) - 1e-9), images)


def kept_share(images: int, share: float) -> float:
    """The share of new in-distribution images the threshold keeps, guaranteed for exchangeable images: ``share``
    when there are at least ``1 / (1 - share) - 1`` calibration images, else ``images / (images + 1)``."""
    return conformal_rank(images, share) / (images + 1)


def in_distribution_threshold(scores: np.ndarray, share: float) -> float:
    """The :func:`conformal_rank`-th smallest of ``scores`` (in distribution, none fitted on): the split-conformal
    quantile. Too few scores to show ``share`` give their largest, and :func:`kept_share` says what it keeps."""
    scores = np.sort(np.asarray(scores, np.float64))
    return float(scores[conformal_rank(len(scores), share) - 1])


def out_of_fold_scores(names: list[str], embedded: dict[str, np.ndarray], labels: np.ndarray,
                       folds: int) -> dict[str, np.ndarray]:
    """Each detector's score of each training image by the detector fitted on the other folds (stratified by class):
    in-distribution scores of images it was not fitted on. Empty when a class has fewer than 2 images."""
    from sklearn.model_selection import StratifiedKFold

    folds = min(folds, int(np.unique(labels, return_counts=True)[1].min()))
    if folds < 2:
        return {name: np.zeros(0) for name in names}
    scores = {name: np.zeros(len(labels)) for name in names}
    for fitted, held_out in StratifiedKFold(folds, shuffle=True, random_state=0).split(np.zeros(len(labels)), labels):
        for name in names:
            detector = DETECTORS[name].fit_embedded(embedded[name][fitted], labels[fitted])
            scores[name][held_out] = detector.score_embedded(embedded[name][held_out])
    return scores


@dataclass
class OodDetector:
    """Fitted detectors, the calibration standardisation of their scores, the ones combined, and the threshold."""

    detectors: dict
    used: list[str]
    location: dict[str, float]
    spread: dict[str, float]
    threshold: float = float("inf")
    share: float = DEFAULT_SHARE
    val_images: int = 0
    calibration_images: int = 0
    """Val images plus training images scored out of fold (models published before cross-fitting: val's alone)."""
    extra: dict = field(default_factory=dict)

    def scores(self, inputs: Inputs) -> dict[str, np.ndarray]:
        """Every detector's raw score and the ``combined`` one, per image."""
        raw = {name: detector.score(inputs) for name, detector in self.detectors.items()}
        return {**raw, "combined": self.combine(raw)}

    def combine(self, raw: dict[str, np.ndarray]) -> np.ndarray:
        standard = [(np.asarray(raw[name], np.float64) - self.location[name]) / self.spread[name] for name in self.used]
        return np.mean(standard, axis=0)

    def out_of_distribution(self, combined) -> np.ndarray:
        """Whether each combined score is over the threshold."""
        return np.asarray(combined) > self.threshold

    def summary(self) -> dict:
        """What a model card and ``/version`` say about the check."""
        return {"detectors": list(self.detectors), "used": list(self.used), "threshold": self.threshold,
                "share": self.share, "val_images": self.val_images, "calibration_images": self.calibration_images,
                "kept_share": kept_share(self.calibration_images, self.share)}

    def save(self, path: str | Path) -> Path:
        arrays = {f"{name}.{key}": np.asarray(value) for name, detector in self.detectors.items()
                  for key, value in detector.state.items()}
        config = {"detectors": list(self.detectors), "used": self.used, "location": self.location, "spread": self.spread,
                  "threshold": self.threshold, "share": self.share, "val_images": self.val_images,
                  "calibration_images": self.calibration_images}
        np.savez(path, config=np.array(json.dumps(config)), **arrays)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> OodDetector:
        """A saved check; one saved before cross-fitting (no ``calibration_images``) was calibrated on val alone."""
        with np.load(path, allow_pickle=False) as saved:
            config = json.loads(str(saved["config"]))
            states = {name: {} for name in config["detectors"]}
            for key in saved.files:
                if key != "config":
                    name, _, part = key.partition(".")
                    states[name][part] = saved[key]
        unknown = sorted(set(states) - set(DETECTORS))
        if unknown:
            raise ValueError(f"the model's out-of-distribution check uses detectors {unknown} that this leukolab does not know")
        detectors = {name: DETECTORS[name](state) for name, state in states.items()}
        return cls(detectors, config["used"], config["location"], config["spread"], config["threshold"],
                   config["share"], config["val_images"], config.get("calibration_images", config["val_images"]))


def fit_detector(train: Inputs, train_labels: np.ndarray, val: Inputs, share: float = DEFAULT_SHARE,
                 used: tuple[str, ...] | list[str] = DEFAULT_DETECTORS, folds: int = DEFAULT_FOLDS) -> OodDetector:
    """Fit every detector the inputs allow on ``train``; standardise and choose the threshold on the calibration
    scores: ``train`` out of ``folds`` folds and ``val``."""
    available = [name for name, kind in DETECTORS.items() if getattr(train, kind.needs) is not None]
    unknown = set(used) - set(DETECTORS)
    if unknown:
        raise ValueError(f"unknown OOD detectors {sorted(unknown)}; choose from {sorted(DETECTORS)}")
    chosen = [name for name in used if name in available]
    if not chosen:
        raise ValueError(f"none of the OOD detectors {list(used)} can score this model's outputs")
    labels = np.asarray(train_labels)
    embedded = {name: DETECTORS[name].embed_all(train) for name in available}
    detectors = {name: DETECTORS[name].fit_embedded(embedded[name], labels) for name in available}
    out_of_fold = out_of_fold_scores(available, embedded, labels, folds)
    val_scores = {name: detector.score(val) for name, detector in detectors.items()}
    calibration = {name: np.concatenate([out_of_fold[name], val_scores[name]]) for name in available}
    images = len(calibration[chosen[0]])
    if images < 2:
        raise ValueError(f"the out-of-distribution check needs at least 2 calibration images (train out of fold and "
                         f"val), got {images}")
    location = {name: float(np.mean(s)) for name, s in calibration.items()}
    spread = {name: max(float(np.std(s, ddof=1)), MIN_SPREAD) for name, s in calibration.items()}
    detector = OodDetector(detectors, chosen, location, spread, share=share, val_images=len(val.images),
                           calibration_images=images)
    detector.threshold = max(in_distribution_threshold(detector.combine(calibration), share),
                             in_distribution_threshold(detector.combine(val_scores), share))
    return detector
