"""Which images must stay together, and stratified, grouped, seeded train/val/test/holdout splits.

Rows that must stay together share a group: byte-identical images (same
content hash), near duplicates (perceptual hashes at most a threshold apart)
and one patient's images. A group is never split. Groups are dealt out in a
seeded order, largest first, each to the split furthest below its target
share of the group's classes, so every split gets close to its fraction of
every class (exactly, when no group holds more than one image).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.sparse import csgraph

_PAIR_CHUNK = 512  # rows compared at once in near_duplicate_pairs: 512 x n uint64s (60 MB for 15,000 images)


def split_fractions(train: float, val: float, test: float, holdouts: int = 0, holdout_fraction: float = 0.0) -> dict[str, float]:
    """Target fraction per split name, normalised to sum to 1; holdouts are ``holdout_1..k``."""
    fractions = {"train": train, "val": val, "test": test}
    fractions.update({f"holdout_{k}": holdout_fraction for k in range(1, holdouts + 1)})
    if any(f < 0 for f in fractions.values()) or sum(fractions.values()) <= 0:
        raise ValueError(f"split fractions must be non-negative with a positive sum, got {fractions}")
    total = sum(fractions.values())
    return {name: f / total for name, f in fractions.items() if f > 0}


def near_duplicate_pairs(phashes: list[str], max_distance: int) -> list[tuple[int, int, int]]:
    """``(i, j, distance)`` for every pair ``i < j`` whose 64-bit perceptual hashes (hex) differ in at most ``max_distance`` bits.

    Brute force in chunks (numpy popcount): about a second for 15,000 images,
    which covers the public ALL datasets; beyond ~100,000 images, index the
    hashes (multi-index hashing) instead.
    """
    values = np.array([int(h, 16) for h in phashes], dtype=np.uint64)
    pairs = []
    for start in range(0, len(values), _PAIR_CHUNK):
        block = values[start:start + _PAIR_CHUNK]
        distances = np.bitwise_count(block[:, None] ^ values[None, :])
        rows, cols = np.nonzero(distances <= max_distance)
        keep = cols > rows + start
        pairs += [(int(i) + start, int(j), int(distances[i, j])) for i, j in zip(rows[keep], cols[keep])]
    return sorted(pairs)


def group_rows(rows: pd.DataFrame, near_pairs: list[tuple[int, int, int]] = ()) -> pd.Series:
    """A group number per row: rows sharing a ``content_hash``, a near-duplicate pair or a ``patient_id`` share a group.

    ``rows`` has columns ``source_path``, ``content_hash`` and ``patient_id``
    (``None`` where unknown); ``near_pairs`` index its rows by position. Groups
    are numbered 0, 1, ... in the order of their first ``source_path``, so the
    numbers do not depend on the row order.
    """
    # A graph of the rows, one node per content hash and one per patient, each row joined to its own; its
    # connected components are the groups (integer arrays throughout: a few bytes per row at 100,000 smears).
    count = len(rows)
    hashes = pd.factorize(rows["content_hash"])[0]  # -1 where missing
    patients = pd.factorize(rows["patient_id"])[0]
    hash_node, patient_node = count, count + hashes.max(initial=-1) + 1  # the first node of each kind
    nodes = patient_node + patients.max(initial=-1) + 1
    near = np.asarray([pair[:2] for pair in near_pairs], dtype=np.int64).reshape(-1, 2)
    row = np.arange(count)
    sources = np.concatenate([row[hashes >= 0], row[patients >= 0], near[:, 0]])
    targets = np.concatenate([hash_node + hashes[hashes >= 0], patient_node + patients[patients >= 0], near[:, 1]])
    graph = sparse.coo_matrix((np.ones(len(sources), np.int8), (sources, targets)), shape=(nodes, nodes))
    component = csgraph.connected_components(graph, directed=False)[1][:count]
    first_path = pd.Series(rows["source_path"].to_numpy()).groupby(component).min()
    number = np.empty(component.max(initial=-1) + 1, dtype=np.int64)
    number[first_path.sort_values().index.to_numpy()] = np.arange(len(first_path))
    return pd.Series(number[component], index=rows.index, dtype="int64")


def assign_splits(rows: pd.DataFrame, fractions: dict[str, float], seed: int) -> pd.Series:
    """Split name for every row of ``rows`` (columns ``class_name``, ``group``), aligned on its index.

    Groups may hold several classes (a patient with images of two classes):
    the group goes to the split whose shortfall, weighted by the group's class
    counts, is largest.
    """
    names = list(fractions)
    targets = np.array([fractions[n] for n in names])
    classes = sorted(rows["class_name"].unique())
    # Images per group (in group order) and class: numpy counts, a few MB at 100,000 smears where a crosstab took 14.
    group_of = np.unique(rows["group"].to_numpy(), return_inverse=True)[1]
    class_of = pd.Categorical(rows["class_name"], categories=classes).codes
    groups = group_of.max(initial=-1) + 1
    class_counts = np.bincount(group_of * len(classes) + class_of, minlength=groups * len(classes))
    class_counts = class_counts.reshape(groups, len(classes)).astype(float)
    sizes = class_counts.sum(1)
    order = np.random.default_rng(_stable_seed(seed, "groups")).permutation(groups)
    order = order[np.argsort(-sizes[order], kind="stable")]  # largest groups first, seeded order among equals
    filled = np.zeros((len(names), len(classes)))  # images per split and class so far
    seen = np.zeros(len(classes))
    choices = np.empty(groups, dtype=int)
    for index in order:
        counts = class_counts[index]
        seen += counts
        # Shortfall of each split against its target share of each class, after this group.
        deficit = (targets[:, None] * seen[None, :] - filled) @ counts
        choices[index] = int(np.argmax(deficit))
        filled[choices[index]] += counts
    return pd.Series(np.array(names, dtype=object)[choices][group_of], index=rows.index, dtype=object)


def _stable_seed(seed: int, salt: str) -> int:
    """A seed that does not depend on Python's hash randomisation."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{salt}".encode()).digest()[:8], "little")
