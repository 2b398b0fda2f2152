"""The leakage report: what a naive random split would have put in train of each test image, against the grouped split."""

from types import SimpleNamespace

import pandas as pd

from leukolab.data.etl.leakage import leakage_report, leaked_test_images, naive_split
from leukolab.data.etl.splits import assign_splits, group_rows, split_fractions

PARAMS = SimpleNamespace(train_fraction=0.7, val_fraction=0.15, test_fraction=0.15, holdouts=0, holdout_fraction=0.1, seed=3)


def planted_table(rows=60, copies=10, near=10, patients=True):
    """``rows`` images of two classes with byte-identical pairs, near-duplicate pairs and three images per patient."""
    hashes = [f"h{i}" for i in range(rows)]
    for i in range(copies):
        hashes[rows - 1 - i] = hashes[i]
    table = pd.DataFrame({"source_path": [f"img_{i:03d}.jpg" for i in range(rows)], "content_hash": hashes,
                          "patient_id": [f"p{i // 3}" if patients else None for i in range(rows)],
                          "class_name": ["a", "b"] * (rows // 2)})
    pairs = [{"a": table["source_path"][copies + i], "b": table["source_path"][copies + near + i], "distance": 2}
             for i in range(near)]
    return table, pairs


def grouped_split(table, pairs):
    position = {p: i for i, p in enumerate(table["source_path"])}
    near = [(position[p["a"]], position[p["b"]], p["distance"]) for p in pairs]
    fractions = split_fractions(PARAMS.train_fraction, PARAMS.val_fraction, PARAMS.test_fraction)
    return assign_splits(table.assign(group=group_rows(table, near)), fractions, PARAMS.seed)


def test_naive_split_meets_the_fractions_and_follows_the_seed():
    fractions = {"train": 0.7, "val": 0.15, "test": 0.15}
    split = naive_split(200, fractions, 1)
    assert pd.Series(split).value_counts().to_dict() == {"train": 140, "val": 30, "test": 30}
    assert (split == naive_split(200, fractions, 1)).all() and (split != naive_split(200, fractions, 2)).any()


def test_leaked_test_images_counts_each_kind():
    table, pairs = planted_table(rows=6, copies=1, near=1)  # img_0 == img_5; img_1 ~ img_2; patients p0 (0-2), p1 (3-5)
    split = ["train", "test", "train", "test", "val", "test"]
    assert leaked_test_images(table, split, pairs) == {"exact": 1, "near": 1, "patient": 1}
    assert leaked_test_images(table.assign(patient_id=None), split, pairs)["patient"] is None


def test_a_naive_split_leaks_planted_duplicates_and_the_grouped_split_does_not():
    table, pairs = planted_table()
    report = leakage_report(table.assign(split=grouped_split(table, pairs)), pairs, PARAMS)
    assert report["naive_exact"] > 0 and report["naive_near"] > 0 and report["naive_patient"] > 0
    assert report["grouped_exact"] == report["grouped_near"] == report["grouped_patient"] == 0
    assert report["naive_seed"] == 3 and report["naive_test_images"] == 9 and report["grouped_test_images"] > 0


def test_without_duplicates_or_patients_nothing_leaks():
    table, _ = planted_table(copies=0, near=0, patients=False)
    report = leakage_report(table.assign(split=naive_split(len(table), {"train": 0.5, "test": 0.5}, 0)), [], PARAMS)
    counts = {key: value for key, value in report.items() if key.split("_")[1] in ("exact", "near", "patient")}
    assert counts == {"naive_exact": 0, "naive_near": 0, "naive_patient": None,
                      "grouped_exact": 0, "grouped_near": 0, "grouped_patient": None}
