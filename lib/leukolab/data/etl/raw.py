"""The raw folder an ETL run reads: a given dataset folder, or synthetic smears generated once into the workspace."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def raw_folder(raw_dir: str | None, images_per_class: int | dict[str, int], seed: int,
               synthetic_options: dict | None = None) -> Path:
    """``raw_dir`` when given (never written to); else synthetic smears in ``data/raw/synthetic-seed<seed>-n<counts>``.

    ``synthetic_options`` are keyword arguments of
    :func:`leukolab.data.synthetic.folder.generate_dataset` (``segmentation``, ``failed_segmentation``,
    ``domain_shift``, ``image_size``); a short hash of them ends the folder name.
    """
    from leukolab.config import workspace_path
    from leukolab.data.synthetic.folder import generate_dataset

    if raw_dir:
        folder = workspace_path(raw_dir)
        if not folder.is_dir():
            raise FileNotFoundError(f"raw_dir {folder} does not exist")
        return folder
    counts = "-".join(f"{c}{n}" for c, n in images_per_class.items()) if isinstance(images_per_class, dict) else images_per_class
    name = f"synthetic-seed{seed}-n{counts}"
    if synthetic_options:
        name += "-" + hashlib.sha256(json.dumps(synthetic_options, sort_keys=True).encode()).hexdigest()[:8]
    return generate_dataset(workspace_path(f"data/raw/{name}"), images_per_class, seed=seed, **synthetic_options or {})
