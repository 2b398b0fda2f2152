"""Stratified, grouped, seeded splits."""

import pandas as pd
import pytest

from leukolab.data.splits import assign_splits, split_fractions


def rows(per_class: int = 40, duplicated: int = 0) -> pd.DataFrame:
    records = []
    for name in ("Benign", "Pro"):
        for i in range(per_class):
            group = f"{name}-dup" if i < duplicated else f"{name}-{i}"
            records.append({"class_name": name, "group": group})
    return pd.DataFrame(records)


def test_fractions_are_met_per_class():
    frame = rows(100)
    splits = assign_splits(frame, split_fractions(0.7, 0.15, 0.15), seed=1)
    counts = pd.crosstab(frame["class_name"], splits)
    assert counts.loc["Benign"].to_dict() == {"test": 15, "train": 70, "val": 15}
    assert counts.loc["Pro"].to_dict() == {"test": 15, "train": 70, "val": 15}


def test_same_seed_same_splits_other_seed_other_splits():
    frame = rows(50)
    fractions = split_fractions(0.6, 0.2, 0.2)
    first = assign_splits(frame, fractions, seed=3)
    assert first.equals(assign_splits(frame, fractions, seed=3))
    assert not first.equals(assign_splits(frame, fractions, seed=4))


def test_a_group_never_straddles_splits():
    frame = rows(40, duplicated=6)
    splits = assign_splits(frame, split_fractions(0.7, 0.15, 0.15), seed=0)
    assert splits[frame["group"] == "Benign-dup"].nunique() == 1
    assert splits[frame["group"] == "Pro-dup"].nunique() == 1


def test_holdouts_are_extra_disjoint_splits():
    frame = rows(100)
    splits = assign_splits(frame, split_fractions(0.6, 0.1, 0.1, holdouts=2, holdout_fraction=0.1), seed=0)
    assert set(splits) == {"train", "val", "test", "holdout_1", "holdout_2"}
    assert (splits == "holdout_2").sum() == 20


def test_bad_fractions_are_refused():
    with pytest.raises(ValueError):
        split_fractions(0, 0, 0)
