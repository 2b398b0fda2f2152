"""Labels from CSV files, label maps and the two-class rule (no Spark)."""

import pickle

import pandas as pd
import pytest

from leukolab.data.etl.labels import (
    apply_label_map,
    check_label_map,
    class_refusal,
    checked_label_files,
    label_entries,
    load_csv_labels,
    require_two_classes,
)
from leukolab.data.etl.params import EtlParams
from leukolab.data.etl.raw_files import walk_files
from leukolab.data.etl.sources import Layout, detect_layout

CNMC_NAMES = {"0": "hem", "1": "all"}


def touch(root, *paths):
    for path in paths:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(b"x")
    return root


def write_csv(path, rows):
    """C-NMC's columns: an unnamed index, Patient_no, Patient_ID (the file name), labels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows, columns=["Patient_no", "Patient_ID", "labels"])
    frame.to_csv(path)  # writes the unnamed index column


@pytest.fixture
def cnmc(tmp_path):
    """images/ with labels.csv listing 2 more files than present, held_out_test/ with its own CSV, one unlisted image."""
    touch(tmp_path, "images/a.bmp", "images/b.bmp", "images/c.bmp", "images/stray.bmp",
          "held_out_test/test_images/1.bmp", "held_out_test/test_images/a.bmp")
    write_csv(tmp_path / "labels.csv", [(7, "a.bmp", 1), (7, "b.bmp", 1), (8, "c.bmp", 0), (9, "gone1.bmp", 0),
                                        (9, "gone2.bmp", 1)])
    write_csv(tmp_path / "held_out_test/test_labels.csv", [(20, "1.bmp", 0), (21, "a.bmp", 0)])
    return tmp_path


def test_csv_labels_columns_patients_nearest_file_and_missing(cnmc):
    labels = load_csv_labels(cnmc, walk_files(cnmc))
    assert labels.label_files == ("held_out_test/test_labels.csv", "labels.csv")
    assert labels.entries == {
        "images/a.bmp": ("1", "7"), "images/b.bmp": ("1", "7"), "images/c.bmp": ("0", "8"),
        "held_out_test/test_images/1.bmp": ("0", "20"),
        "held_out_test/test_images/a.bmp": ("0", "21"),  # its own folder's label file wins over the root's
    }
    root = labels.report["labels.csv"]
    assert root["columns"] == {"file": "Patient_ID", "label": "labels", "patient": "Patient_no"}
    assert (root["rows"], root["listed"], root["matched"], root["missing"]) == (5, 5, 3, 2)
    assert root["missing_sample"] == ["gone1.bmp", "gone2.bmp"]
    assert labels.report["held_out_test/test_labels.csv"]["missing"] == 0


def test_labels_csv_layout_locates_from_a_pickled_copy(cnmc):
    layout = Layout("labels_csv", label_names=CNMC_NAMES, labels=load_csv_labels(cnmc, walk_files(cnmc)))
    layout = pickle.loads(pickle.dumps(layout))  # as Spark ships it to workers
    blast = layout.locate("images/a.bmp")
    assert (blast.role, blast.class_name, blast.stem, blast.patient_id) == ("original", "all", "a", "7")
    assert layout.locate("held_out_test/test_images/1.bmp").class_name == "hem"
    assert layout.locate("labels.csv").role == "label_file"
    stray = layout.locate("images/stray.bmp")
    assert (stray.role, stray.reason) == ("ignored", "unknown_class") and "labels.csv" in stray.message
    with pytest.raises(ValueError, match="needs its labels"):
        Layout("labels_csv").locate("images/a.bmp")


def test_duplicate_names_conflicting_and_empty_labels(tmp_path):
    touch(tmp_path, "x/a.png", "y/a.png", "b.png", "c.png", "d.png")
    (tmp_path / "labels.csv").write_text("file,class\na.png,n\nb.png,n\nb.png,n\nc.png,n\nc.png,b\nsub/d.png,\n")
    labels = load_csv_labels(tmp_path, walk_files(tmp_path))
    assert labels.entries == {"b.png": ("n", None)}  # listed twice with one label: fine
    assert labels.refused["x/a.png"][0] == labels.refused["y/a.png"][0] == "ambiguous_name"
    assert "2 files are named 'a.png'" in labels.refused["x/a.png"][1]
    assert labels.refused["c.png"] == ("conflicting_labels", "['labels.csv'] give 'c.png' the labels ['b', 'n']")
    assert labels.refused["d.png"][0] == "unknown_class"  # a folder in the CSV value is ignored; no label given
    assert labels.report["labels.csv"]["columns"] == {"file": "file", "label": "class", "patient": None}


def test_explicit_columns_and_clear_errors(tmp_path):
    touch(tmp_path, "img/a.jpg", "img/b.jpg")
    (tmp_path / "meta.csv").write_text("name,y,who\na.jpg,1,p1\nb.jpg,0,p2\n")
    files = walk_files(tmp_path)
    labels = load_csv_labels(tmp_path, files, ["meta.csv"], file_column="name", label_column="y", patient_column="who")
    assert labels.entries == {"img/a.jpg": ("1", "p1"), "img/b.jpg": ("0", "p2")}
    with pytest.raises(ValueError, match="no label column .* set label_column"):
        load_csv_labels(tmp_path, files, ["meta.csv"])
    with pytest.raises(ValueError, match="no column 'file'"):
        load_csv_labels(tmp_path, files, ["meta.csv"], file_column="file", label_column="y")
    with pytest.raises(ValueError, match="no column 'diagnosis' \\(label_column\\)"):
        load_csv_labels(tmp_path, files, ["meta.csv"], label_column="diagnosis")
    with pytest.raises(FileNotFoundError, match="other.csv not found"):
        load_csv_labels(tmp_path, files, ["other.csv"], label_column="y")
    (tmp_path / "notes.csv").write_text("text\nnothing here\n")
    with pytest.raises(ValueError, match="names an image file: set file_column"):
        load_csv_labels(tmp_path, files, ["notes.csv"])
    with pytest.raises(ValueError, match="inside the raw folder"):
        checked_label_files(["../labels.csv"])
    with pytest.raises(ValueError, match="hidden"):
        checked_label_files([".labels.csv"])
    assert checked_label_files("labels.csv") == ["labels.csv"]


def test_no_label_file_found(tmp_path):
    touch(tmp_path, "a/x.jpg")
    (tmp_path / "notes.csv").write_text("text\nhello\n")
    with pytest.raises(ValueError, match="no CSV file .* set labels_files"):
        load_csv_labels(tmp_path, walk_files(tmp_path))


def test_detection_prefers_a_root_csv_naming_the_images(cnmc, tmp_path_factory):
    assert detect_layout(cnmc) == "labels_csv"  # not a one-class imagefolder named images
    folders = touch(tmp_path_factory.mktemp("folders"), "Blast/a.jpg", "Normal/b.jpg")
    (folders / "summary.csv").write_text("class,count\nBlast,1\nNormal,1\n")
    assert detect_layout(folders) == "imagefolder"  # a CSV that names no image is not a label file
    (folders / "Blast" / "labels.csv").write_text("file,label\na.jpg,1\nb.jpg,0\n")
    assert detect_layout(folders) == "imagefolder"  # label files below the root alone do not decide


def test_label_map_checks_refusals_and_counts():
    aria = {"Benign": "normal", "Early": "blast", "Pre": "blast", "Pro": "blast"}
    check_label_map(aria, ["normal", "blast"])
    with pytest.raises(ValueError, match="classes \\['Pro'\\] are not labels of label_map"):
        check_label_map(aria, ["Pro"])
    with pytest.raises(ValueError, match="map text to text"):
        check_label_map({"0": 1}, None)
    with pytest.raises(ValueError, match="non-empty dict"):
        check_label_map({}, None)
    assert class_refusal("Pre", aria, ["blast"]) is None
    assert class_refusal("Unknown", aria, None) == f"class 'Unknown' is not in label_map {aria}"
    assert class_refusal("Benign", aria, ["blast"]) == "class 'normal' is not one of ['blast']"
    assert class_refusal("x", None, None) is None

    originals = pd.DataFrame({"class_name": ["Early", "Pre", "Pre", "Benign"]})
    mapped = apply_label_map(originals, aria)
    assert list(mapped["class_name"]) == ["blast", "blast", "blast", "normal"]
    assert list(mapped["source_class"]) == ["Early", "Pre", "Pre", "Benign"]
    assert label_entries(None, mapped, aria)["label_map"] == {
        "map": aria, "counts": {"Benign": {"normal": 1}, "Early": {"blast": 1}, "Pre": {"blast": 2}}}
    assert apply_label_map(originals, None) is originals and label_entries(None, originals, None) == {}


def test_etl_params_take_the_new_options():
    params = EtlParams(layout="labels_csv", labels_files="labels.csv", label_names=CNMC_NAMES,
                       label_map={"hem": "normal", "all": "blast"}, classes=["normal", "blast"])
    assert params.labels_files == ["labels.csv"]
    with pytest.raises(ValueError, match="not labels of label_map"):
        EtlParams(label_map={"hem": "normal"}, classes=["hem"])


def test_one_class_datasets_are_refused_with_advice():
    require_two_classes(["a", "b", "a"], "imagefolder", True, [])
    with pytest.raises(ValueError) as refused:
        require_two_classes(["images"] * 52, "imagefolder", True, ["labels.csv", "images/a.bmp"])
    message = str(refused.value)
    assert "1 class(es) after curation (['images'])" in message and "layout 'imagefolder' (detected)" in message
    assert "Set layout=" in message and "layout='labels_csv'" in message and "['labels.csv']" in message
    with pytest.raises(ValueError, match="label_map .* maps the classes") as refused:
        require_two_classes(["blast"], "original_segmented", False, [], {"Pre": "blast"})
    assert "(chosen)" in str(refused.value) and "CSV files" not in str(refused.value)


def test_an_acquisition_column_gives_each_image_its_key_or_is_refused_clearly(tmp_path):
    touch(tmp_path, "img/a.jpg", "img/b.jpg", "img/c.jpg")
    (tmp_path / "meta.csv").write_text("file,label,taken\na.jpg,1,20\nb.jpg,0,3.5\nc.jpg,0, 7\ngone.jpg,0,9\n")
    files = walk_files(tmp_path)
    labels = load_csv_labels(tmp_path, files, acquisition_column="taken")
    assert labels.acquisition_keys == {"img/a.jpg": 20.0, "img/b.jpg": 3.5, "img/c.jpg": 7.0}
    assert labels.report["meta.csv"]["columns"] == {"file": "file", "label": "label", "patient": None, "acquisition": "taken"}
    assert load_csv_labels(tmp_path, files).acquisition_keys == {}  # no column asked for: the file-name number
    with pytest.raises(ValueError, match="meta.csv has no column 'session' \\(acquisition_column\\)"):
        load_csv_labels(tmp_path, files, acquisition_column="session")
    (tmp_path / "more.csv").write_text("file,label,taken\na.jpg,1,21\n")
    with pytest.raises(ValueError, match="give 'a.jpg' different acquisition keys \\[20.0, 21.0\\] in column 'taken'"):
        load_csv_labels(tmp_path, walk_files(tmp_path), acquisition_column="taken")
    (tmp_path / "more.csv").unlink()
    (tmp_path / "meta.csv").write_text("file,label,taken\na.jpg,1,20\nb.jpg,0,morning\nc.jpg,0,\n,,n/a\n")
    with pytest.raises(ValueError, match="meta.csv: acquisition_column 'taken' must hold a number for every image; "
                                         "2 rows do not \\('b.jpg': 'morning', 'c.jpg': ''\\)"):
        load_csv_labels(tmp_path, files, acquisition_column="taken")
