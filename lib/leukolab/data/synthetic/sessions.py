"""Acquisition sessions for the synthetic stand-in: a planted shortcut that a random split rewards.

Real smear datasets are photographed in sessions: consecutive file numbers of
a class share a smear, a lamp and a stain batch, so they share background
tint, brightness and stain hue, and some classes were acquired under
conditions of their own. :class:`Sessions` reproduces that on generated
images: image ``i`` of a class belongs to session ``i // size``; each session
draws its look (per-channel tint, illumination, stain hue) around a per-class
centre whose spread is ``class_bias`` times the session spread. A model (or a
probe on background colour) can then recognise sessions it has seen, and
partly the class from the look alone; an acquisition-aware split shows what is
left on sessions it has not seen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from leukolab import CLASS_NAMES


@dataclass(frozen=True)
class Sessions:
    """``size`` consecutive images per session; standard deviations of the session look: ``tint`` (per-channel
    gain, log scale), ``illumination`` (brightness, log scale), ``stain_hue`` (degrees); ``class_bias``: spread of
    the per-class centres relative to those (0: sessions do not depend on the class)."""

    size: int = 10
    tint: float = 0.04
    illumination: float = 0.08
    stain_hue: float = 10.0
    class_bias: float = 2.0

    def __post_init__(self):
        if self.size < 1 or min(self.tint, self.illumination, self.stain_hue, self.class_bias) < 0:
            raise ValueError(f"sessions need size >= 1 and non-negative spreads, got {self}")

    def look(self, seed: int, class_name: str, index: int) -> tuple[np.ndarray, float, float]:
        """(per-channel gain, illumination, stain hue turn in degrees) of the session of image ``index``."""
        spreads = np.array([self.tint] * 3 + [self.illumination, self.stain_hue])
        centre = np.random.default_rng([seed, CLASS_NAMES.index(class_name), 7]).normal(0, 1, 5) * self.class_bias
        own = np.random.default_rng([seed, CLASS_NAMES.index(class_name), 8, index // self.size]).normal(0, 1, 5)
        draw = (centre + own) * spreads
        return np.exp(draw[:3]), float(np.exp(draw[3])), float(draw[4])

    def apply(self, image: np.ndarray, seed: int, class_name: str, index: int) -> np.ndarray:
        """``image`` (RGB uint8) as its session photographed it: stain hue turned (the pale background barely
        changes: it has little saturation), then scaled per channel by illumination times tint."""
        gain, illumination, hue = self.look(seed, class_name, index)
        hsv = np.asarray(Image.fromarray(image).convert("HSV")).astype(np.int16)
        hsv[..., 0] = (hsv[..., 0] + round(hue / 360 * 256)) % 256
        turned = np.asarray(Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB"), np.float32)
        return np.clip(turned * gain * illumination + 0.5, 0, 255).astype(np.uint8)
