"""The next dataset version: an extra ``labels_csv`` source (reviewed cases) enters train only, and the original
val, test and holdout rows stay byte for byte the same (real Spark, local[2])."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from leukolab.data.etl.job import run_etl
from leukolab.data.etl.params import EtlParams
from leukolab.data.reading.dataset import load_manifest, load_split
from leukolab.data.synthetic.folder import generate_dataset

pytestmark = pytest.mark.integration
PARAMS = EtlParams(image_size=48, holdouts=1, seed=3)


def reviewed_folder(root, raw, test_path: str, others, odd) -> None:
    """A labels_csv folder as ``leukolab retrain`` writes it: three new images, a copy of a test image, and one of
    a class the dataset does not have, each with its review id."""
    (root / "images").mkdir(parents=True)
    rows = []
    for review_id, (path, label) in enumerate(others, start=10):
        shutil.copyfile(path, root / "images" / f"new-{review_id}.jpg")
        rows.append((f"images/new-{review_id}.jpg", label, review_id))
    shutil.copyfile(raw / test_path, root / "images" / "copy-of-test.jpg")
    rows.append(("images/copy-of-test.jpg", "Pre", 20))
    shutil.copyfile(odd, root / "images" / "odd.jpg")
    rows.append(("images/odd.jpg", "Myeloblast", 21))
    pd.DataFrame(rows, columns=["file", "label", "review_id"]).to_csv(root / "labels.csv", index=False)


def test_reviewed_cases_enter_train_only_and_held_out_rows_stay_identical(spark, tmp_path):
    raw = generate_dataset(tmp_path / "raw", 10, image_size=64, seed=5)
    elsewhere = generate_dataset(tmp_path / "elsewhere", 1, image_size=64, seed=99)
    first = run_etl(spark, raw, tmp_path / "out", PARAMS)
    before = load_split(first)
    test_path = before.loc[before["split"] == "test", "source_path"].iloc[0]
    others = [(elsewhere / "Original" / name / f"{name}_0000.jpg", name) for name in ("Early", "Pre", "Pro")]
    reviewed_folder(tmp_path / "reviews-x", raw, test_path, others, elsewhere / "Original" / "Benign" / "Benign_0000.jpg")

    second = run_etl(spark, raw, tmp_path / "out", PARAMS, extra_sources=[str(tmp_path / "reviews-x")])
    after, manifest = load_split(second), load_manifest(second)
    assert second != first and manifest["fingerprint"] != load_manifest(first)["fingerprint"]

    held_out = sorted(set(before["split"]) - {"train"})
    assert {"val", "test", "holdout_1"} <= set(held_out)
    for split in held_out:
        old, new = (frame[frame["split"] == split].sort_values("source_path").reset_index(drop=True)
                    for frame in (before, after))
        pd.testing.assert_frame_equal(old, new, check_exact=True, obj=f"the {split} rows")
    added = after[~after["source_path"].isin(before["source_path"])]
    assert sorted(added["source_path"]) == [f"extra/reviews-x/images/new-{i}.jpg" for i in (10, 11, 12)]
    assert set(added["split"]) == {"train"} and list(added.sort_values("source_path")["class_name"]) == ["Early", "Pre", "Pro"]
    assert added["mask"].isna().all() and not set(added["group_id"]) & set(before["group_id"])
    assert len(after[after["split"] == "train"]) == len(before[before["split"] == "train"]) + 3

    extra = manifest["extra_sources"][0]
    assert (extra["name"], extra["train"], extra["quarantined"]) == ("reviews-x", 3, 2)
    assert extra["reviews"] == [10, 11, 12] and extra["reviews_left_out"] == [20, 21]
    assert extra["quarantine_reasons"] == {"already_in_dataset": 1, "unknown_class": 1}
    reasons = {q["source_path"]: q["reason"] for q in manifest["quarantine"]}
    assert reasons["extra/reviews-x/images/copy-of-test.jpg"] == "already_in_dataset"
    assert manifest["files"]["in"] == load_manifest(first)["files"]["in"] + 6  # five images and labels.csv
