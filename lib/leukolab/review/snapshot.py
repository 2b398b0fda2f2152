"""Reviewed cases as a dataset source: a ``labels_csv`` folder the ETL takes as an extra source (train only).

The folder, ``<review folder>/datasets/reviews-<digest>/``, holds ``images/<hash>.<ext>`` and ``labels.csv``
(``file``, ``label``, ``review_id``): every case whose latest review gives it a class (``unusable`` ones stay
out). Its name is a digest of (case, label) pairs, so the same reviews make the same folder, and the pipeline
reuses what it built from them.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from leukolab.review.store import UNUSABLE, ReviewStore

LABELS_FILE = "labels.csv"
COLUMNS = ("file", "label", "review_id")


@dataclass(frozen=True)
class Snapshot:
    """A written folder and the review ids in it."""

    folder: Path
    review_ids: list[int]


def usable_reviews(store: ReviewStore) -> list[dict]:
    """The latest review of every case that gives it a class (not ``unusable``), by review id."""
    return [review for review in store.latest_reviews() if review["label"] != UNUSABLE]


def write_snapshot(store: ReviewStore) -> Snapshot:
    """The ``labels_csv`` folder of :func:`usable_reviews` (written once; an existing one is reused)."""
    reviews = usable_reviews(store)
    if not reviews:
        raise ValueError(f"no reviewed case with a class in {store.folder}")
    rows = []
    for review in reviews:
        case = store.case(review["hash"])
        rows.append((f"images/{case.hash}{case.image_path.suffix}", review["label"], review["id"], case.image_path))
    digest = hashlib.sha256("".join(f"{name}\0{label}\n" for name, label, _, _ in sorted(rows)).encode()).hexdigest()[:16]
    folder = store.folder / "datasets" / f"reviews-{digest}"
    if not (folder / LABELS_FILE).is_file():
        scratch = folder.with_name(f".{folder.name}-partial-{os.getpid()}")
        shutil.rmtree(scratch, ignore_errors=True)
        (scratch / "images").mkdir(parents=True)
        for name, _, _, image in rows:
            shutil.copyfile(image, scratch / name)
        table = io.StringIO()
        writer = csv.writer(table)
        writer.writerow(COLUMNS)
        writer.writerows(row[:3] for row in rows)
        (scratch / LABELS_FILE).write_text(table.getvalue())
        shutil.rmtree(folder, ignore_errors=True)
        scratch.rename(folder)
    return Snapshot(folder, [review_id for _, _, review_id, _ in rows])

