"""Stratified, grouped, seeded train/val/test/holdout splits.

Rows that must stay together (byte-identical images, one patient's images)
share a group; a group is never split. Within each class, groups are shuffled
with the seed and dealt out so each split's share of images is as close as
possible to its target fraction.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd


def split_fractions(train: float, val: float, test: float, holdouts: int = 0, holdout_fraction: float = 0.0) -> dict[str, float]:
    """Target fraction per split name, normalised to sum to 1; holdouts are ``holdout_1..k``."""
    fractions = {"train": train, "val": val, "test": test}
    fractions.update({f"holdout_{k}": holdout_fraction for k in range(1, holdouts + 1)})
    if any(f < 0 for f in fractions.values()) or sum(fractions.values()) <= 0:
        raise ValueError(f"split fractions must be non-negative with a positive sum, got {fractions}")
    total = sum(fractions.values())
    return {name: f / total for name, f in fractions.items() if f > 0}


def assign_splits(rows: pd.DataFrame, fractions: dict[str, float], seed: int) -> pd.Series:
    """Split name for every row of ``rows`` (columns ``class_name``, ``group``), aligned on its index."""
    names = list(fractions)
    targets = np.array([fractions[n] for n in names])
    result = pd.Series(index=rows.index, dtype=object)
    for class_name, members in rows.groupby("class_name", sort=True):
        sizes = members.groupby("group").size().sort_index()
        order = np.random.default_rng(_class_seed(seed, class_name)).permutation(len(sizes))
        filled = np.zeros(len(names))
        group_split = {}
        for index in order:
            group, size = sizes.index[index], sizes.iloc[index]
            # The split furthest below its target share of this class takes the group.
            deficit = targets * (filled.sum() + size) - filled
            choice = int(np.argmax(deficit))
            group_split[group] = names[choice]
            filled[choice] += size
        result.loc[members.index] = members["group"].map(group_split)
    return result


def _class_seed(seed: int, class_name: str) -> int:
    """A seed per class that does not depend on Python's hash randomisation."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{class_name}".encode()).digest()[:8], "little")
