"""Acquisition-aware splits: whole blocks of acquisition order for evaluation, with an embargo around them.

Images taken in one acquisition session (same smear, same lamp, same stain
batch) share background tint, illumination and stain, and their file names
carry neighbouring running numbers. A random split (even grouped by
duplicates) puts near-twins of every test image in train, and a model can
score by recognising the session. Here, within each class, images are
ordered by an acquisition key (the last number in the file name, or a column
of the labels CSV: ``acquisition_column``) and cut into ``blocks`` contiguous blocks of about equal
size. Each evaluation split (val, test, holdouts) takes a run of whole
consecutive blocks at a seeded place; the ``embargo`` images on each side of
every evaluation run are withheld from training (split ``embargo``; less in a
class so small that it would withhold more than half of its train images). Groups
(duplicates, patients) never straddle: a group's images outside its
evaluation split are withheld too.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from leukolab.data.etl.splits import _stable_seed

EMBARGO = "embargo"
"""The acquisition split of images withheld from training because they neighbour an evaluation block."""
_LAST_NUMBER = re.compile(r"(\d+)(?!.*\d)")


def name_keys(source_paths: pd.Series) -> pd.Series:
    """The last number in each file's name (without its extension), as a float; NaN where the name has none."""
    return source_paths.map(_last_number)


def _last_number(path: str) -> float:
    """The last number in the file name of ``path`` (without its extension); NaN where it has none."""
    found = _LAST_NUMBER.search(path.rsplit("/", 1)[-1].rsplit(".", 1)[0])
    return float(found.group(1)) if found else np.nan


def acquisition_keys(rows: pd.DataFrame, column: str | None = None) -> tuple[pd.Series | None, str]:
    """Each row's acquisition key and where it came from; ``(None, why)`` when the data has none.

    ``column``: the label files' column (``EtlParams.acquisition_column``) whose numbers the ETL put in
    ``rows["acquisition_key"]``; every row needs one. Otherwise the last number in the file name, used only when
    every image's name carries one and they are not all equal within every class.
    """
    if column is not None:
        keys = rows["acquisition_key"] if "acquisition_key" in rows else pd.Series(np.nan, index=rows.index)
        if keys.isna().any():
            missing = rows.loc[keys.isna(), "source_path"].head(3).tolist()
            raise ValueError(f"acquisition column {column!r} gives no key for {int(keys.isna().sum())} images "
                             f"(e.g. {missing}); give every image a number there")
        return keys.astype(float), f"column {column!r} of the label files"
    keys = name_keys(rows["source_path"])
    if keys.isna().any():
        missing = rows.loc[keys.isna(), "source_path"].head(3).tolist()
        return None, f"{int(keys.isna().sum())} file names carry no number (e.g. {missing})"
    if (keys.groupby(rows["class_name"]).nunique() <= 1).all():
        return None, "every file name of a class carries the same last number"
    return keys, "the last number in the file name"


def column_keys(frame: pd.DataFrame, path: str, files: str, column: str) -> pd.Series:
    """Label file ``path``'s acquisition ``column`` as numbers; refused when a row naming a file (in column ``files``)
    holds an empty or non-numeric value there."""
    keys = pd.to_numeric(frame[column], errors="coerce")
    bad = keys.isna() & frame[files].ne("")
    if bad.any():
        examples = [f"{name!r}: {value!r}" for name, value in zip(frame.loc[bad, files], frame.loc[bad, column])][:5]
        raise ValueError(f"label file {path}: acquisition_column {column!r} must hold a number for every image; "
                         f"{int(bad.sum())} rows do not ({', '.join(examples)})")
    return keys.astype(float)


def single_key(keys: dict[str, set[float]], name: str, column: str) -> float:
    """The one acquisition key that the label files (path -> keys they give file ``name``) agree on; refused otherwise."""
    found = set().union(*keys.values())
    if len(found) > 1:
        raise ValueError(f"label files {sorted(keys)} give {name!r} different acquisition keys {sorted(found)} in "
                         f"column {column!r} (acquisition_column); give each image one")
    return found.pop()


def blocked_splits(rows: pd.DataFrame, keys: pd.Series, fractions: dict[str, float], blocks: int, embargo: int,
                   seed: int) -> pd.DataFrame:
    """Per row (aligned on ``rows.index``): ``acquisition_split``, ``acquisition_block`` and ``acquisition_rank``.

    ``rows`` has ``source_path``, ``class_name`` and ``group``; ``fractions`` name ``train`` and the evaluation splits. Each
    evaluation split with a positive fraction gets ``max(1, round(fraction * blocks))`` consecutive blocks of
    every class. ``acquisition_block`` numbers the blocks (unique across classes: the clusters of a cluster
    bootstrap); ``acquisition_rank`` is the row's place in its class's order.
    """
    if blocks < 2:
        raise ValueError(f"acquisition_blocks must be at least 2, got {blocks}")
    evaluation = [name for name in fractions if name != "train"]
    runs = {name: max(1, round(fractions[name] * blocks)) for name in evaluation}
    if sum(runs.values()) >= blocks:
        raise ValueError(f"{blocks} acquisition blocks leave none for train after {runs}; use more blocks")
    rng = np.random.default_rng(_stable_seed(seed, "acquisition"))
    split, block, rank = np.full(len(rows), "train", dtype=object), np.zeros(len(rows), np.int64), np.zeros(len(rows), np.int64)
    # Each class in key order, ties by source_path: numpy sorts of positions (a pandas sort of the key and path
    # columns per class copied them).
    key, classes = keys.to_numpy(dtype=float), pd.Categorical(rows["class_name"])
    path_rank = np.empty(len(rows), np.int64)
    path_rank[np.argsort(rows["source_path"].to_numpy(), kind="stable")] = np.arange(len(rows))
    next_block = 0
    for code in range(len(classes.categories)):
        members = np.flatnonzero(classes.codes == code)
        ordered = members[np.lexsort((path_rank[members], key[members]))]  # positions in rows
        n = len(ordered)
        block_of = np.minimum(np.arange(n) * blocks // max(n, 1), blocks - 1)
        placed = _place_runs(rng, runs, blocks)[block_of]
        distance = _distance_to(placed != "train")
        placed[(placed == "train") & (distance <= _affordable_embargo(distance[placed == "train"], embargo))] = EMBARGO
        split[ordered], block[ordered], rank[ordered] = placed, block_of + next_block, np.arange(n)
        next_block += blocks
    result = pd.DataFrame({"acquisition_split": split, "acquisition_block": block, "acquisition_rank": rank}, index=rows.index)
    _keep_groups_whole(result, rows["group"])
    return result


def _place_runs(rng: np.random.Generator, runs: dict[str, int], blocks: int) -> np.ndarray:
    """The split of each block: each evaluation split one run of consecutive blocks, in a seeded order at seeded
    places, with at least one train block between two runs; train elsewhere."""
    order = list(rng.permutation(list(runs)))
    spare = blocks - sum(runs.values()) - (len(order) - 1)  # train blocks beyond the one between two runs
    if spare < 0:
        raise ValueError(f"{blocks} acquisition blocks cannot keep the evaluation runs {runs} apart; use more blocks")
    bars = np.sort(rng.choice(spare + len(order), size=len(order), replace=False))  # stars and bars
    before = np.diff(bars, prepend=-1) - 1  # spare train blocks before each run
    labels, position = np.full(blocks, "train", dtype=object), 0
    for index, name in enumerate(order):
        position += int(before[index]) + (1 if index else 0)
        labels[position:position + runs[name]] = name
        position += runs[name]
    return labels


def _affordable_embargo(train_distances: np.ndarray, embargo: int) -> int:
    """``embargo``, or less where it would withhold more than half of a class's train images (tiny classes)."""
    while embargo > 0 and (train_distances <= embargo).sum() > len(train_distances) / 2:
        embargo -= 1
    return embargo


def _distance_to(marked: np.ndarray) -> np.ndarray:
    """For each position, how many places away the nearest marked position is (a large number when none is)."""
    where = np.flatnonzero(marked)
    if not len(where):
        return np.full(len(marked), np.iinfo(np.int64).max)
    positions = np.arange(len(marked))
    right = np.searchsorted(where, positions).clip(max=len(where) - 1)
    left = (right - 1).clip(min=0)
    return np.minimum(np.abs(where[right] - positions), np.abs(where[left] - positions))


def _keep_groups_whole(result: pd.DataFrame, groups: pd.Series) -> None:
    """A group with images in an evaluation split keeps them in the split holding most of them; the rest of its
    images are withheld from training (``embargo``), so no group straddles train and an evaluation split."""
    split = result["acquisition_split"]
    evaluated = split[~split.isin(["train", EMBARGO])]
    if evaluated.empty:
        return
    home = evaluated.groupby(groups[evaluated.index]).agg(lambda s: s.value_counts().index[0])
    in_group = groups.map(home)
    moved = in_group.notna() & (split != in_group)
    result.loc[moved, "acquisition_split"] = EMBARGO


def blocked_folds(rows: pd.DataFrame, folds: int, embargo: int) -> tuple[np.ndarray, np.ndarray]:
    """Blocked cross-validation folds of ``rows`` (``class_name``, ``acquisition_rank``, ``group_id``): the fold of
    each row, and per fold which other rows are withheld from its training (``folds`` x rows, bool).

    Within each class the rows in acquisition order are cut into ``folds`` contiguous parts of about equal size; fold
    f holds part f of every class. Fold f's training leaves out, besides its own rows, every row within ``embargo``
    places of one of them in its class's acquisition order (``acquisition_rank``, so images between them that the
    pool lacks, such as the test block, count) and the other rows of any group with a row in fold f. Rows in no
    acquisition order (rank -1: reviewed cases) are in no fold (-1) and train in every fold.
    """
    if folds < 2:
        raise ValueError(f"cv_folds must be at least 2, got {folds}")
    fold = np.full(len(rows), -1)
    withheld = np.zeros((folds, len(rows)), bool)
    rank = rows["acquisition_rank"].to_numpy()
    for name, members in rows.assign(position=np.arange(len(rows)))[rank >= 0].groupby("class_name", sort=True):
        if len(members) < folds:
            raise ValueError(f"cv_folds={folds} but class {name!r} has only {len(members)} images to fold; use fewer folds")
        ordered = members.sort_values("acquisition_rank")
        positions, ranks = ordered["position"].to_numpy(), ordered["acquisition_rank"].to_numpy()
        part = np.arange(len(ordered)) * folds // len(ordered)
        fold[positions] = part
        for f in range(folds):
            near = np.abs(ranks[:, None] - ranks[part == f][None, :]).min(1) <= embargo
            withheld[f, positions[near & (part != f)]] = True
    groups = rows["group_id"].to_numpy()
    for f in range(folds):
        withheld[f] |= np.isin(groups, groups[fold == f]) & (fold != f)
        classes = set(rows["class_name"][(fold != f) & ~withheld[f]])
        if classes != set(rows["class_name"]):
            raise ValueError(f"fold {f + 1}/{folds} leaves no training image of {sorted(set(rows['class_name']) - classes)} "
                             f"after an embargo of {embargo}: use fewer folds or a smaller acquisition_embargo")
    return fold, withheld


def acquisition_columns(table: pd.DataFrame, fractions: dict[str, float], params) -> pd.DataFrame:
    """The curated ``table``'s acquisition columns (null throughout when ``params`` turn them off or the data has
    no acquisition key); ``params`` is :class:`leukolab.data.etl.params.EtlParams`."""
    keys, _ = acquisition_keys(table, params.acquisition_column) if params.acquisition_splits and len(table) else (None, "")
    if keys is None:
        return pd.DataFrame({"acquisition_split": None, "acquisition_block": pd.NA, "acquisition_rank": pd.NA},
                            index=table.index).astype({"acquisition_block": "Int64", "acquisition_rank": "Int64"})
    rows = pd.DataFrame({"source_path": table["source_path"], "class_name": table["class_name"], "group": table["group_id"]})
    return blocked_splits(rows, keys, fractions, params.acquisition_blocks,
                          params.acquisition_embargo, params.seed)


def acquisition_manifest(table: pd.DataFrame, classes: list[str], params) -> dict:
    """The manifest's ``acquisition`` section: whether the dataset has acquisition-aware splits, on which key, its
    images per split and class (``embargo`` included) and the groups straddling train and evaluation (0)."""
    if not params.acquisition_splits:
        return {"available": False, "reason": "turned off (acquisition_splits=False)"}
    keys, source = acquisition_keys(table, params.acquisition_column) if len(table) else (None, "no images")
    if keys is None or table["acquisition_split"].isna().all():
        return {"available": False, "reason": source}
    split = table["acquisition_split"]
    counts = table.groupby(["acquisition_split", "class_name"]).size()
    in_train = set(table.loc[split == "train", "group_id"])
    evaluated = table.loc[~split.isin(["train", EMBARGO]), "group_id"]
    return {
        "available": True, "key": source, "blocks": params.acquisition_blocks, "embargo": params.acquisition_embargo,
        "counts": {name: {c: int(counts.get((name, c), 0)) for c in classes} for name in sorted(split.unique())},
        "straddling_images": int(evaluated.isin(in_train).sum()),
    }
