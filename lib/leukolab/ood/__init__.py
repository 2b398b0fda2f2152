"""Out-of-distribution referral: detectors fitted on train, a threshold chosen on train out of fold and val, carried by
the published model."""

from leukolab.ood.detector import DEFAULT_DETECTORS, DEFAULT_SHARE, OodDetector, fit_detector, in_distribution_threshold
from leukolab.ood.detectors import DETECTORS, Inputs

__all__ = ["DEFAULT_DETECTORS", "DEFAULT_SHARE", "DETECTORS", "Inputs", "OodDetector", "fit_detector",
           "in_distribution_threshold"]
