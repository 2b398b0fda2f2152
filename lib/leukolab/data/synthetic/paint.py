"""Painting smear fields in optical-density space: stained discs, white cells, and the exposure that makes an image.

Every stained object adds absorbance; :func:`expose` turns the density into ``illumination * exp(-density)`` with
blur, noise and JPEG-like compression, as a microscope camera would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from io import BytesIO

import numpy as np
from PIL import Image
from scipy import ndimage

HARMONICS = np.arange(2, 7)
"""Harmonics of a cell outline's radius around its circle."""


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


def paint_discs(rng, density: np.ndarray, stain: np.ndarray, size: int, count: int, radius: float, pallor: bool) -> None:
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
    splat(density, whole, thickness, stain)


def splat(density: np.ndarray, corners: np.ndarray, patches: np.ndarray, stain: np.ndarray) -> None:
    """Add square ``patches`` (N x w x w) centred at integer ``corners`` (N x 2), clipped to the canvas, times ``stain``."""
    size, width = density.shape[0], patches.shape[-1]
    padded = size + 2 * width
    steps = np.arange(width)
    rows = corners[:, 0, None, None] + steps[None, :, None] + width - width // 2
    cols = corners[:, 1, None, None] + steps[None, None, :] + width - width // 2
    canvas = np.bincount((rows * padded + cols).ravel(), weights=patches.ravel(), minlength=padded * padded)
    field = canvas.reshape(padded, padded)[width : width + size, width : width + size]
    density += field[..., None].astype(np.float32) * stain


def smooth_noise(rng, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Gaussian-filtered white noise with unit standard deviation."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape, np.float32), scale)
    return noise / max(float(noise.std()), 1e-6)


def soft_inside(radius_at_angle: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Antialiased coverage of a shape whose edge lies at ``radius_at_angle``."""
    return np.clip(radius_at_angle - distance + 0.5, 0.0, 1.0)


def spot_coverage(dy: np.ndarray, dx: np.ndarray, spots) -> np.ndarray:
    """Antialiased coverage of the union of round ``spots`` at offsets (dy, dx)."""
    coverage = np.zeros(dy.shape, np.float32)
    for sy, sx, radius in spots:
        coverage = np.maximum(coverage, soft_inside(radius, np.hypot(dy - sy, dx - sx)))
    return coverage


def paint_white_cell(rng, density: np.ndarray, mask: np.ndarray, cell: WhiteCell, centre, stains: Stains) -> None:
    """Paint cytoplasm and nucleus over the red cells beneath, and mark the cell in ``mask``."""
    half = math.ceil(cell.cell.extent) + 2
    top, left = int(centre[0]) - half, int(centre[1]) - half
    window = np.s_[top : top + 2 * half + 1, left : left + 2 * half + 1]
    dy, dx = np.mgrid[top : top + 2 * half + 1, left : left + 2 * half + 1].astype(np.float32)
    dy, dx = dy - centre[0], dx - centre[1]

    cell_edge, cell_distance = cell.cell.at(np.arctan2(dy, dx)), np.hypot(dy, dx)
    mask[window] |= cell_distance <= cell_edge
    cell_cover = soft_inside(cell_edge, cell_distance)

    ny, nx = dy - cell.nucleus_offset[0], dx - cell.nucleus_offset[1]
    nucleus_cover = soft_inside(cell.nucleus.at(np.arctan2(ny, nx)), np.hypot(ny, nx)) * cell_cover
    chromatin = cell.chromatin * np.clip(1 + cell.texture * smooth_noise(rng, dy.shape, cell.grain), 0.1, None)
    nucleoli = spot_coverage(ny, nx, cell.nucleoli) * cell.nucleolus_contrast
    vacuoles = 0.85 * spot_coverage(dy, dx, cell.vacuoles)
    cytoplasm = cell_cover * (1 + 0.08 * smooth_noise(rng, dy.shape, 0.15 * cell.cell.radius)) * (1 - vacuoles)

    nuclear_stain = nucleus_cover * chromatin * (1 - nucleoli) * (1 - vacuoles)
    occlusion = 1 - rng.uniform(0.8, 0.95) * cell_cover
    density[window] = density[window] * occlusion[..., None] + (
        cytoplasm[..., None] * stains.cytoplasm
        + nuclear_stain[..., None] * stains.nucleus
        + (nucleus_cover * nucleoli * 0.6)[..., None] * stains.cytoplasm
    )


def expose(rng, density: np.ndarray, background: np.ndarray, size: int) -> np.ndarray:
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
