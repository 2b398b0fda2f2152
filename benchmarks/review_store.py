"""What keeping a referred case costs: ``ReviewStore.keep`` per image (write, flush to disk, rename, index) against
decoding and resizing the same image, which the API does for every upload anyway (the baseline, same run).

    python benchmarks/review_store.py            # 200 distinct 224 px JPEGs; a few seconds
    python benchmarks/review_store.py --images 1000 --markdown
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from leukolab.data.synthetic.folder import generate_dataset
from leukolab.images import ANY_SIZE, decode_image, resize_square
from leukolab.review.store import Answer, ReviewStore


def per_image_ms(work, images: list[bytes]) -> float:
    """Median milliseconds of ``work(image)`` over ``images``."""
    times = []
    for image in images:
        started = time.perf_counter()
        work(image)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        raw = generate_dataset(Path(scratch) / "raw", max(1, args.images // 4), image_size=224, seed=1)
        images = [path.read_bytes() for path in sorted((raw / "Original").glob("*/*.jpg"))][:args.images]
        store = ReviewStore(Path(scratch) / "review")
        answer = Answer("refer", "low_confidence", "Pre", 0.4, {"Pre": 0.4, "Pro": 0.6}, "leukolab", "1")
        decode = per_image_ms(lambda image: resize_square(decode_image(image, ANY_SIZE), 96), images)
        keep = per_image_ms(lambda image: store.keep(image, answer, "api"), images)
        again = per_image_ms(lambda image: store.keep(image, answer, "api"), images)
    rows = [("decode + resize (baseline)", decode), ("keep a new case", keep), ("keep an image seen before", again)]
    if args.markdown:
        print("| step | ms per image (median) | x baseline |\n|---|---|---|")
    for name, ms in rows:
        print(f"| {name} | {ms:.2f} | x{ms / decode:.2f} |" if args.markdown else f"{name:28s} {ms:7.2f} ms  x{ms / decode:.2f}")
    print(f"({len(images)} distinct 224 px JPEGs, one process)")


if __name__ == "__main__":
    main()
