"""Raw layouts: what each file is, from its path alone, and which layout a folder has."""

import pytest

from leukolab.data.etl.raw_files import LAYOUTS, is_hidden, walk_files
from leukolab.data.etl.sources import Layout, detect_layout


def touch(root, *paths):
    for path in paths:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(b"x")
    return root


def test_original_segmented_pairs_by_class_and_stem():
    layout = Layout("original_segmented")
    original = layout.locate("Original/Pre/WBC-Malignant-Pre-001.jpg")
    mask = layout.locate("Segmented/Pre/WBC-Malignant-Pre-001.png")
    assert (original.role, original.class_name, original.stem) == ("original", "Pre", "WBC-Malignant-Pre-001")
    assert (mask.role, mask.class_name, mask.stem) == ("mask", "Pre", "WBC-Malignant-Pre-001")
    stray = layout.locate("Original/notes.jpg")
    assert stray.role == "ignored" and stray.reason == "unexpected_location"


def test_imagefolder_takes_the_folder_as_class():
    layout = Layout("imagefolder")
    assert layout.locate("Benign/a.JPG").class_name == "Benign"
    assert layout.locate("deep/er/a.jpg").reason == "unexpected_location"
    assert layout.locate("top.jpg").role == "ignored"


def test_label_in_name_reads_all_idb2_names_anywhere():
    layout = Layout("label_in_name")
    blast, normal = layout.locate("img/Im001_1.tif"), layout.locate("Im131_0.TIF")
    assert (blast.role, blast.class_name, blast.stem) == ("original", "Blast", "Im001_1")
    assert normal.class_name == "Normal"
    unlabelled = layout.locate("img/readme.txt")
    assert unlabelled.role == "ignored" and unlabelled.reason == "unknown_class" and "label_pattern" in unlabelled.message


def test_label_in_name_takes_any_pattern_names_and_patients():
    layout = Layout("label_in_name", label_pattern=r"^(?P<patient>P\d+)-(?P<label>[a-z]+)-", label_names={"b": "blast"})
    source = layout.locate("x/P07-b-0003.png")
    assert (source.class_name, source.patient_id) == ("blast", "P07")
    assert layout.locate("P08-n-0001.png").class_name == "n"  # unnamed labels keep their text


def test_cnmc_class_from_folder_patient_from_name():
    layout = Layout("cnmc")
    blast = layout.locate("training_data/fold_0/all/UID_11_10_1_all.bmp")
    healthy = layout.locate("training_data/fold_2/HEM/UID_H10_43_1_hem.bmp")
    assert (blast.class_name, blast.patient_id) == ("all", "11")
    assert (healthy.class_name, healthy.patient_id) == ("hem", "H10")
    assert layout.locate("fold_0/all/odd-name.bmp").patient_id is None
    assert layout.locate("test_data/1.bmp").reason == "unknown_class"


def test_patient_pattern_works_in_any_layout():
    layout = Layout("imagefolder", patient_pattern=r"^(?P<patient>[A-Z]+\d+)_")
    assert layout.locate("Pro/AB12_003.jpg").patient_id == "AB12"
    assert layout.locate("Pro/003.jpg").patient_id is None


def test_bad_layout_options_are_refused_early():
    with pytest.raises(ValueError, match="unknown layout"):
        Layout("folders")
    with pytest.raises(ValueError, match="named group"):
        Layout("label_in_name", label_pattern=r"_(\d)\.")
    with pytest.raises(ValueError, match="not a regular expression"):
        Layout("cnmc", patient_pattern="(")


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (["Original/Pre/a.jpg", "Segmented/Pre/a.png"], "original_segmented"),
        (["Benign/a.jpg", "Pro/b.PNG"], "imagefolder"),
        (["Benign/a.jpg"], "imagefolder"),
        (["img/Im001_1.tif", "img/Im002_0.tif", "img/Im003_1.tif"], "label_in_name"),
        (["Im001_1.jpg", "Im002_0.jpg"], "label_in_name"),
        (["C-NMC/fold_0/all/UID_1_1_1_all.bmp", "C-NMC/fold_0/hem/UID_H1_1_1_hem.bmp"], "cnmc"),
    ],
)
def test_detect_layout(tmp_path, files, expected):
    assert detect_layout(touch(tmp_path, *files)) == expected
    assert expected in LAYOUTS


def test_undetectable_layout_asks_for_the_parameter(tmp_path):
    with pytest.raises(ValueError, match="pass layout="):
        detect_layout(touch(tmp_path, "a.jpg", "b.jpg"))
    with pytest.raises(FileNotFoundError):
        detect_layout(tmp_path / "missing")


def test_walk_files_skips_hidden_and_sorts(tmp_path):
    touch(tmp_path, "b/x.jpg", "a.jpg", ".DS_Store", ".ipynb_checkpoints/a.jpg", "b/.hidden.png")
    assert walk_files(tmp_path) == ["a.jpg", "b/x.jpg"]
    assert is_hidden(".ipynb_checkpoints/a.jpg") and not is_hidden("b/x.jpg")
