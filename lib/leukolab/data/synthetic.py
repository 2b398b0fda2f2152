"""Procedural Wright-Giemsa smear fields: the embedded stand-in for the ALL dataset of Aria et al.

Fields are painted in optical-density space (Beer-Lambert): every stained object adds
absorbance and the image is ``illumination * exp(-density)``, so overlapping red cells
darken where they overlap. Each field holds red cells, a few platelets and 1-3 white
cells; the white cells carry the class. Every class trait (size, N/C ratio, nuclear
outline, chromatin, nucleoli, vacuoles) is drawn from a per-class distribution that
overlaps the neighbouring classes, while stain, illumination, blur and noise vary per
image with one distribution for all classes.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from io import BytesIO

import numpy as np
from PIL import Image
from scipy import ndimage

from leukolab import CLASS_NAMES

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
HARMONICS = np.arange(2, 7)
HARMONIC_WEIGHTS = HARMONICS**-0.5 * np.sqrt(2 / np.sum(1.0 / HARMONICS))
"""Weights of the outline harmonics: higher ones wobble less; unit RMS wobble per unit irregularity."""


@dataclass(frozen=True)
class Stains:
    """One field's illumination colour (RGB in 0..1) and stain absorbances (optical density per channel)."""

    background: np.ndarray
    red_cell: np.ndarray
    platelet: np.ndarray
    cytoplasm: np.ndarray
    nucleus: np.ndarray


@dataclass(frozen=True)
class Outline:
    """A star-shaped outline: base radius (px) wobbled by harmonics, with an optional indentation."""

    radius: float
    amplitudes: np.ndarray
    phases: np.ndarray
    cleft_depth: float = 0.0
    cleft_angle: float = 0.0

    def at(self, theta: np.ndarray) -> np.ndarray:
        """Radius of the outline at each angle."""
        wobble = sum(a * np.cos(k * theta + p) for k, a, p in zip(HARMONICS, self.amplitudes, self.phases))
        offset = np.angle(np.exp(1j * (theta - self.cleft_angle)))
        dip = self.cleft_depth * np.exp(-((offset / 0.45) ** 2))
        return self.radius * np.maximum(1.0 + wobble - dip, 0.35)

    @property
    def extent(self) -> float:
        """An upper bound of the radius in any direction."""
        return self.radius * (1.0 + float(np.abs(self.amplitudes).sum()))

    @property
    def inner(self) -> float:
        """A lower bound of the radius in any direction."""
        return self.radius * max(1.0 - float(np.abs(self.amplitudes).sum()) - self.cleft_depth, 0.35)


@dataclass(frozen=True)
class WhiteCell:
    """Geometry and staining of one white cell, relative to its centre (px)."""

    cell: Outline
    nucleus: Outline
    nucleus_offset: tuple[float, float]
    chromatin: float
    texture: float
    grain: float
    nucleoli: list[tuple[float, float, float]]  # (dy, dx, radius) from the nucleus centre
    nucleolus_contrast: float
    vacuoles: list[tuple[float, float, float]]  # (dy, dx, radius) from the cell centre


def render_smear(rng: np.random.Generator, class_name: str, size: int = 224) -> tuple[np.ndarray, np.ndarray]:
    """One smear field: (RGB uint8 HxWx3, mask uint8 HxW with 1 on white cells (nucleus+cytoplasm), 0 elsewhere)."""
    if class_name not in CLASS_PROFILES:
        raise ValueError(f"unknown class {class_name!r}; choose one of {list(CLASS_PROFILES)}")
    stains = _random_stains(rng)
    density = np.zeros((size, size, 3), np.float32)
    mask = np.zeros((size, size), bool)
    _paint_discs(rng, density, stains.red_cell, size, count=rng.integers(45, 85), radius=RED_CELL_RADIUS, pallor=True)
    _paint_discs(rng, density, stains.platelet, size, count=rng.integers(0, 6), radius=0.011, pallor=False)
    cells = [_random_white_cell(rng, CLASS_PROFILES[class_name], size) for _ in range(rng.integers(1, 4))]
    for cell, centre in zip(cells, _place(rng, [c.cell.extent for c in cells], size)):
        _paint_white_cell(rng, density, mask, cell, centre, stains)
    return _expose(rng, density, stains.background, size), mask.astype(np.uint8)


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


def _paint_discs(rng, density: np.ndarray, stain: np.ndarray, size: int, count: int, radius: float, pallor: bool) -> None:
    """Add ``count`` slightly elliptical discs (red cells with a pale centre, or platelets), all at once."""
    radii = np.maximum(rng.normal(radius, 0.08 * radius, count), 0.004) * size
    half = math.ceil(radii.max() + 1) if count else 0
    centres = rng.uniform(-radii[:, None] / 2, size + radii[:, None] / 2, (count, 2))
    aspect = rng.uniform(0.85, 1.0, count)
    angle = rng.uniform(0, np.pi, count)
    strength = rng.lognormal(0, 0.1, count)
    whole = np.floor(centres).astype(int)
    offsets = np.arange(-half, half + 1, dtype=np.float32)
    dy = offsets[None, :, None] - (centres[:, 0] - whole[:, 0])[:, None, None]
    dx = offsets[None, None, :] - (centres[:, 1] - whole[:, 1])[:, None, None]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    distance = np.hypot(dx * cos + dy * sin, (dy * cos - dx * sin) / aspect[:, None, None])
    thickness = np.clip(radii[:, None, None] - distance + 0.5, 0, 1) * strength[:, None, None]
    if pallor:
        centre_pallor = rng.uniform(0.35, 0.7, count)[:, None, None]
        thickness *= 1 - centre_pallor * np.exp(-((distance / (0.55 * radii[:, None, None])) ** 2))
    _splat(density, whole, thickness, stain)


def _splat(density: np.ndarray, corners: np.ndarray, patches: np.ndarray, stain: np.ndarray) -> None:
    """Add square ``patches`` (N x w x w) centred at integer ``corners`` (N x 2), clipped to the canvas, times ``stain``."""
    size, width = density.shape[0], patches.shape[-1]
    padded = size + 2 * width
    steps = np.arange(width)
    rows = corners[:, 0, None, None] + steps[None, :, None] + width - width // 2
    cols = corners[:, 1, None, None] + steps[None, None, :] + width - width // 2
    canvas = np.bincount((rows * padded + cols).ravel(), weights=patches.ravel(), minlength=padded * padded)
    field = canvas.reshape(padded, padded)[width : width + size, width : width + size]
    density += field[..., None].astype(np.float32) * stain


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


def _smooth_noise(rng, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Gaussian-filtered white noise with unit standard deviation."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape, np.float32), scale)
    return noise / max(float(noise.std()), 1e-6)


def _soft_inside(radius_at_angle: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Antialiased coverage of a shape whose edge lies at ``radius_at_angle``."""
    return np.clip(radius_at_angle - distance + 0.5, 0.0, 1.0)


def _spot_coverage(dy: np.ndarray, dx: np.ndarray, spots) -> np.ndarray:
    """Antialiased coverage of the union of round ``spots`` at offsets (dy, dx)."""
    coverage = np.zeros(dy.shape, np.float32)
    for sy, sx, radius in spots:
        coverage = np.maximum(coverage, _soft_inside(radius, np.hypot(dy - sy, dx - sx)))
    return coverage


def _paint_white_cell(rng, density: np.ndarray, mask: np.ndarray, cell: WhiteCell, centre, stains: Stains) -> None:
    """Paint cytoplasm and nucleus over the red cells beneath, and mark the cell in ``mask``."""
    half = math.ceil(cell.cell.extent) + 2
    top, left = int(centre[0]) - half, int(centre[1]) - half
    window = np.s_[top : top + 2 * half + 1, left : left + 2 * half + 1]
    dy, dx = np.mgrid[top : top + 2 * half + 1, left : left + 2 * half + 1].astype(np.float32)
    dy, dx = dy - centre[0], dx - centre[1]

    cell_edge, cell_distance = cell.cell.at(np.arctan2(dy, dx)), np.hypot(dy, dx)
    mask[window] |= cell_distance <= cell_edge
    cell_cover = _soft_inside(cell_edge, cell_distance)

    ny, nx = dy - cell.nucleus_offset[0], dx - cell.nucleus_offset[1]
    nucleus_cover = _soft_inside(cell.nucleus.at(np.arctan2(ny, nx)), np.hypot(ny, nx)) * cell_cover
    chromatin = cell.chromatin * np.clip(1 + cell.texture * _smooth_noise(rng, dy.shape, cell.grain), 0.1, None)
    nucleoli = _spot_coverage(ny, nx, cell.nucleoli) * cell.nucleolus_contrast
    vacuoles = 0.85 * _spot_coverage(dy, dx, cell.vacuoles)
    cytoplasm = cell_cover * (1 + 0.08 * _smooth_noise(rng, dy.shape, 0.15 * cell.cell.radius)) * (1 - vacuoles)

    nuclear_stain = nucleus_cover * chromatin * (1 - nucleoli) * (1 - vacuoles)
    occlusion = 1 - rng.uniform(0.8, 0.95) * cell_cover
    density[window] = density[window] * occlusion[..., None] + (
        cytoplasm[..., None] * stains.cytoplasm
        + nuclear_stain[..., None] * stains.nucleus
        + (nucleus_cover * nucleoli * 0.6)[..., None] * stains.cytoplasm
    )


def _expose(rng, density: np.ndarray, background: np.ndarray, size: int) -> np.ndarray:
    """Turn absorbance into a camera image: vignetting, contrast, blur, sensor noise and a JPEG round trip."""
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    cy, cx = rng.normal(0, 0.15, 2)
    vignette = 1 - rng.uniform(0.05, 0.3) * 2 * ((rows - cy) ** 2 + (cols - cx) ** 2)
    gradient = rng.normal(0, 0.04, 2)
    illumination = rng.uniform(0.92, 1.05) * (vignette + gradient[0] * rows + gradient[1] * cols)
    rgb = background * illumination[..., None] * np.exp(-density)
    rgb = (rgb - 0.7) * rng.uniform(0.85, 1.15) + 0.7 + rng.normal(0, 0.03)
    if rng.random() < 0.5:
        sigma = rng.uniform(0.3, 1.0) * size / 224
        rgb = ndimage.gaussian_filter(rgb, (sigma, sigma, 0))
    rgb += rng.uniform(0.004, 0.02) * rng.standard_normal(rgb.shape, np.float32)
    image = Image.fromarray(np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8))
    buffer = BytesIO()
    image.save(buffer, format="JPEG", quality=int(rng.integers(70, 96)))
    return np.asarray(Image.open(buffer).convert("RGB"))
