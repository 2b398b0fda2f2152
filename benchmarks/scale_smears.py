"""Cheap synthetic smears for the scale benchmark: a few numpy disks per image, not the full painter.

The full generator (:mod:`leukolab.data.synthetic.smears`) paints textured cells at
about 20 ms an image; 100,000 of them would take longer than the benchmark
itself. This one draws a stained background, a few red cells and one white
cell whose nucleus size depends on the class, adds noise and writes a JPEG
(about 1 ms an image). A fraction of images are planted duplicates: a byte copy
(an exact duplicate) or a re-encoded copy with a small brightness change (a
near duplicate), so the ETL's duplicate search has work to do.

    python benchmarks/scale_smears.py OUT 10000 [--size 96] [--seed 0]
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("Benign", "Early", "Pre", "Pro")
_NUCLEUS = {"Benign": 0.16, "Early": 0.22, "Pre": 0.27, "Pro": 0.32}  # nucleus radius / image side


def paint(rng: np.random.Generator, class_name: str, size: int) -> np.ndarray:
    """One HxWx3 uint8 smear."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    image = np.empty((size, size, 3), np.float32)
    image[:] = np.array([232, 214, 222]) + rng.normal(0, 8, 3)
    for _ in range(rng.integers(3, 8)):
        cy, cx, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(0.08, 0.13) * size
        image[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = np.array([205, 110, 120]) + rng.normal(0, 10, 3)
    cy, cx = rng.uniform(0.35, 0.65, 2) * size
    cell = (y - cy) ** 2 + (x - cx) ** 2 < (0.36 * size) ** 2
    image[cell] = np.array([200, 170, 210]) + rng.normal(0, 8, 3)
    r = (_NUCLEUS[class_name] + rng.normal(0, 0.02)) * size
    image[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = np.array([95, 50, 140]) + rng.normal(0, 12, 3)
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def generate(root: Path, count: int, size: int = 96, seed: int = 0, duplicate_fraction: float = 0.01) -> Path:
    """``count`` smears as ``root/Original/<class>/s<n>.jpg`` (classes in turn); returns ``root``. Idempotent:
    a finished folder (``root/.done``) is kept."""
    if (root / ".done").is_file():
        return root
    rng = np.random.default_rng(seed)
    for name in CLASSES:
        (root / "Original" / name).mkdir(parents=True, exist_ok=True)
    last: dict[str, tuple[np.ndarray, bytes]] = {}
    for index in range(count):
        name = CLASSES[index % len(CLASSES)]
        draw = rng.random()
        if name in last and draw < duplicate_fraction / 2:
            data = last[name][1]  # a byte copy
        elif name in last and draw < duplicate_fraction:
            data = jpeg(np.clip(last[name][0].astype(np.int16) + 3, 0, 255).astype(np.uint8))  # brighter, re-encoded
        else:
            pixels = paint(rng, name, size)
            last[name] = (pixels, jpeg(pixels))
            data = last[name][1]
        (root / "Original" / name / f"s{index:07d}.jpg").write_bytes(data)
    (root / ".done").write_text(str(count))
    return root


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("count", type=int)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    generate(args.root, args.count, args.size, args.seed)
