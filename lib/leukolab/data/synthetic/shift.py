"""Stand-ins for images from other labs and of other kinds: what a model trained on smear fields must not answer.

Each ``kind`` is a function of a rendered field (:func:`leukolab.data.synthetic.smears.render_smear`), written by
:func:`generate_shifted_set` as a flat folder of unlabelled images (what ``external_datasets`` accepts as an OOD-only
set). They are test sets for the out-of-distribution check: no profile trains or chooses on them.

- ``other_lab``: another stain palette and illumination (hues turned, dimmer, softer focus);
- ``magnification``: the same smear at twice the magnification (the centre of a field rendered twice as large);
- ``single_cell``: one white cell centred in a crop, as in ALL-IDB2;
- ``cell_on_black``: one segmented white cell on black, as in C-NMC 2019;
- ``greyscale``: a field without colour.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from leukolab import CLASS_NAMES
from leukolab.data.synthetic.folder import DomainShift
from leukolab.data.synthetic.smears import render_smear

OTHER_LAB = DomainShift(hue=40.0, illumination=0.82, blur=1.0)
"""The other lab's palette and optics."""


def other_lab(rng, class_name: str, size: int) -> np.ndarray:
    return OTHER_LAB.apply(render_smear(rng, class_name, size)[0])


def magnification(rng, class_name: str, size: int) -> np.ndarray:
    image, _ = render_smear(rng, class_name, 2 * size)
    return image[size // 2: size // 2 + size, size // 2: size // 2 + size]


def single_cell(rng, class_name: str, size: int) -> np.ndarray:
    return _cell_crop(rng, class_name, size, on_black=False)


def cell_on_black(rng, class_name: str, size: int) -> np.ndarray:
    return _cell_crop(rng, class_name, size, on_black=True)


def greyscale(rng, class_name: str, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(render_smear(rng, class_name, size)[0]).convert("L").convert("RGB"))


def _cell_crop(rng, class_name: str, size: int, on_black: bool) -> np.ndarray:
    """One white cell of a field rendered at 3x ``size``, in a square of about 2.4 cell diameters (1.3 on black)
    resized to ``size``."""
    image, mask = render_smear(rng, class_name, 3 * size)
    labels, count = ndimage.label(mask)
    cell = labels == 1 + int(np.argmax(ndimage.sum(mask, labels, range(1, count + 1))))
    rows, cols = np.nonzero(cell)
    centre = np.array([rows.mean(), cols.mean()])
    half = int(max(np.ptp(rows), np.ptp(cols)) * (0.65 if on_black else 1.2)) + 2
    if on_black:
        image = np.where(ndimage.binary_dilation(cell, iterations=1)[..., None], image, 0).astype(np.uint8)
    padded = np.pad(image, ((half, half), (half, half), (0, 0)), mode="constant" if on_black else "reflect")
    top, left = centre.astype(int)  # the crop centred on the cell, in padded coordinates
    crop = padded[top: top + 2 * half, left: left + 2 * half]
    return np.asarray(Image.fromarray(crop).resize((size, size), Image.BILINEAR))


SHIFTS = {"other_lab": other_lab, "magnification": magnification, "single_cell": single_cell,
          "cell_on_black": cell_on_black, "greyscale": greyscale}
"""Every kind of shifted image, by name."""


def shifted_images(kind: str, images: int, image_size: int, seed: int = 0):
    """``images`` RGB uint8 arrays of ``kind``, the classes in turn; deterministic by seed, drawn apart from the
    training generator's images."""
    if kind not in SHIFTS:
        raise ValueError(f"unknown shifted set {kind!r}; choose one of {sorted(SHIFTS)}")
    index = list(SHIFTS).index(kind)
    for i in range(images):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 2300 + index, i]))
        yield SHIFTS[kind](rng, CLASS_NAMES[i % len(CLASS_NAMES)], image_size)


def generate_shifted_set(root, kind: str, images: int, image_size: int = 224, seed: int = 0) -> Path:
    """Write ``<root>/<kind>_<i:04d>.jpg`` (``.png`` for cells on black, as C-NMC ships them): an unlabelled folder."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    suffix = ".png" if kind == "cell_on_black" else ".jpg"
    for i, image in enumerate(shifted_images(kind, images, image_size, seed)):
        Image.fromarray(image).save(root / f"{kind}_{i:04d}{suffix}", quality=95)
    return root
