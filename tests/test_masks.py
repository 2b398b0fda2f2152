"""Masks from segmented images: derivation, the plausibility audit and the manifest's masks section."""

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from leukolab.data.etl.masks import (
    audit_mask,
    derive_mask,
    masks_manifest,
    nucleus_estimate,
    pack_bitmap,
    shortcut_warning,
    unpack_bitmap,
)
from leukolab.data.etl.params import EtlParams

PARAMS = EtlParams()
BACKGROUND, RED_CELL, NUCLEUS = (238, 226, 222), (226, 158, 160), (92, 44, 132)


def disc(size: int, centre: tuple[int, int], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return np.hypot(yy - centre[0], xx - centre[1]) <= radius


def jpeg(array: np.ndarray, quality: int = 75) -> Image.Image:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def segmented_jpeg(size: int = 224) -> tuple[Image.Image, np.ndarray]:
    """Two cells in false colour on black, one with a dark core, specks of a few pixels; JPEG at quality 75."""
    cells = disc(size, (60, 70), 22) | disc(size, (150, 140), 30)
    image = np.zeros((size, size, 3), np.uint8)
    image[disc(size, (60, 70), 22)] = (210, 70, 190)
    image[disc(size, (150, 140), 30)] = (60, 190, 230)
    image[disc(size, (150, 140), 9)] = (12, 8, 14)  # a dark nucleus: a hole after the threshold
    for y, x in ((20, 200), (200, 20), (110, 10), (30, 150)):
        image[y:y + 2, x:x + 3] = 255  # specks
    return jpeg(image), cells


def test_a_jpeg_segmentation_with_ringing_and_specks_gives_the_clean_mask():
    image, cells = segmented_jpeg()
    brightness = np.asarray(image).max(-1)
    assert ((brightness > 0) & (brightness < 32) & ~cells).sum() > 100  # the JPEG really rings on black
    mask, raw, clean = derive_mask(image, 224, PARAMS)
    iou = (mask.astype(bool) & cells).sum() / (mask.astype(bool) | cells).sum()
    assert iou > 0.97 and mask[200:202, 20:23].sum() == 0 and mask[150, 140] == 1
    assert clean == pytest.approx(mask.mean()) and clean > raw  # the filled hole outweighs the removed specks
    half, _, _ = derive_mask(image, 112, PARAMS)
    assert half.shape == (112, 112) and set(np.unique(half)) == {0, 1}


def test_exact_binary_masks_come_out_unchanged():
    exact = (disc(64, (20, 20), 10) & ~disc(64, (20, 20), 3)) | disc(64, (50, 50), 1)  # a hole and a 5 px component
    for values in (np.uint8(255), np.uint8(1)):
        image = Image.open(io.BytesIO(_png(exact.astype(np.uint8) * values)))
        mask, raw, clean = derive_mask(image, 64, PARAMS)
        assert np.array_equal(mask, exact.astype(np.uint8)) and raw == clean == pytest.approx(exact.mean())
    bigger = Image.fromarray(exact.astype(np.uint8) * 255).resize((128, 128), Image.Resampling.NEAREST)
    assert np.array_equal(derive_mask(bigger, 64, PARAMS)[0], exact.astype(np.uint8))


def test_holes_are_filled_unless_switched_off():
    ring = disc(64, (32, 32), 20) & ~disc(64, (32, 32), 8)
    image = np.zeros((64, 64, 3), np.uint8)
    image[ring] = (200, 80, 40)
    image[disc(64, (32, 32), 20) & ~disc(64, (32, 32), 14)] = (220, 90, 50)  # two colours: not an exact mask
    filled, _, _ = derive_mask(Image.fromarray(image), 64, PARAMS)
    assert np.array_equal(filled.astype(bool), disc(64, (32, 32), 20))
    kept, _, _ = derive_mask(Image.fromarray(image), 64, EtlParams(mask_fill_holes=False))
    assert np.array_equal(kept.astype(bool), ring)


def smear(size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """A smear with red cells and two stained nuclei inside their white cells; returns it and the white cells."""
    image = np.full((size, size, 3), BACKGROUND, np.uint8)
    for centre in ((15, 70), (80, 20), (75, 80)):
        image[disc(size, centre, 9)] = RED_CELL
    cells = disc(size, (30, 28), 16) | disc(size, (60, 62), 14)
    image[cells] = (178, 182, 226)
    image[disc(size, (30, 28), 10) | disc(size, (60, 62), 9)] = NUCLEUS
    return image, cells


def test_the_colour_estimate_finds_nuclei_not_red_cells():
    image, cells = smear()
    estimate = nucleus_estimate(Image.fromarray(image), PARAMS.mask_min_component)
    assert np.array_equal(estimate, disc(96, (30, 28), 10) | disc(96, (60, 62), 9)) and not estimate[~cells].any()
    assert np.array_equal(unpack_bitmap(pack_bitmap(estimate))[::8, ::8], estimate[::24, ::24])


def test_plausibility_rule():
    image, cells = smear()
    estimate = pack_bitmap(nucleus_estimate(Image.fromarray(image), PARAMS.mask_min_component))
    assert audit_mask(float(cells.mean()), pack_bitmap(cells), estimate, PARAMS) == ("ok", None, None)
    elsewhere = np.zeros_like(cells)
    elsewhere[70:95, 0:40] = True  # a mask that misses both cells
    status, reason, message = audit_mask(float(elsewhere.mean()), pack_bitmap(elsewhere), estimate, PARAMS)
    assert (status, reason) == ("implausible", "misses_cells") and "mask_min_agreement" in message
    speck = disc(96, (30, 28), 2)
    assert audit_mask(float(speck.mean()), pack_bitmap(speck), estimate, PARAMS)[:2] == ("implausible", "too_small")
    blank = pack_bitmap(np.zeros_like(cells))  # no nuclei to compare with: the fraction alone decides
    assert audit_mask(float(elsewhere.mean()), pack_bitmap(elsewhere), blank, PARAMS)[0] == "ok"


def test_masks_manifest_counts_per_class_and_warns_of_a_shortcut():
    rows = [("A", f"a{i}", "ok", None, 0.08, 0.079) for i in range(8)] + [("A", "a8", None, None, np.nan, np.nan)]
    rows += [("B", f"b{i}", "ok", None, 0.07, 0.075) for i in range(3)]
    rows += [("B", f"b{i}", "implausible", "too_small", 0.001, 0.002) for i in range(3, 9)]
    table = pd.DataFrame(rows, columns=["class_name", "source_path", "mask_status", "mask_reason", "mask_fraction",
                                        "mask_raw_fraction"])
    table["mask_path"] = table["source_path"].where(table["mask_status"].notna())
    table["mask_message"] = table["mask_reason"]
    section = masks_manifest(table, ["A", "B"], PARAMS)
    a, b = section["classes"]["A"], section["classes"]["B"]
    assert (a["ok"], a["implausible"], a["without_mask"]) == (8, 0, 1) and a["fraction_median"] == 0.08
    assert (b["ok"], b["implausible"], b["reasons"]) == (3, 6, {"too_small": 6}) and b["fraction_median"] == 0.001
    assert len(section["implausible"]) == 6 and section["parameters"]["mask_min_fraction"] == PARAMS.mask_min_fraction
    assert section["cleanup_change_mean"] == pytest.approx((8 * 0.001 - 3 * 0.005 - 6 * 0.001) / 17, abs=1e-6)
    warning = section["shortcut_warning"]
    assert "SHORTCUT" in warning and "0.1% for B" in warning and "33% of B" in warning
    even = {name: {"images": 10, "ok": 10, "implausible": 0, "fraction_median": 0.05} for name in "AB"}
    assert shortcut_warning(even) is None
    assert shortcut_warning({name: {"images": 5, "ok": 0, "implausible": 0, "fraction_median": None} for name in "AB"}) is None


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_colour_estimate_finds_bright_real_smear_nuclei_in_a_jpeg():
    """Colours of a brightly exposed real smear (violet nuclei near 0.8 brightness, pink red cells, a pale lilac
    background), saved as JPEG at quality 75: the estimate still finds the nuclei and not the red cells."""
    import io

    size = 96
    image = np.full((size, size, 3), (240, 232, 242), np.uint8)
    for centre in ((15, 70), (80, 20), (75, 80)):
        image[disc(size, centre, 9)] = (236, 172, 184)
    nuclei = disc(size, (30, 28), 10) | disc(size, (60, 62), 9)
    image[disc(size, (30, 28), 16) | disc(size, (60, 62), 14)] = (200, 196, 230)
    image[nuclei] = (150, 104, 198)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=75)
    estimate = nucleus_estimate(Image.open(buffer), PARAMS.mask_min_component)
    assert (estimate & nuclei).sum() > 0.8 * nuclei.sum() and (estimate & ~nuclei).sum() < 0.1 * nuclei.sum()


def test_a_mask_far_below_the_median_coverage_is_implausible():
    from leukolab.data.etl.masks import audit_masks

    estimate = pack_bitmap(np.zeros((96, 96), bool))
    fractions = [0.06, 0.07, 0.08, 0.05, 0.009, 0.006]  # two fragments: above the absolute floor, far below the median
    masks = pd.DataFrame({"source_path": [f"m{i}" for i in range(6)], "mask_fraction": fractions,
                          "mask_raw_fraction": fractions, "bitmap": estimate})
    originals = pd.DataFrame({"source_path": [f"o{i}" for i in range(6)], "mask_path": list(masks["source_path"]),
                              "bitmap": estimate})
    audited = audit_masks(originals, masks, PARAMS)
    assert list(audited["mask_reason"]) == [None] * 4 + ["low_coverage"] * 2
    assert "mask_min_relative" in audited["mask_message"].iloc[4]
