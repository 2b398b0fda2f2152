"""The Spark ETL on a real local[2] session: planted bad files, duplicates, patients, determinism, the data report.

One Spark session and one ETL run of the planted folder (``spark`` and ``planted`` in conftest) serve the whole
module; the tests then read what the run wrote. tests/test_etl_layouts.py runs the other layouts.
"""

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from leukolab.data.etl.job import run_etl
from leukolab.data.etl.params import EtlParams
from leukolab.data.etl.schema import DATASET_COLUMNS
from leukolab.data.reading.dataset import SmearDataset, load_manifest, load_split

pytestmark = pytest.mark.integration
CLASSES = ["Benign", "Early", "Pre", "Pro"]


def run(spark, raw, out, **overrides):
    settings = {"image_size": 48, "classes": CLASSES, "max_bad_fraction": 0.5, "holdouts": 1, **overrides}
    return run_etl(spark, raw, out, EtlParams(**settings))


def layout(dataset_dir):
    """Each dataset Parquet file's name and its rows' source paths, in order."""
    return {path.name: pq.read_table(path, columns=["source_path"]).column(0).to_pylist()
            for path in sorted((dataset_dir / "data").glob("*.parquet"))}


@pytest.fixture(scope="module")
def planted_run(spark, planted, tmp_path_factory):
    before = sorted((p.relative_to(planted), p.stat().st_mtime_ns) for p in planted.rglob("*"))
    dataset_dir = run(spark, planted, tmp_path_factory.mktemp("out"))
    after = sorted((p.relative_to(planted), p.stat().st_mtime_ns) for p in planted.rglob("*"))
    assert before == after, "the raw folder was modified"
    return dataset_dir, load_manifest(dataset_dir), load_split(dataset_dir)


def test_every_file_is_accounted_for_with_a_reason(planted_run):
    _, manifest, table = planted_run
    files = manifest["files"]
    assert files["in"] == 40 + 40 + 13 + 1  # originals, masks, planted originals, orphan mask; hidden files are not input
    assert files["in"] == files["out"] + files["quarantined"]
    assert files["out"] == len(table) + table["mask"].notna().sum()
    reasons = {q["source_path"]: q["reason"] for q in manifest["quarantine"]}
    assert reasons == {
        "Original/Pre/zero.jpg": "empty",
        "Original/Pre/_draft.jpg": "not_read",
        "Original/Pre/notes.jpg": "not_an_image",
        "Original/Pro/cut.jpg": "truncated",
        "Original/Early/tiny.png": "too_small",
        "Segmented/Pro/orphan.png": "mask_without_original",
        "Original/Unknown/x.jpg": "unknown_class",
        "Original/Pro/Pre_0002_misfiled.jpg": "conflicting_labels",
        "Original/Pre/Pre_0002.jpg": "conflicting_labels",
        "Segmented/Pre/Pre_0002.png": "conflicting_labels",
    }
    assert manifest["quarantine_reasons"]["conflicting_labels"] == 3
    assert {"Original/Benign/wide.TIF", "Original/Benign/alpha.Png", "Original/Early/with space.JPG"} <= set(table["source_path"])


def test_dataset_columns_masks_and_torch_dataset(planted_run):
    _, manifest, table = planted_run
    assert list(table.columns) == list(DATASET_COLUMNS)
    row = table.set_index("source_path").loc["Original/Benign/Benign_0000.jpg"]
    assert row["mask"] is not None and (row["original_width"], row["original_height"]) == (96, 96)
    assert row["class_name"] == "Benign" and row["label"] == 0 and len(row["phash"]) == 16
    assert table.set_index("source_path").loc["Original/Benign/alpha.Png", "mask"] is None
    assert manifest["has_masks"] and manifest["schema_version"] == 4
    assert not manifest["acquisition"]["available"] and "carry no number" in manifest["acquisition"]["reason"]
    dataset = SmearDataset(table[table["mask"].notna()], with_masks=True)
    assert dataset.images.shape[1:] == (3, 48, 48) and set(dataset.masks.unique().tolist()) == {0, 1}
    assert 0.3 < np.mean(manifest["train_mean"]) < 0.95 and all(0.02 < s < 0.5 for s in manifest["train_std"])


def test_manifest_reports_what_a_naive_split_would_have_leaked(planted_run):
    _, manifest, table = planted_run
    leakage = manifest["leakage"]
    assert leakage["grouped_exact"] == leakage["grouped_near"] == 0 and leakage["grouped_patient"] is None
    assert leakage["naive_seed"] == 42 and leakage["grouped_test_images"] == (table["split"] == "test").sum()
    assert leakage["naive_test_images"] > 0 and leakage["naive_exact"] + leakage["naive_near"] <= 3  # 1 copy, 2 near pairs


def test_exact_and_near_duplicates_are_grouped_in_one_split(planted_run):
    _, manifest, table = planted_run
    groups = manifest["duplicate_groups"]
    assert ["Original/Early/Early_0001.jpg", "Original/Early/Early_copy.jpg"] in groups
    assert ["Original/Benign/Benign_0004.jpg", "Original/Benign/Benign_0004_recompressed.jpg"] in groups
    assert ["Original/Early/Early_0005.jpg", "Original/Pro/Early_0005_brighter.png"] in groups  # kept: only bytes prove a conflict
    near = {(p["a"], p["b"]) for p in manifest["near_duplicate_pairs"]}
    assert ("Original/Benign/Benign_0004.jpg", "Original/Benign/Benign_0004_recompressed.jpg") in near
    assert all(p["distance"] <= 4 for p in manifest["near_duplicate_pairs"])
    for group in groups:
        rows = table[table["source_path"].isin(group)]
        assert len(rows) == len(group) and rows["split"].nunique() == 1 and rows["group_id"].nunique() == 1


def test_splits_are_stratified_with_a_holdout(planted_run):
    _, manifest, table = planted_run
    assert set(manifest["counts"]) == {"train", "val", "test", "holdout_1"}
    counts = pd.crosstab(table["class_name"], table["split"])
    assert (counts["train"] >= 6).all() and (counts[["val", "test", "holdout_1"]] >= 1).all().all()
    assert counts.to_dict() == {split: dict(per_class) for split, per_class in manifest["counts"].items()}


def test_same_input_same_manifest_and_reuse(spark, planted, planted_run, tmp_path):
    first, manifest, _ = planted_run
    second = run(spark, planted, tmp_path)
    assert first.name == second.name
    assert (first / "manifest.json").read_bytes() == (second / "manifest.json").read_bytes()
    assert layout(first) == layout(second)  # the same rows in the same files, in the same order
    written = (first / "manifest.json").stat().st_mtime_ns
    assert run(spark, planted, first.parent.parent) == first  # reused, not rewritten
    assert (first / "manifest.json").stat().st_mtime_ns == written


def test_parameters_change_the_fingerprint_required_masks_and_bad_share_limit(spark, planted, planted_run, tmp_path):
    first, _, _ = planted_run
    dataset_dir = run(spark, planted, tmp_path, require_masks=True, seed=99)
    assert dataset_dir.name != first.name
    reasons = {q["source_path"]: q["reason"] for q in load_manifest(dataset_dir)["quarantine"]}
    assert reasons["Original/Benign/alpha.Png"] == "missing_mask"
    assert reasons["Original/Pro/Early_0005_brighter.png"] == "missing_mask" and "Original/Early/Early_0005.jpg" not in reasons
    with pytest.raises(ValueError, match="max_bad_fraction"):
        run(spark, planted, tmp_path / "strict", max_bad_fraction=0.01)
    assert not [p for p in (tmp_path / "strict").rglob("*") if p.is_file()], "a failed run left files behind"


def test_exact_synthetic_masks_pass_the_audit(planted_run):
    _, manifest, table = planted_run
    with_file = table[table["mask_status"].notna()]
    assert (with_file["mask_status"] == "ok").all() and with_file["mask"].notna().all()
    assert (with_file["mask_fraction"] == with_file["mask_raw_fraction"]).all()  # exact masks: no clean-up
    assert sum(c["ok"] for c in manifest["masks"]["classes"].values()) == len(with_file)
    assert manifest["masks"]["cleanup_change_mean"] == 0 and manifest["masks"]["shortcut_warning"] is None


# ---------------------------------------------------------------- the data report


def test_data_report_figures_tables_and_mlflow_artifacts(planted_run, tmp_path, monkeypatch):
    from leukolab.data.etl.data_report import build_report, log_report

    dataset_dir, manifest, table = planted_run
    report = build_report(dataset_dir)
    assert set(report.figures) == {"counts", "samples", "sizes", "colours", "mask_coverage"}
    counts = report.tables["counts"]
    assert counts.loc["total", "total"] == len(table) and list(counts.index[:3]) == ["train", "val", "test"]
    assert len(report.tables["quarantine"]) == manifest["files"]["quarantined"]
    assert report.tables["quarantine_reasons"].set_index("reason")["files"]["conflicting_labels"] == 3
    kinds = report.tables["duplicates"].set_index("paths")["kind"]
    assert kinds["Original/Early/Early_0001.jpg\nOriginal/Early/Early_copy.jpg"] == "exact"
    assert kinds["Original/Benign/Benign_0004.jpg\nOriginal/Benign/Benign_0004_recompressed.jpg"] == "near"
    assert report.tables["leakage"].set_index("count")["grouped split"].iloc[1:].tolist() == [0, 0, "no patient ids"]
    samples = report.figures["samples"].axes
    assert sum(len(ax.images) for ax in samples) == 16 and any(ax.collections for ax in samples)  # 4 per class, masks outlined

    import mlflow

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a file store starts in a fraction of SQLite's time
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri((tmp_path / "mlruns").as_uri())
    try:
        mlflow.set_experiment("data-report")  # not the experiment id an earlier test made active in its own store
        with mlflow.start_run() as run:
            log_report(report)
        logged = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "report")}
    finally:
        mlflow.set_tracking_uri(previous)
    assert logged == {f"report/{n}.png" for n in report.figures} | {f"report/{n}.csv" for n in report.tables}


def test_the_banded_search_on_spark_finds_the_same_duplicate_groups(spark, planted_run):
    """The ETL searched this small set on the driver (all pairs); the Spark search finds the same pairs, so the same
    groups and near pairs as the manifest's."""
    from leukolab.data.etl.near_duplicates import spark_near_duplicate_pairs
    from leukolab.data.etl.splits import group_rows, near_duplicate_pairs

    _, manifest, table = planted_run  # the curated originals, in curation's order (by source path)
    pairs = spark_near_duplicate_pairs(spark, list(table["phash"]), 4)
    assert pairs == near_duplicate_pairs(list(table["phash"]), 4) and pairs
    paths, hashes = table["source_path"], table["content_hash"]
    assert [{"a": paths[i], "b": paths[j], "distance": d} for i, j, d in pairs
            if hashes[i] != hashes[j]] == manifest["near_duplicate_pairs"]
    groups = group_rows(table.assign(patient_id=None), pairs)
    assert sorted(sorted(g) for g in paths.groupby(groups).agg(list) if len(g) > 1) == manifest["duplicate_groups"]
