"""The combined out-of-distribution check a published model carries: fitted on train, its threshold chosen on val.

Each detector's score (:mod:`leukolab.ood.detectors`) is standardised by its mean and spread on val, and the
combined score is the mean standardised score of the detectors in use: an image is as far out as its detectors say
together (one noisy detector cannot refer an in-domain image alone, and a shift that every detector sees adds up).
An image whose combined score is over the threshold is out of distribution.
The threshold keeps ``share`` of val in distribution (:func:`in_distribution_threshold`). Nothing here sees test,
a holdout or an external set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import norm

from leukolab.ood.detectors import DETECTORS, Inputs

DEFAULT_DETECTORS = ("mahalanobis", "knn", "colour", "kind")
"""Those the combined score uses unless told otherwise (energy is scored and reported, not used: see docs/ood.md)."""
DEFAULT_SHARE = 0.99
MIN_SPREAD = 1e-6


def in_distribution_threshold(scores: np.ndarray, share: float) -> float:
    """The score that keeps ``share`` of ``scores`` (val, in distribution) at or under it: the larger of the empirical
    quantile and the quantile of a normal fitted to the scores. A val set smaller than ``1 / (1 - share)`` images
    cannot show its own ``share`` quantile (it would be its maximum); the normal fit extends its tail instead."""
    scores = np.asarray(scores, np.float64)
    if not 0 < share < 1 or len(scores) < 2:
        raise ValueError(f"a threshold needs 0 < share < 1 and at least 2 val scores, got {share} and {len(scores)}")
    empirical = float(np.quantile(scores, share, method="higher"))
    fitted = float(scores.mean() + norm.ppf(share) * scores.std(ddof=1))
    return max(empirical, fitted)


@dataclass
class OodDetector:
    """Fitted detectors, the val standardisation of their scores, the ones combined, and the threshold."""

    detectors: dict
    used: list[str]
    location: dict[str, float]
    spread: dict[str, float]
    threshold: float = float("inf")
    share: float = DEFAULT_SHARE
    val_images: int = 0
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
                "share": self.share, "val_images": self.val_images}

    def save(self, path: str | Path) -> Path:
        arrays = {f"{name}.{key}": np.asarray(value) for name, detector in self.detectors.items()
                  for key, value in detector.state.items()}
        config = {"detectors": list(self.detectors), "used": self.used, "location": self.location, "spread": self.spread,
                  "threshold": self.threshold, "share": self.share, "val_images": self.val_images}
        np.savez(path, config=np.array(json.dumps(config)), **arrays)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> OodDetector:
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
                   config["share"], config["val_images"])


def fit_detector(train: Inputs, train_labels: np.ndarray, val: Inputs, share: float = DEFAULT_SHARE,
                 used: tuple[str, ...] | list[str] = DEFAULT_DETECTORS) -> OodDetector:
    """Fit every detector the inputs allow on ``train``; standardise and choose the threshold on ``val``."""
    available = [name for name, kind in DETECTORS.items() if getattr(train, kind.needs) is not None]
    unknown = set(used) - set(DETECTORS)
    if unknown:
        raise ValueError(f"unknown OOD detectors {sorted(unknown)}; choose from {sorted(DETECTORS)}")
    used = [name for name in used if name in available]
    if not used:
        raise ValueError(f"none of the OOD detectors {list(used)} can score this model's outputs")
    detectors = {name: DETECTORS[name].fit(train, np.asarray(train_labels)) for name in available}
    raw = {name: detector.score(val) for name, detector in detectors.items()}
    location = {name: float(np.mean(s)) for name, s in raw.items()}
    spread = {name: max(float(np.std(s, ddof=1)), MIN_SPREAD) for name, s in raw.items()}
    detector = OodDetector(detectors, used, location, spread, share=share, val_images=len(val.images))
    detector.threshold = in_distribution_threshold(detector.combine(raw), share)
    return detector

