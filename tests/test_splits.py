"""Stratified, grouped, seeded splits."""

import pandas as pd
import pytest

from leukolab.data.etl.splits import assign_splits, group_rows, near_duplicate_pairs, split_fractions


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


def test_groups_with_several_classes_stay_whole_and_splits_stay_balanced():
    frame = rows(60)
    # 20 patients of 6 images, each with images of both classes
    frame["group"] = [f"patient-{i % 20}" for i in range(len(frame))]
    splits = assign_splits(frame, split_fractions(0.6, 0.2, 0.2), seed=5)
    assert (splits.groupby(frame["group"]).nunique() == 1).all()
    shares = pd.crosstab(frame["class_name"], splits, normalize="index")
    assert shares.loc[:, "train"].between(0.5, 0.7).all() and shares.loc[:, "test"].between(0.1, 0.3).all()


def test_large_groups_are_placed_first_and_do_not_overshoot():
    frame = rows(100)
    frame.loc[:29, "group"] = "Benign-big"  # a patient with 30 of Benign's 100 images
    splits = assign_splits(frame, split_fractions(0.7, 0.15, 0.15), seed=2)
    assert splits[frame["group"] == "Benign-big"].eq("train").all()
    assert (splits[frame["class_name"] == "Benign"] == "train").sum() == 70


def test_near_duplicate_pairs_by_hamming_distance():
    hashes = ["0000000000000000", "0000000000000007", "ffffffffffffffff", "000000000000000f", "fffffffffffffffe"]
    assert near_duplicate_pairs(hashes, 3) == [(0, 1, 3), (1, 3, 1), (2, 4, 1)]
    assert near_duplicate_pairs(hashes, 0) == []
    many = [f"{i:016x}" for i in range(5000)]  # crosses the chunk boundary
    assert (0, 4096, 1) in near_duplicate_pairs(many, 1)


def test_group_rows_joins_hashes_near_pairs_and_patients():
    frame = pd.DataFrame({
        "source_path": ["e.jpg", "a.jpg", "b.jpg", "c.jpg", "d.jpg", "f.jpg"],
        "content_hash": ["h1", "h1", "h2", "h3", "h4", "h5"],
        "patient_id": [None, None, "P1", None, "P1", None],
    })
    groups = group_rows(frame, near_pairs=[(3, 5, 2)])
    assert groups.tolist() == [0, 0, 1, 2, 1, 2]  # numbered by each group's first path: a, b, c
    assert group_rows(frame.iloc[::-1].reset_index(drop=True)).tolist()[::-1][:2] == [0, 0]
