"""The synthetic dataset writer's options: segmentations as real datasets ship them, per-class counts, domain shift."""

import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from leukolab.data.etl.masks import derive_mask
from leukolab.data.etl.params import EtlParams
from leukolab.data.etl.raw import raw_folder
from leukolab.data.synthetic.folder import DomainShift, generate_dataset
from leukolab.data.synthetic.smears import image_rng, render_smear
from leukolab.pipeline import plan

SIZE = 64
PER_CLASS = 24
PRO_FAILURES = 0.75


def files(root, pattern="*"):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob(pattern) if p.is_file())


@pytest.fixture(scope="module")
def real_like(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("real-like"), {"Early": PER_CLASS, "Pro": PER_CLASS}, image_size=SIZE,
                            seed=0, segmentation="false_colour", failed_segmentation={"Pro": PRO_FAILURES})


def segmentation(root, name, i):
    """(segmented image as an array, the mask the ETL derives from it, the exact mask)."""
    with Image.open(root / "Segmented" / name / f"{name}_{i:04d}.jpg") as segmented:
        assert (segmented.format, segmented.size) == ("JPEG", (SIZE, SIZE))
        derived = derive_mask(segmented, SIZE, EtlParams())[0].astype(bool)
        pixels = np.asarray(segmented.convert("RGB"))
    return pixels, derived, render_smear(image_rng(0, name, i), name, SIZE)[1].astype(bool)


def test_false_colour_segmentations_are_jpegs_of_the_cells_on_black_with_ringing(real_like):
    assert files(real_like, "*.png") == []
    assert len(files(real_like / "Segmented")) == 2 * PER_CLASS
    for i in range(PER_CLASS):
        pixels, derived, exact = segmentation(real_like, "Early", i)
        far = ~ndimage.binary_dilation(exact, iterations=3)
        grey = pixels.mean(axis=2)
        assert np.median(grey[far]) < 4 and grey[exact].mean() > 40  # bright cells on black
        assert (derived & exact).sum() > 0.9 * exact.sum()  # a good segmentation
        assert ((grey > 2) & (grey <= 16) & ~exact).any()  # compression ringing below the ETL's threshold


def test_failures_follow_the_requested_rate_per_class_and_specks_appear(real_like):
    failed = {name: [] for name in ("Early", "Pro")}
    specks = 0
    for name in failed:
        for i in range(PER_CLASS):
            pixels, derived, exact = segmentation(real_like, name, i)
            failed[name].append((derived & exact).sum() < 0.5 * exact.sum())
            on_black = pixels.max(axis=2) > EtlParams().mask_threshold  # the file as shipped, before the clean-up
            specks += ndimage.label(on_black & ~ndimage.binary_dilation(exact, iterations=2))[1] > 0
            if failed[name][-1]:
                assert derived.mean() < 0.02  # near-empty, as in the real dataset's Pro segmentations
    assert not any(failed["Early"])
    assert abs(np.mean(failed["Pro"]) - PRO_FAILURES) < 0.2
    assert specks > PER_CLASS  # most segmentations carry a speck outside the cells


def test_originals_do_not_change_with_the_segmentation_option(real_like, tmp_path):
    exact = generate_dataset(tmp_path, {"Pro": 3}, image_size=SIZE, seed=0)
    for i in range(3):
        path = f"Original/Pro/Pro_{i:04d}.jpg"
        assert (exact / path).read_bytes() == (real_like / path).read_bytes()
    assert files(exact, "*.png") == [f"Segmented/Pro/Pro_{i:04d}.png" for i in range(3)]
    assert json.loads((exact / ".synthetic.json").read_text()) == {"seed": 0, "image_size": SIZE}


def test_a_changed_option_regenerates_and_removes_what_it_no_longer_makes(tmp_path):
    generate_dataset(tmp_path, 2, image_size=SIZE, seed=0, classes=("Pre",))
    generate_dataset(tmp_path, {"Pre": 1}, image_size=SIZE, seed=0, segmentation="false_colour")
    assert files(tmp_path) == [".synthetic.json", "Original/Pre/Pre_0000.jpg", "Segmented/Pre/Pre_0000.jpg"]
    assert json.loads((tmp_path / ".synthetic.json").read_text())["segmentation"] == "false_colour"


def test_per_class_counts(tmp_path):
    root = generate_dataset(tmp_path, {"Benign": 1, "Pro": 3}, image_size=SIZE, seed=0)
    assert files(root, "*.jpg") == ["Original/Benign/Benign_0000.jpg", *(f"Original/Pro/Pro_{i:04d}.jpg" for i in range(3))]


@pytest.mark.parametrize("options, message", [
    ({"images_per_class": {"Mature": 2}}, "images_per_class"),
    ({"images_per_class": {"Pro": 2}, "classes": ("Pro",)}, "not both"),
    ({"segmentation": "jpeg"}, "unknown segmentation"),
    ({"failed_segmentation": {"Pro": 0.5}}, "false_colour"),
    ({"segmentation": "false_colour", "failed_segmentation": {"Pro": 1.5}}, "shares 0..1"),
    ({"domain_shift": {"illumination": 0}}, "illumination > 0"),
])
def test_bad_options_are_refused(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        generate_dataset(tmp_path, **{"images_per_class": 1, "image_size": SIZE, **options})


def test_domain_shift_changes_colour_and_light_deterministically(tmp_path):
    shift = {"hue": 40, "illumination": 0.8, "blur": 1.5}
    plain = generate_dataset(tmp_path / "plain", 2, image_size=SIZE, seed=0)
    shifted = generate_dataset(tmp_path / "shifted", 2, image_size=SIZE, seed=0, domain_shift=shift)
    again = generate_dataset(tmp_path / "again", 2, image_size=SIZE, seed=0, domain_shift=DomainShift(**shift))
    assert files(plain) == files(shifted)
    for path in files(plain, "*.jpg"):
        assert (shifted / path).read_bytes() == (again / path).read_bytes()
        before = np.asarray(Image.open(plain / path), float).reshape(-1, 3).mean(0)
        after = np.asarray(Image.open(shifted / path), float).reshape(-1, 3).mean(0)
        assert after.mean() < before.mean() - 20 and np.abs((after / after.mean()) - (before / before.mean())).max() > 0.01
    for path in files(plain, "*.png"):
        assert (shifted / path).read_bytes() == (plain / path).read_bytes()  # the cells are where they were


def test_raw_folder_names_the_options_and_the_real_like_profile_passes_them(tmp_path, monkeypatch):
    monkeypatch.setenv("LEUKOLAB_WORKSPACE", str(tmp_path))
    etl = plan("real-like")["etl"].parameters
    assert etl["synthetic_options"]["failed_segmentation"] == {"Pro": 0.84}
    assert list(etl["images_per_class"]) == ["Benign", "Early", "Pre", "Pro"]
    small = {name: 1 for name in etl["images_per_class"]}
    options = {**etl["synthetic_options"], "image_size": SIZE}
    folder = raw_folder(None, small, 1, options)
    assert folder.name.startswith("synthetic-seed1-nBenign1-Early1-Pre1-Pro1-") and len(files(folder, "*.jpg")) == 8
    assert raw_folder(None, 1, 1).name == "synthetic-seed1-n1"
