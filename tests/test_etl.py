"""The Spark ETL on a real local[2] session, with planted bad files."""

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from leukolab.data.dataset import SmearDataset, load_manifest, load_split
from leukolab.data.etl import EtlParams, run_etl
from leukolab.data.synthetic import generate_dataset

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def spark(tmp_path_factory):
    import os

    os.environ["LEUKOLAB_WORKSPACE"] = str(tmp_path_factory.mktemp("spark-workspace"))
    from leukolab.data.spark import spark_session

    session = spark_session("local[2]")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """Synthetic smears plus every kind of bad file."""
    root = generate_dataset(tmp_path_factory.mktemp("raw") / "planted", images_per_class=10, image_size=96, seed=3)
    original = root / "Original"
    (original / "Pre" / "zero.jpg").write_bytes(b"")
    (original / "Pre" / "notes.jpg").write_text("not an image")
    good = (original / "Pro" / "Pro_0000.jpg").read_bytes()
    (original / "Pro" / "cut.jpg").write_bytes(good[: len(good) // 3])
    (original / "Early" / "tiny.png").write_bytes(_png(Image.new("RGB", (8, 8))))
    (original / "Benign" / "wide.TIF").write_bytes(_tiff16())
    (original / "Benign" / "alpha.Png").write_bytes(_png(Image.new("RGBA", (96, 96), (200, 100, 150, 128))))
    (root / "Segmented" / "Pro" / "orphan.png").write_bytes(_png(Image.new("L", (96, 96))))
    shutil.copy(original / "Early" / "Early_0001.jpg", original / "Early" / "Early_copy.jpg")  # within a class
    shutil.copy(original / "Pre" / "Pre_0002.jpg", original / "Pro" / "Pre_0002_misfiled.jpg")  # across classes
    (root / "Original" / "Unknown").mkdir()
    shutil.copy(original / "Pre" / "Pre_0003.jpg", root / "Original" / "Unknown" / "x.jpg")
    return root


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _tiff16() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.linspace(0, 65535, 96 * 96).astype(np.uint16).reshape(96, 96)).save(buffer, format="TIFF")
    return buffer.getvalue()


def run(spark, raw, tmp_path, **overrides):
    settings = {"image_size": 48, "classes": ["Benign", "Early", "Pre", "Pro"], "max_bad_fraction": 0.5, **overrides}
    params = EtlParams(**settings)
    return run_etl(spark, raw, tmp_path, params)


def test_every_file_is_accounted_for_with_a_reason(spark, raw, tmp_path):
    before = sorted((p.relative_to(raw), p.stat().st_mtime_ns) for p in raw.rglob("*"))
    manifest = load_manifest(run(spark, raw, tmp_path))
    files = manifest["files"]
    assert files["in"] == 40 + 40 + 9 + 1  # originals, masks, planted originals, orphan mask
    assert files["in"] == files["out"] + files["quarantined"]
    reasons = {q["source_path"]: q["reason"] for q in manifest["quarantine"]}
    assert reasons["Original/Pre/zero.jpg"] == "empty"
    assert reasons["Original/Pre/notes.jpg"] == "not_an_image"
    assert reasons["Original/Pro/cut.jpg"] == "truncated"
    assert reasons["Original/Early/tiny.png"] == "too_small"
    assert reasons["Segmented/Pro/orphan.png"] == "mask_without_original"
    assert reasons["Original/Unknown/x.jpg"] == "unknown_class"
    assert reasons["Original/Pro/Pre_0002_misfiled.jpg"] == "conflicting_labels"
    assert reasons["Original/Pre/Pre_0002.jpg"] == "conflicting_labels"
    assert "Original/Benign/wide.TIF" not in reasons and "Original/Benign/alpha.Png" not in reasons
    assert before == sorted((p.relative_to(raw), p.stat().st_mtime_ns) for p in raw.rglob("*")), "raw folder was modified"


def test_duplicates_share_a_split_and_masks_are_paired(spark, raw, tmp_path):
    dataset_dir = run(spark, raw, tmp_path)
    manifest = load_manifest(dataset_dir)
    assert ["Original/Early/Early_0001.jpg", "Original/Early/Early_copy.jpg"] in manifest["duplicate_groups"]
    table = load_split(dataset_dir)
    pair = table[table["source_path"].isin(["Original/Early/Early_0001.jpg", "Original/Early/Early_copy.jpg"])]
    assert pair["split"].nunique() == 1
    assert table[table["source_path"] == "Original/Benign/Benign_0000.jpg"]["mask"].notna().all()
    assert table[table["source_path"] == "Original/Benign/alpha.Png"]["mask"].isna().all()
    dataset = SmearDataset(table[table["mask"].notna()], with_masks=True)
    assert dataset.images.shape[1:] == (3, 48, 48) and set(dataset.masks.unique().tolist()) == {0, 1}
    assert 0.3 < np.mean(manifest["train_mean"]) < 0.95 and all(0.02 < s < 0.5 for s in manifest["train_std"])


def test_same_input_same_manifest_and_reuse(spark, raw, tmp_path):
    first = run(spark, raw, tmp_path / "a")
    second = run(spark, raw, tmp_path / "b")
    assert first.name == second.name
    assert (first / "manifest.json").read_bytes() == (second / "manifest.json").read_bytes()
    assert run(spark, raw, tmp_path / "a") == first  # reused, not rewritten
    other = run(spark, raw, tmp_path / "a", seed=99)
    assert other.name != first.name


def test_required_masks_and_bad_share_limit(spark, raw, tmp_path):
    manifest = load_manifest(run(spark, raw, tmp_path, require_masks=True))
    reasons = {q["source_path"]: q["reason"] for q in manifest["quarantine"]}
    assert reasons["Original/Benign/alpha.Png"] == "missing_mask"
    with pytest.raises(ValueError, match="max_bad_fraction"):
        run(spark, raw, tmp_path / "strict", max_bad_fraction=0.01)
    assert json.loads(json.dumps(manifest))["schema_version"] == 1
