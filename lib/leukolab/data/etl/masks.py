"""Masks from mask files or segmented images on black, and their audit.

Derivation (on the ETL workers, at the file's own resolution): a file whose
brightness (the largest of R, G, B) takes only 0 and one other value is an
exact mask and is kept as it is; anything else (a JPEG of cells in false
colour on black) is thresholded at ``mask_threshold``, its connected
components smaller than ``mask_min_component`` of the field are removed and,
with ``mask_fill_holes``, its holes filled. The mask is then resized (nearest)
to the dataset's size.

Audit (in the driver): a mask is ``implausible`` when its cell fraction is
below ``mask_min_fraction`` (``too_small``), when it covers less than
``mask_min_agreement`` of a colour estimate of the stained nuclei in the
original (``misses_cells``), or when its cell fraction is below
``mask_min_relative`` times the median of the masks that pass the other rules
(``low_coverage``: fragments of cells). The two sides meet in the driver as small bitmaps
(``AUDIT_BITMAP`` x ``AUDIT_BITMAP``, hex), one per Spark row.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

AUDIT_BITMAP = 32
"""Side of the low-resolution bitmaps the audit compares; a block is marked when any of its pixels is."""
MIN_ESTIMATE_SHARE = 0.005
"""The colour estimate is compared only when it marks at least this share of the bitmap (6 of 1,024 blocks)."""
SHORTCUT_COVERAGE_RATIO = 4.0
"""Warn when one class's median mask coverage is this many times another's."""
SHORTCUT_SHARE_GAP = 0.25
"""Warn when the share of images with a plausible mask differs by more than this between classes."""
NUCLEUS_MIN_SATURATION = 0.35
NUCLEUS_MIN_BLUE_RED = 0.85
NUCLEUS_DARKER_THAN = 0.85
"""Stained nuclei (purple-blue, or magenta-purple in Giemsa): blue at least 0.85 x red, red >= green, saturation
(max-min)/max at least 0.35, and brightness (max) at most 0.85 x the field's median brightness, so a brightly
exposed field (real JPEGs: nuclei near 0.8) finds its nuclei as a dim one does."""


def derive_mask(image: Image.Image, size: int, params) -> tuple[np.ndarray, float, float]:
    """A 0/1 uint8 ``size`` x ``size`` mask, and the cell fraction before and after the clean-up (native resolution)."""
    brightness = _channel_max(_rgb_array(image))
    exact = not np.any((brightness != 0) & (brightness != brightness.max()))
    raw = brightness > (0 if exact else params.mask_threshold)
    clean = raw if exact else clean_mask(raw, params.mask_min_component, params.mask_fill_holes)
    resized = Image.fromarray(clean.astype(np.uint8) * 255)
    if resized.size != (size, size):
        resized = resized.resize((size, size), Image.Resampling.NEAREST)
    return (np.asarray(resized) > 0).astype(np.uint8), float(raw.mean()), float(clean.mean())


def clean_mask(bits: np.ndarray, min_component: float, fill_holes: bool) -> np.ndarray:
    """``bits`` without connected components under ``min_component`` of the field, holes filled when asked."""
    bits = remove_small_components(bits, min_component)
    return fill_mask_holes(bits) if fill_holes else bits


def fill_mask_holes(bits: np.ndarray) -> np.ndarray:
    """``bits`` with every background region that does not reach the border set: what
    ``scipy.ndimage.binary_fill_holes`` gives, from one labelling instead of a dilation repeated until it settles."""
    background, _ = ndimage.label(~bits)  # 4-connected, as binary_fill_holes propagates
    reaches_border = np.zeros(background.max() + 1, bool)
    for edge in (background[0], background[-1], background[:, 0], background[:, -1]):
        reaches_border[edge] = True
    reaches_border[0] = False  # label 0 is the foreground
    return ~reaches_border[background]


def remove_small_components(bits: np.ndarray, min_fraction: float) -> np.ndarray:
    """``bits`` without its 8-connected components smaller than ``min_fraction`` of the field."""
    labels, count = ndimage.label(bits, structure=np.ones((3, 3)))
    if not count:
        return bits.astype(bool)
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_fraction * bits.size
    keep[0] = False
    return keep[labels]


def nucleus_estimate(image: Image.Image, min_component: float) -> np.ndarray:
    """Where a smear's stained nuclei are, by colour: purple, saturated and dark pixels, specks removed."""
    return remove_small_components(nucleus_colours(_rgb_array(image)), min_component)


def nucleus_colours(rgb: np.ndarray) -> np.ndarray:
    """Which pixels of an HxWx3 uint8 array have a stained nucleus's colour (the rule of ``NUCLEUS_DARKER_THAN``).

    Each threshold is defined on channel / 255 in float32; the pairwise ones (blue against red, saturation from max
    and min) are lookups in 256 x 256 tables computed in that arithmetic, so no float image is made.
    """
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    top = _channel_max(rgb)
    bottom = np.minimum(np.minimum(red, green), blue)
    brightness = _LEVELS[top]
    dark = brightness <= NUCLEUS_DARKER_THAN * np.median(brightness)
    return (_BLUE_OVER_RED[_pair(blue, red)] & (red >= green) & _SATURATED[_pair(top, bottom)] & dark)


def _pair(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The flat index of (first, second) in a 256 x 256 table."""
    return (first.astype(np.intp) << 8) | second


_LEVELS = np.arange(256, dtype=np.float32) / 255.0
_BLUE_OVER_RED = (_LEVELS[:, None] >= NUCLEUS_MIN_BLUE_RED * _LEVELS[None, :]).ravel()
"""Blue (row) at least ``NUCLEUS_MIN_BLUE_RED`` x red (column)."""
_SATURATED = ((_LEVELS[:, None] - _LEVELS[None, :]) / np.maximum(_LEVELS[:, None], 1e-6) >= NUCLEUS_MIN_SATURATION).ravel()
"""Saturation (max - min) / max of max (row) and min (column) at least ``NUCLEUS_MIN_SATURATION``."""


def _rgb_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def _channel_max(rgb: np.ndarray) -> np.ndarray:
    """The largest of R, G, B per pixel (``rgb.max(-1)`` is ~40x slower: numpy reduces a length-3 axis poorly)."""
    return np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])


def pack_bitmap(bits: np.ndarray) -> str:
    """``bits`` as an ``AUDIT_BITMAP``-square bitmap (a block is set when any pixel in it is), packed as hex."""
    blocks = Image.fromarray(bits.astype(np.uint8) * 255).resize((AUDIT_BITMAP, AUDIT_BITMAP), Image.Resampling.BOX)
    return np.packbits(np.asarray(blocks) > 0).tobytes().hex()


def unpack_bitmap(packed: str) -> np.ndarray:
    """The boolean square of :func:`pack_bitmap`."""
    return np.unpackbits(np.frombuffer(bytes.fromhex(packed), np.uint8)).astype(bool).reshape(AUDIT_BITMAP, AUDIT_BITMAP)


def audit_mask(fraction: float, mask_bitmap: str, estimate_bitmap: str | None, params) -> tuple[str, str | None, str | None]:
    """``(status, reason, message)`` of one mask: ``ok``, or ``implausible`` with ``too_small`` or ``misses_cells``."""
    if fraction < params.mask_min_fraction:
        return "implausible", "too_small", f"cell fraction {fraction:.2%} is below mask_min_fraction {params.mask_min_fraction:.2%}"
    estimate = unpack_bitmap(estimate_bitmap) if estimate_bitmap else None
    if estimate is not None and estimate.mean() >= MIN_ESTIMATE_SHARE:
        covered = float((estimate & unpack_bitmap(mask_bitmap)).sum() / estimate.sum())
        if covered < params.mask_min_agreement:
            return "implausible", "misses_cells", (f"the mask covers {covered:.0%} of the stained nuclei seen in the "
                                                   f"original, below mask_min_agreement {params.mask_min_agreement:.0%}")
    return "ok", None, None


def audit_masks(originals: pd.DataFrame, masks: pd.DataFrame, params) -> pd.DataFrame:
    """The audit's columns for ``originals`` (with ``mask_path``), on its index: ``mask_status``, ``mask_reason``,
    ``mask_message``, ``mask_fraction`` and ``mask_raw_fraction`` (null where an image has no mask file)."""
    audited = pd.DataFrame({"mask_status": None, "mask_reason": None, "mask_message": None, "mask_fraction": np.nan,
                            "mask_raw_fraction": np.nan}, index=originals.index)
    with_file = originals["mask_path"].notna()
    if with_file.any():
        mask = masks.set_index("source_path").loc[originals.loc[with_file, "mask_path"]]
        audited.loc[with_file, ["mask_status", "mask_reason", "mask_message"]] = [
            audit_mask(fraction, bitmap, original_bitmap, params) for fraction, bitmap, original_bitmap
            in zip(mask["mask_fraction"], mask["bitmap"], originals.loc[with_file, "bitmap"])]
        audited.loc[with_file, ["mask_fraction", "mask_raw_fraction"]] = mask[["mask_fraction", "mask_raw_fraction"]].to_numpy()
    _flag_low_coverage(audited, params.mask_min_relative)
    return audited


def _flag_low_coverage(audited: pd.DataFrame, min_relative: float) -> None:
    """Mark ``ok`` masks covering less than ``min_relative`` x the median coverage of the ``ok`` masks as
    ``implausible`` (``low_coverage``): a fragment of a cell passes the absolute floor but not this one."""
    ok = audited["mask_status"] == "ok"
    if not ok.any():
        return
    floor = min_relative * float(audited.loc[ok, "mask_fraction"].median())
    low = ok & (audited["mask_fraction"] < floor)
    audited.loc[low, ["mask_status", "mask_reason"]] = ["implausible", "low_coverage"]
    audited.loc[low, "mask_message"] = [f"cell fraction {f:.2%} is below mask_min_relative x the median of plausible "
                                        f"masks ({floor:.2%})" for f in audited.loc[low, "mask_fraction"]]


def masks_manifest(table: pd.DataFrame, classes: list[str], params) -> dict:
    """The manifest's ``masks`` section: per class counts and coverage, the clean-up change, the implausible masks,
    the parameters and a shortcut warning (or null)."""
    per_class = {}
    for name in classes:
        rows = table.loc[table["class_name"] == name, ["mask_status", "mask_fraction", "mask_reason"]]
        with_file = rows[rows["mask_status"].notna()]
        quartiles = with_file["mask_fraction"].quantile([0.25, 0.5, 0.75]).tolist() if len(with_file) else [None] * 3
        per_class[name] = {
            "images": len(rows), "ok": int((rows["mask_status"] == "ok").sum()),
            "implausible": int((rows["mask_status"] == "implausible").sum()), "without_mask": int(rows["mask_status"].isna().sum()),
            "reasons": {r: int(n) for r, n in sorted(rows["mask_reason"].value_counts().items())},
            "fraction_q1": _round(quartiles[0]), "fraction_median": _round(quartiles[1]), "fraction_q3": _round(quartiles[2]),
        }
    change = (table["mask_fraction"] - table["mask_raw_fraction"]).dropna()
    implausible = table.loc[table["mask_status"] == "implausible",
                            ["source_path", "mask_path", "mask_reason", "mask_message"]].sort_values("source_path")
    return {
        "parameters": {name: getattr(params, name) for name in ("mask_threshold", "mask_min_component", "mask_fill_holes",
                                                                 "mask_min_fraction", "mask_min_agreement", "mask_min_relative")},
        "classes": per_class,
        "cleanup_change_mean": _round(change.mean() if len(change) else None),
        "cleanup_change_mean_abs": _round(change.abs().mean() if len(change) else None),
        "implausible": [{"source_path": r.source_path, "mask_path": r.mask_path, "reason": r.mask_reason, "message": r.mask_message}
                        for r in implausible.itertuples()],
        "shortcut_warning": shortcut_warning(per_class),
    }


def shortcut_warning(per_class: dict) -> str | None:
    """Why masks could give the class away, or ``None``: median coverage or the share of images with a plausible mask
    differs strongly between classes (there are masks at all)."""
    if not any(c["ok"] + c["implausible"] for c in per_class.values()):
        return None
    medians = {name: c["fraction_median"] or 0.0 for name, c in per_class.items() if c["ok"] + c["implausible"]}
    shares = {name: c["ok"] / c["images"] for name, c in per_class.items() if c["images"]}
    low, high = min(medians, key=medians.get), max(medians, key=medians.get)
    few, many = min(shares, key=shares.get), max(shares, key=shares.get)
    problems = []
    if medians[high] > SHORTCUT_COVERAGE_RATIO * max(medians[low], 1e-6):
        problems.append(f"median mask coverage is {medians[low]:.1%} for {low} but {medians[high]:.1%} for {high}")
    if shares[many] - shares[few] > SHORTCUT_SHARE_GAP:
        problems.append(f"{shares[few]:.0%} of {few} images have a plausible mask against {shares[many]:.0%} of {many}")
    if not problems:
        return None
    return ("MASK SHORTCUT RISK: " + "; ".join(problems) + ". Masks (or their absence) differ by class: a model that "
            "sees them could learn the class from the mask; check the segmentations of the low classes.")


def _round(value) -> float | None:
    return None if value is None or pd.isna(value) else round(float(value), 6)
