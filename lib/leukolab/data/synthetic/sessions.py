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
left on sessions it has not seen. Fields also hold as many white cells per class
as the real data's: Pre about three times the others' (``white_cells``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from leukolab import CLASS_NAMES
from leukolab.data.synthetic.smears import WHITE_CELLS


@dataclass(frozen=True)
class Sessions:
    """``size`` consecutive images per session; standard deviations of the session look: ``tint`` (per-channel
    gain, log scale), ``illumination`` (brightness, log scale), ``stain_hue`` (degrees); ``class_bias``: spread of
    the per-class centres relative to those (0: sessions do not depend on the class); ``white_cells``: class ->
    [fewest, most] white cells per field, other classes 1-3 (the default gives Pre 3x the others, as in the ALL
    dataset of Aria et al.)."""

    size: int = 10
    tint: float = 0.04
    illumination: float = 0.08
    stain_hue: float = 10.0
    class_bias: float = 2.0
    white_cells: dict[str, list[int]] = field(default_factory=lambda: {"Pre": [3, 9]})

    def __post_init__(self):
        if self.size < 1 or min(self.tint, self.illumination, self.stain_hue, self.class_bias) < 0:
            raise ValueError(f"sessions need size >= 1 and non-negative spreads, got {self}")
        bad = {name: count for name, count in self.white_cells.items()
               if name not in CLASS_NAMES or len(count) != 2 or not 1 <= count[0] <= count[1]}
        if bad:
            raise ValueError(f"white_cells needs classes of {list(CLASS_NAMES)} -> [fewest >= 1, most], got {bad}")

    def cells(self, class_name: str) -> tuple[int, int]:
        """Inclusive bounds of the white cells per field of ``class_name``."""
        return tuple(self.white_cells.get(class_name, WHITE_CELLS))

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
