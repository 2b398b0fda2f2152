"""Synthetic smears written as a raw dataset folder, with options that make it look more like a real one.

``generate_dataset`` writes ``Original/<class>/<stem>.jpg`` and, by default, an exact
0/255 PNG mask per image in ``Segmented/<class>/<stem>.png``. With
``segmentation="false_colour"`` the segmentation is written as real datasets ship it
(the ALL dataset of Aria et al.): ``Segmented/<class>/<stem>.jpg``, the white cells in
false colour on black, JPEG-compressed (ringing at the edges), with a few small specks,
and a per-class share of failed segmentations (nothing, or a fragment of one cell).
``domain_shift`` turns the stain hues, scales the illumination and blurs: the same
classes from another lab's microscope, for external tests. ``sessions`` photographs consecutive
numbers in acquisition sessions whose look follows the class (:mod:`leukolab.data.synthetic.sessions`), with the
real data's white cells per field of each class. Images are the same as without the options (domain shift aside, and
the cell counts of sessions); the artefacts draw from their own seeds.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from tqdm.auto import tqdm

from leukolab import CLASS_NAMES
from leukolab.data.synthetic.sessions import Sessions
from leukolab.data.synthetic.smears import CLASS_PROFILES, WHITE_CELLS, image_rng, render_smear

SEGMENTATIONS = ("mask", "false_colour")
_STEM = re.compile(r"^(?P<class_name>.+)_\d{4}\.(jpg|png)$")


@dataclass(frozen=True)
class DomainShift:
    """A fixed change of staining and optics applied to every image: stain hues turned by ``hue`` degrees,
    brightness times ``illumination``, and a Gaussian blur of ``blur`` px (at 224 px; scaled with the size)."""

    hue: float = 0.0
    illumination: float = 1.0
    blur: float = 0.0

    def __post_init__(self):
        if self.illumination <= 0 or self.blur < 0:
            raise ValueError(f"domain_shift needs illumination > 0 and blur >= 0, got {self}")

    def apply(self, image: np.ndarray) -> np.ndarray:
        """The shifted RGB uint8 image (the pale background barely changes hue: it has little saturation)."""
        hsv = np.asarray(Image.fromarray(image).convert("HSV")).copy()
        hsv[..., 0] = (hsv[..., 0].astype(int) + round(self.hue / 360 * 256)) % 256
        rgb = np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"), np.float32) * self.illumination
        if self.blur:
            sigma = self.blur * image.shape[0] / 224
            rgb = ndimage.gaussian_filter(rgb, (sigma, sigma, 0))
        return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def generate_dataset(root, images_per_class: int | dict[str, int], image_size: int = 224, seed: int = 0,
                     classes=CLASS_NAMES, *, segmentation: str = "mask", failed_segmentation: dict[str, float] | None = None,
                     domain_shift: DomainShift | dict | None = None, sessions: Sessions | dict | None = None) -> Path:
    """Write ``<root>/Original/<class>/<class>_<i:04d>.jpg`` (JPEG quality 95) and its segmentation.

    ``images_per_class``: one count for every class of ``classes``, or a dict class -> count (which names the
    classes). ``segmentation``: ``"mask"`` (exact 0/255 L-mode PNG) or ``"false_colour"`` (JPEG as real
    datasets ship it); ``failed_segmentation``: class -> share of its false-colour segmentations that fail.
    ``domain_shift``: a :class:`DomainShift` or a dict of its fields; ``sessions``: a :class:`Sessions` or a dict
    of its fields.

    Idempotent and deterministic by seed: files already written with the same settings (recorded in
    ``<root>/.synthetic.json``) are kept, anything else is rewritten, and generated files that the
    settings no longer produce are removed.
    """
    root = Path(root)
    counts = _counts(images_per_class, classes)
    failed = _failure_rates(failed_segmentation, segmentation)
    shift = DomainShift(**domain_shift) if isinstance(domain_shift, dict) else domain_shift
    settings = {"seed": seed, "image_size": image_size}
    if segmentation != "mask":
        settings.update(segmentation=segmentation, failed_segmentation=failed)
    if shift:
        settings["domain_shift"] = asdict(shift)
    sessions = Sessions(**sessions) if isinstance(sessions, dict) else sessions
    if sessions:
        settings["sessions"] = asdict(sessions)
    stamp = root / ".synthetic.json"
    keep_existing = stamp.is_file() and json.loads(stamp.read_text()) == settings
    stamp.unlink(missing_ok=True)
    suffix = ".png" if segmentation == "mask" else ".jpg"
    jobs = [(name, i) for name, n in counts.items() for i in range(n)]
    for name, i in tqdm(jobs, desc="synthetic smears", unit="img"):
        image_path = root / "Original" / name / f"{name}_{i:04d}.jpg"
        segmented_path = root / "Segmented" / name / f"{name}_{i:04d}{suffix}"
        if keep_existing and image_path.is_file() and segmented_path.is_file():
            continue
        image, mask = render_smear(image_rng(seed, name, i), name, image_size,
                                   sessions.cells(name) if sessions else WHITE_CELLS)
        image = shift.apply(image) if shift else image
        image = sessions.apply(image, seed, name, i) if sessions else image
        _save(Image.fromarray(image), image_path, format="JPEG", quality=95)
        if segmentation == "mask":
            _save(Image.fromarray(mask * np.uint8(255)), segmented_path, format="PNG")
        else:
            rng = np.random.default_rng(np.random.SeedSequence([seed, CLASS_NAMES.index(name), i, 1]))
            segmented = false_colour_segmentation(rng, image, mask, failed=rng.random() < failed.get(name, 0.0))
            _save(Image.fromarray(segmented), segmented_path, format="JPEG", quality=int(rng.integers(70, 91)))
    _remove_stale(root, {p for name, i in jobs for p in (f"Original/{name}/{name}_{i:04d}.jpg",
                                                         f"Segmented/{name}/{name}_{i:04d}{suffix}")})
    stamp.write_text(json.dumps(settings))
    return root


def false_colour_segmentation(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, failed: bool) -> np.ndarray:
    """The white cells of ``image`` in false colour (inverted, so every cell pixel is bright) on black, plus
    2-5 specks of a few pixels. A failed segmentation keeps nothing (a quarter of failures) or a fragment of
    at most 30% of one cell."""
    cells = mask.astype(bool)
    if failed:
        cells = _fragment(rng, cells) if rng.random() >= 0.25 else np.zeros_like(cells)
    segmented = np.zeros_like(image)
    segmented[cells] = np.maximum(255 - image[cells], 48)
    size = image.shape[0]
    rows, cols = np.mgrid[0:size, 0:size]
    for _ in range(rng.integers(2, 6)):
        (y, x), radius = rng.uniform(0, size, 2), rng.uniform(0.6, 1.6)
        segmented[(rows - y) ** 2 + (cols - x) ** 2 <= radius**2] = rng.integers(60, 256, 3)
    return segmented


def _fragment(rng: np.random.Generator, cells: np.ndarray) -> np.ndarray:
    """A disc-shaped piece of one cell of ``cells``, of up to 30% of that cell's area."""
    labels, count = ndimage.label(cells)
    if not count:
        return cells
    cell = labels == rng.integers(1, count + 1)
    y, x = np.argwhere(cell)[rng.integers(cell.sum())]
    radius = np.sqrt(rng.uniform(0.02, 0.3) * cell.sum() / np.pi)
    rows, cols = np.mgrid[0:cells.shape[0], 0:cells.shape[1]]
    return cell & ((rows - y) ** 2 + (cols - x) ** 2 <= radius**2)


def _counts(images_per_class: int | dict[str, int], classes) -> dict[str, int]:
    """Images to write per class."""
    if isinstance(images_per_class, dict):
        if tuple(classes) != CLASS_NAMES:
            raise ValueError("give either a dict of images_per_class or classes, not both")
        counts = dict(images_per_class)
    else:
        counts = dict.fromkeys(classes, images_per_class)
    unknown = [name for name in counts if name not in CLASS_PROFILES]
    if unknown or any(not isinstance(n, int) or n < 0 for n in counts.values()):
        raise ValueError(f"images_per_class needs classes of {list(CLASS_PROFILES)} and counts >= 0, got {images_per_class}")
    return counts


def _failure_rates(failed_segmentation: dict[str, float] | None, segmentation: str) -> dict[str, float]:
    """The checked class -> failure share."""
    if segmentation not in SEGMENTATIONS:
        raise ValueError(f"unknown segmentation {segmentation!r}; choose one of {SEGMENTATIONS}")
    rates = dict(failed_segmentation or {})
    if rates and segmentation == "mask":
        raise ValueError('failed_segmentation needs segmentation="false_colour"')
    if any(name not in CLASS_PROFILES or not 0 <= rate <= 1 for name, rate in rates.items()):
        raise ValueError(f"failed_segmentation maps classes of {list(CLASS_PROFILES)} to shares 0..1, got {rates}")
    return rates


def _remove_stale(root: Path, expected: set[str]) -> None:
    """Delete generated images (``<class>_<i:04d>.jpg|png``) under Original/ and Segmented/ that are not ``expected``."""
    for path in [*root.glob("Original/*/*"), *root.glob("Segmented/*/*")]:
        match = _STEM.match(path.name)
        if match and match["class_name"] == path.parent.name and path.relative_to(root).as_posix() not in expected:
            path.unlink()


def _save(image: Image.Image, path: Path, **options) -> None:
    """Write through a temporary file so an interrupted run leaves no truncated image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    image.save(partial, **options)
    partial.replace(path)
