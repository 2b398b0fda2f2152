"""The faster per-file ETL work gives the same outputs as the code it replaced (issue 31).

The reference functions below are the pre-change code (``15fd0bd``'s ``leukolab.data.masks``, with issue 24's
relative nucleus-colour rule), kept here as the oracle: plain float and scipy operations, slow but obviously right. The new code must agree with them on every
colour, on random masks, and through the whole per-file path and the driver's curation on a fixture with every
kind of mask file, so the manifest and the dataset rows (a deterministic function of the per-file rows and the
curated table: :func:`leukolab.data.etl.parquet.write_dataset`) stay the same.
"""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from leukolab.data.etl import job as etl
from leukolab.data.etl.curation import build_manifest, curate, fingerprint
from leukolab.data.etl.job import mask_keys, process_file
from leukolab.data.etl.masks import (
    NUCLEUS_DARKER_THAN,
    NUCLEUS_MIN_BLUE_RED,
    NUCLEUS_MIN_SATURATION,
    derive_mask,
    fill_mask_holes,
    nucleus_colours,
    remove_small_components,
)
from leukolab.data.etl.params import EtlParams
from leukolab.data.etl.raw_files import walk_files
from leukolab.data.synthetic.folder import generate_dataset


def reference_nucleus_colours(image: Image.Image) -> np.ndarray:
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    top, bottom = rgb.max(-1), rgb.min(-1)
    saturation = (top - bottom) / np.maximum(top, 1e-6)
    dark = top <= NUCLEUS_DARKER_THAN * np.median(top)
    return (blue >= NUCLEUS_MIN_BLUE_RED * red) & (red >= green) & (saturation >= NUCLEUS_MIN_SATURATION) & dark


def reference_nucleus_estimate(image: Image.Image, min_component: float) -> np.ndarray:
    return remove_small_components(reference_nucleus_colours(image), min_component)


def reference_derive_mask(image: Image.Image, size: int, params) -> tuple[np.ndarray, float, float]:
    brightness = np.asarray(image.convert("RGB")).max(-1)
    exact = not np.any((brightness != 0) & (brightness != brightness.max()))
    raw = brightness > (0 if exact else params.mask_threshold)
    clean = raw
    if not exact:
        clean = remove_small_components(raw, params.mask_min_component)
        clean = ndimage.binary_fill_holes(clean) if params.mask_fill_holes else clean
    resized = Image.fromarray(clean.astype(np.uint8) * 255)
    if resized.size != (size, size):
        resized = resized.resize((size, size), Image.Resampling.NEAREST)
    return (np.asarray(resized) > 0).astype(np.uint8), float(raw.mean()), float(clean.mean())


def test_the_nucleus_colour_lookup_agrees_with_the_float_definition():
    blue, green = (level.ravel() for level in np.meshgrid(np.arange(256), np.arange(256), indexing="ij"))
    # Every (blue, green) pair with red on both sides of each edge (red >= green, blue >= 0.85 red), then a million
    # random colours.
    reds = [green - 1, green, (green + blue) // 2, blue, blue + 1, blue * 20 // 17, blue * 20 // 17 + 1]
    colours = [np.stack([red, green, blue], -1) for red in reds] + [np.random.default_rng(0).integers(0, 256, (2**20, 3))]
    rgb = np.clip(np.concatenate(colours), 0, 255).astype(np.uint8).reshape(-1, 1024, 3)
    expected = reference_nucleus_colours(Image.fromarray(rgb))
    assert np.array_equal(nucleus_colours(rgb), expected)
    assert 0.01 < expected.mean() < 0.5  # the thresholds do cut: the comparison is not of two blank maps


@pytest.mark.parametrize("density", [0.0, 0.2, 0.45, 0.6, 0.8, 1.0])
def test_holes_are_filled_as_scipy_fills_them(density):
    rng = np.random.default_rng(int(density * 100))
    for shape in ((1, 1), (1, 9), (7, 5), (64, 64), (97, 131)):
        for _ in range(20):
            bits = rng.random(shape) < density
            assert np.array_equal(fill_mask_holes(bits), ndimage.binary_fill_holes(bits)), (shape, density)
    ring = np.zeros((9, 9), bool)
    ring[2:7, 2:7], ring[3:6, 3:6] = True, False
    assert fill_mask_holes(ring)[4, 4] and not fill_mask_holes(ring)[0, 0]


def test_derived_masks_match_the_reference_on_every_kind_of_level_set():
    rng = np.random.default_rng(1)
    ring = np.zeros((40, 40), np.uint8)
    ring[5:30, 5:30], ring[10:25, 10:25] = 200, 0
    fields = {"black": np.zeros((40, 40), np.uint8), "white": np.full((40, 40), 255, np.uint8), "ring": ring,
              "two levels, no black": np.where(ring, 200, 90).astype(np.uint8), "ring on grey": ring | 30,
              "noise": rng.integers(0, 256, (40, 40, 3), dtype=np.uint8), "colour ring": np.stack([ring, ring // 2, ring // 3], -1)}
    for name, array in fields.items():
        for params in (EtlParams(), EtlParams(mask_fill_holes=False, mask_threshold=10)):
            mask, raw, clean = derive_mask(Image.fromarray(array), 24, params)
            expected, raw_expected, clean_expected = reference_derive_mask(Image.fromarray(array), 24, params)
            assert np.array_equal(mask, expected) and (raw, clean) == (raw_expected, clean_expected), name


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """Segmented JPEGs (good and failed), exact PNG masks, originals without a mask, a mask without an original,
    greyscale and bad files; 128 px raw images processed to 48 px."""
    root = generate_dataset(tmp_path_factory.mktemp("raw") / "mixed", 6, image_size=128, seed=5,
                            segmentation="false_colour", failed_segmentation={"Pro": 0.5, "Early": 0.2})
    exact = generate_dataset(tmp_path_factory.mktemp("raw") / "exact", 2, image_size=128, seed=6)
    for name in ("Benign", "Pre"):
        (root / "Segmented" / name / f"{name}_0001.jpg").unlink()  # an original without its mask
        for i in range(2):
            shutil.copy(exact / "Original" / name / f"{name}_{i:04d}.jpg", root / "Original" / name / f"{name}_x{i}.jpg")
            shutil.copy(exact / "Segmented" / name / f"{name}_{i:04d}.png", root / "Segmented" / name / f"{name}_x{i}.png")
    (root / "Segmented" / "Early" / "Early_0000.jpg").rename(root / "Segmented" / "Early" / "orphan.jpg")
    Image.open(root / "Original" / "Pro" / "Pro_0002.jpg").convert("L").save(root / "Original" / "Pro" / "grey.png")
    (root / "Original" / "Pre" / "notes.jpg").write_bytes(b"not an image")
    return root


def per_file_rows(root, params: EtlParams, masked) -> pd.DataFrame:
    layout = params.layout_for("original_segmented")
    return pd.DataFrame([process_file(path, (root / path).read_bytes(), layout, params, masked) for path in walk_files(root)])


def curated(root, params: EtlParams, rows: pd.DataFrame) -> tuple[dict, pd.DataFrame]:
    meta = rows.drop(columns="png").assign(part="staging", png_bytes=rows["png"].map(len, na_action="ignore"))
    table, quarantine, duplicates = curate(meta, params)
    manifest = build_manifest("mixed", root, "original_segmented", params, fingerprint(meta, params, "original_segmented"),
                              meta, table, quarantine, duplicates)
    png = dict(zip(rows["source_path"], rows["png"]))
    used = table["mask_path"].where(table["mask_status"] == "ok")
    return manifest, table.assign(image=table["source_path"].map(png), mask=used.map(png)).drop(columns="bitmap")


def test_per_file_rows_manifest_and_dataset_rows_match_the_reference_code(raw, monkeypatch):
    params = EtlParams(image_size=48, layout="original_segmented", max_bad_fraction=0.5, holdouts=1)
    new = per_file_rows(raw, params, mask_keys(params.layout_for("original_segmented"), walk_files(raw)))
    monkeypatch.setattr(etl, "nucleus_estimate", reference_nucleus_estimate)
    monkeypatch.setattr(etl, "derive_mask", reference_derive_mask)
    old = per_file_rows(raw, params, None)  # the old path: a colour estimate for every original
    monkeypatch.undo()

    without_mask = (new["role"] == "original") & new["bitmap"].isna() & old["bitmap"].notna()
    assert set(new.loc[without_mask, "source_path"]) == {"Original/Benign/Benign_0001.jpg", "Original/Pre/Pre_0001.jpg",
                                                         "Original/Early/Early_0000.jpg", "Original/Pro/grey.png"}
    unpaired = (new["role"] == "original") & new["stem"].isna()  # no mask shares its stem: no stem, no estimate
    assert (without_mask <= unpaired).all() and new.loc[unpaired, "bitmap"].isna().all()
    assert new.drop(columns=["bitmap", "stem"]).equals(old.drop(columns=["bitmap", "stem"]))
    assert new["bitmap"][~without_mask].equals(old["bitmap"][~without_mask])
    assert new["stem"][~unpaired].equals(old["stem"][~unpaired])
    masks = old[(old["role"] == "mask") & (old["status"] == "ok")]
    assert masks["source_path"].str.endswith(".png").sum() == 4 and masks["mask_fraction"].min() < 0.005  # exact, failed

    (new_manifest, new_table), (old_manifest, old_table) = curated(raw, params, new), curated(raw, params, old)
    assert json.dumps(new_manifest, sort_keys=True) == json.dumps(old_manifest, sort_keys=True)
    pd.testing.assert_frame_equal(new_table, old_table)
    assert set(new_table["mask_status"].dropna()) == {"ok", "implausible"} and new_table["mask"].notna().sum() >= 10
