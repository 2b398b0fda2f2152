"""Procedural Wright-Giemsa smear fields: the embedded stand-in for the ALL dataset of Aria et al.

Fields are painted in optical-density space (Beer-Lambert): every stained object adds
absorbance and the image is ``illumination * exp(-density)``, so overlapping red cells
darken where they overlap. Each field holds red cells, a few platelets and 1-3 white
cells (another count on request); the white cells carry the class. Every class trait (size, N/C ratio, nuclear
outline, chromatin, nucleoli, vacuoles) is drawn from a per-class distribution that
overlaps the neighbouring classes, while stain, illumination, blur and noise vary per
image with one distribution for all classes.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np

from leukolab import CLASS_NAMES
from leukolab.data.synthetic.paint import HARMONICS, Outline, Stains, WhiteCell, expose, paint_discs, paint_white_cell

Normal = tuple[float, float]
"""(mean, standard deviation) of a trait."""

Count = tuple[int, int]
"""Inclusive (low, high) bounds of a uniformly drawn count."""

Range = tuple[float, float]
"""(low, high) bounds of a uniformly drawn value."""


@dataclass(frozen=True)
class CellProfile:
    """Per-class white-cell distributions; lengths are fractions of the image size."""

    radius: Normal
    nc_ratio: Normal  # nucleus area / cell area
    irregularity: Normal  # RMS relative wobble of the nuclear outline
    cleft: Normal  # depth of one nuclear indentation, relative to the nuclear radius
    chromatin: Normal  # nuclear stain density
    texture: Normal  # relative amplitude of the chromatin texture
    grain: Normal  # length scale of the chromatin texture
    nucleoli: Count
    nucleolus_contrast: Normal
    vacuoles: Count


CLASS_PROFILES = {
    "Benign": CellProfile(
        radius=(0.062, 0.007), nc_ratio=(0.82, 0.04), irregularity=(0.02, 0.010), cleft=(0.0, 0.03),
        chromatin=(1.30, 0.14), texture=(0.10, 0.05), grain=(0.004, 0.001),
        nucleoli=(0, 0), nucleolus_contrast=(0.0, 0.0), vacuoles=(0, 0),
    ),
    "Early": CellProfile(
        radius=(0.080, 0.007), nc_ratio=(0.72, 0.04), irregularity=(0.03, 0.012), cleft=(0.03, 0.04),
        chromatin=(1.05, 0.14), texture=(0.25, 0.07), grain=(0.004, 0.001),
        nucleoli=(0, 1), nucleolus_contrast=(0.30, 0.10), vacuoles=(0, 1),
    ),
    "Pre": CellProfile(
        radius=(0.092, 0.008), nc_ratio=(0.55, 0.045), irregularity=(0.08, 0.025), cleft=(0.28, 0.08),
        chromatin=(1.10, 0.14), texture=(0.30, 0.08), grain=(0.009, 0.002),
        nucleoli=(1, 2), nucleolus_contrast=(0.50, 0.12), vacuoles=(0, 2),
    ),
    "Pro": CellProfile(
        radius=(0.108, 0.009), nc_ratio=(0.68, 0.045), irregularity=(0.12, 0.03), cleft=(0.15, 0.08),
        chromatin=(0.85, 0.14), texture=(0.50, 0.10), grain=(0.006, 0.0015),
        nucleoli=(2, 4), nucleolus_contrast=(0.70, 0.12), vacuoles=(2, 6),
    ),
}
"""White-cell distributions of each class: hematogones, then early pre-B, pre-B and pro-B blasts."""

BACKGROUND_RGB = (238, 226, 222)
RED_CELL_RGB = (226, 158, 160)
PLATELET_RGB = (150, 96, 168)
CYTOPLASM_RGB = (178, 182, 226)
NUCLEUS_RGB = (92, 44, 132)

RED_CELL_RADIUS = 0.055
WHITE_CELLS: Count = (1, 3)
"""White cells per field of every class, unless a caller asks for another count."""
HARMONIC_WEIGHTS = HARMONICS**-0.5 * np.sqrt(2 / np.sum(1.0 / HARMONICS))
"""Weights of the outline harmonics: higher ones wobble less; unit RMS wobble per unit irregularity."""


def render_smear(rng: np.random.Generator, class_name: str, size: int = 224,
                 white_cells: Count = WHITE_CELLS) -> tuple[np.ndarray, np.ndarray]:
    """One smear field: (RGB uint8 HxWx3, mask uint8 HxW with 1 on white cells (nucleus+cytoplasm), 0 elsewhere),
    with ``white_cells`` (inclusive bounds of a uniform draw) white cells; one that finds no room is left out."""
    if class_name not in CLASS_PROFILES:
        raise ValueError(f"unknown class {class_name!r}; choose one of {list(CLASS_PROFILES)}")
    stains = _random_stains(rng)
    density = np.zeros((size, size, 3), np.float32)
    mask = np.zeros((size, size), bool)
    paint_discs(rng, density, stains.red_cell, size, count=rng.integers(45, 85), radius=RED_CELL_RADIUS, pallor=True)
    paint_discs(rng, density, stains.platelet, size, count=rng.integers(0, 6), radius=0.011, pallor=False)
    cells = [_random_white_cell(rng, CLASS_PROFILES[class_name], size) for _ in range(rng.integers(white_cells[0], white_cells[1] + 1))]
    for cell, centre in zip(cells, _place(rng, [c.cell.extent for c in cells], size)):
        paint_white_cell(rng, density, mask, cell, centre, stains)
    return expose(rng, density, stains.background, size), mask.astype(np.uint8)


def image_rng(seed: int, class_name: str, index: int) -> np.random.Generator:
    """The generator of image ``index`` of ``class_name``: regenerates that image alone."""
    return np.random.default_rng(np.random.SeedSequence([seed, CLASS_NAMES.index(class_name), index]))


def smear_table(images_per_class: int, image_size: int, seed: int):
    """Smears rendered straight into a table shaped like an ETL split (PNG ``image`` and ``mask``, ``label``,
    ``class_name``, ``source_path``): training data in memory, without files or Spark."""
    import pandas as pd

    from leukolab.images import encode_png

    records = []
    for label, name in enumerate(CLASS_NAMES):
        for i in range(images_per_class):
            image, mask = render_smear(image_rng(seed, name, i), name, image_size)
            records.append({"image": encode_png(image), "mask": encode_png(mask * np.uint8(255)), "label": label,
                            "class_name": name, "source_path": f"{name}/{name}_{i:04d}.png"})
    return pd.DataFrame(records)


def _normal(rng: np.random.Generator, spec: Normal, low: float = 0.0) -> float:
    """A draw from ``spec``, floored at ``low``."""
    return max(low, float(rng.normal(*spec)))


def _jittered_colour(rng: np.random.Generator, rgb: tuple[int, int, int], hue: float, saturation: float, value: float) -> np.ndarray:
    """``rgb`` with its hue shifted and its saturation and value scaled at random; returns RGB in 0..1."""
    h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
    h = (h + rng.normal(0, hue)) % 1.0
    s = min(s * rng.lognormal(0, saturation), 1.0)
    v = min(v * rng.lognormal(0, value), 1.0)
    return np.array(colorsys.hsv_to_rgb(h, s, v), np.float32)


def _random_stains(rng: np.random.Generator) -> Stains:
    """Stain colours and strengths for one field, the same distribution for every class."""
    background = _jittered_colour(rng, BACKGROUND_RGB, hue=0.02, saturation=0.35, value=0.03)

    def absorbance(rgb, hue, saturation, value, strength):
        colour = _jittered_colour(rng, rgb, hue, saturation, value)
        density = -np.log(np.clip(colour / background, 1e-3, 1.0))
        return np.maximum(density, 0.01) * rng.lognormal(0, strength)

    return Stains(
        background=background,
        red_cell=absorbance(RED_CELL_RGB, 0.02, 0.25, 0.04, 0.20),
        platelet=absorbance(PLATELET_RGB, 0.04, 0.20, 0.10, 0.20),
        cytoplasm=absorbance(CYTOPLASM_RGB, 0.05, 0.35, 0.05, 0.30),
        nucleus=absorbance(NUCLEUS_RGB, 0.04, 0.25, 0.15, 0.25),
    )


def _random_outline(rng, radius: float, irregularity: float, cleft: float = 0.0) -> Outline:
    return Outline(
        radius=radius,
        amplitudes=irregularity * np.abs(rng.normal(0, 1, len(HARMONICS))) * HARMONIC_WEIGHTS,
        phases=rng.uniform(0, 2 * np.pi, len(HARMONICS)),
        cleft_depth=cleft,
        cleft_angle=rng.uniform(0, 2 * np.pi),
    )


def _random_white_cell(rng, profile: CellProfile, size: int) -> WhiteCell:
    """Draw one white cell's traits from its class profile."""
    radius = _normal(rng, profile.radius, low=0.035) * size
    cell = _random_outline(rng, radius, irregularity=0.03)
    nc_ratio = float(np.clip(rng.normal(*profile.nc_ratio), 0.3, 0.92))
    nucleus = _random_outline(
        rng,
        radius * math.sqrt(nc_ratio),
        irregularity=_normal(rng, profile.irregularity),
        cleft=min(_normal(rng, profile.cleft), 0.5),
    )
    slack = max(cell.inner * 0.97 - nucleus.extent, 0.0)
    shift, direction = rng.uniform(0, slack), rng.uniform(0, 2 * np.pi)
    return WhiteCell(
        cell=cell,
        nucleus=nucleus,
        nucleus_offset=(shift * math.sin(direction), shift * math.cos(direction)),
        chromatin=_normal(rng, profile.chromatin, low=0.3),
        texture=_normal(rng, profile.texture),
        grain=_normal(rng, profile.grain, low=0.002) * size,
        nucleoli=_random_spots(rng, profile.nucleoli, nucleus.radius, distance=(0.0, 0.5), radius=(0.12, 0.2)),
        nucleolus_contrast=float(np.clip(rng.normal(*profile.nucleolus_contrast), 0.0, 0.95)),
        vacuoles=_random_spots(rng, profile.vacuoles, radius, distance=(0.5, 0.85), radius=(0.06, 0.11)),
    )


def _random_spots(rng, count: Count, scale: float, distance: Range, radius: Range) -> list[tuple[float, float, float]]:
    """Round spots (dy, dx, radius in px) at ``distance`` from a centre; lengths are fractions of ``scale``."""
    spots = []
    for _ in range(rng.integers(count[0], count[1] + 1)):
        reach, direction = rng.uniform(*distance) * scale, rng.uniform(0, 2 * np.pi)
        size = max(rng.uniform(*radius) * scale, 0.7)
        spots.append((reach * math.sin(direction), reach * math.cos(direction), size))
    return spots


def _place(rng, extents: list[float], size: int) -> list[tuple[float, float]]:
    """Centres that keep each cell inside the field and apart from the others; a cell that finds no room is dropped."""
    centres: list[tuple[float, float]] = []
    placed: list[float] = []
    for extent in extents:
        for _ in range(50):
            centre = tuple(rng.uniform(extent + 4, size - extent - 4, 2))
            if all(math.dist(centre, c) > extent + e + 3 for c, e in zip(centres, placed)):
                centres.append(centre)
                placed.append(extent)
                break
    return centres


