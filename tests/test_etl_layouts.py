"""The Spark ETL on every other raw layout (real local[2]): masks from JPEG segmentations audited, an image folder
of every format, file names that carry the label (ALL-IDB2), patients that never straddle splits (C-NMC 2019), and a
labels CSV; each with the bad files planted beside good ones."""

import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from raw_folders import plant_bad_files, reasons, write
from sample_images import encode, tiff16
from PIL import Image

from leukolab.data.etl.job import run_etl
from leukolab.data.etl.params import EtlParams
from leukolab.data.reading.dataset import load_manifest, load_split

pytestmark = pytest.mark.integration


# ---------------------------------------------------------------- masks from JPEG segmentations, audited


def disc(size, centre, radius):
    yy, xx = np.mgrid[:size, :size]
    return np.hypot(yy - centre[0], xx - centre[1]) <= radius


@pytest.fixture(scope="module")
def segmented(tmp_path_factory):
    """Original/ smears with purple nuclei and Segmented/ JPEGs of the cells in false colour on black (ringing,
    specks). Early: 5 good segmentations and an image without one; Pro: 2 good, 3 near-empty, 1 beside the cells."""
    root = tmp_path_factory.mktemp("raw") / "segmented"
    rng = np.random.default_rng(7)
    expected = {}
    for name, kinds in (("Early", ["good"] * 5 + [None]), ("Pro", ["good"] * 2 + ["empty"] * 3 + ["misses"])):
        for i, kind in enumerate(kinds):
            centres = [(int(rng.integers(18, 40)), int(rng.integers(18, 78))), (int(rng.integers(58, 78)), int(rng.integers(18, 78)))]
            smear = np.full((96, 96, 3), (238, 226, 222), np.uint8)
            smear[disc(96, (int(rng.integers(40, 56)), int(rng.integers(10, 86))), 7)] = (226, 158, 160)
            cells = disc(96, centres[0], 13) | disc(96, centres[1], 11)
            smear[cells] = (178, 182, 226)
            smear[disc(96, centres[0], 8) | disc(96, centres[1], 7)] = (92, 44, 132)
            write(root / "Original" / name / f"{name}_{i}.jpg", encode(Image.fromarray(smear), "JPEG", quality=92))
            if kind is None:
                continue
            segmentation = np.zeros((96, 96, 3), np.uint8)
            where = {"good": cells, "empty": disc(96, (5, 5), 1), "misses": np.roll(cells, 48, axis=1) & ~cells}[kind]
            segmentation[where] = (210, 80, 200)
            segmentation[90:92, 60:62] = 255  # a speck
            write(root / "Segmented" / name / f"{name}_{i}.jpg", encode(Image.fromarray(segmentation), "JPEG", quality=75))
            expected[f"Original/{name}/{name}_{i}.jpg"] = kind
    return root, expected


def test_implausible_masks_are_dropped_with_their_reason_and_counted_per_class(spark, segmented, tmp_path):
    root, expected = segmented
    dataset_dir = run_etl(spark, root, tmp_path, EtlParams(image_size=48, seed=2))
    manifest, table = load_manifest(dataset_dir), load_split(dataset_dir).set_index("source_path")
    assert manifest["files"] == {"in": 23, "out": 23, "quarantined": 0}  # an implausible mask file is out, not a target
    assert len(table) == 12 and table["image"].notna().all()
    status = {"good": "ok", "empty": "implausible", "misses": "implausible"}
    reason = {"empty": "too_small", "misses": "misses_cells"}
    for path, kind in expected.items():
        row = table.loc[path]
        assert (row["mask_status"], row["mask_reason"]) == (status[kind], reason.get(kind)), path
        assert (row["mask"] is not None) == (kind == "good") and 0 <= row["mask_fraction"] <= 1
    good = table[table["mask_status"] == "ok"]
    assert good["mask_fraction"].between(0.05, 0.15).all() and (good["mask_fraction"] > good["mask_raw_fraction"] - 0.01).all()
    no_mask = table.loc["Original/Early/Early_5.jpg"]
    assert no_mask["mask"] is None and no_mask["mask_status"] is None and np.isnan(no_mask["mask_fraction"])
    masks = manifest["masks"]
    assert {name: (c["ok"], c["implausible"], c["without_mask"]) for name, c in masks["classes"].items()} == {
        "Early": (5, 0, 1), "Pro": (2, 4, 0)}
    assert masks["classes"]["Pro"]["reasons"] == {"misses_cells": 1, "too_small": 3}
    assert {m["source_path"] for m in masks["implausible"]} == {p for p, k in expected.items() if k in reason}
    assert "SHORTCUT" in masks["shortcut_warning"] and "33% of Pro" in masks["shortcut_warning"]
    assert masks["parameters"]["mask_threshold"] == 48 and manifest["parameters"]["mask_min_agreement"] == 0.5

    from leukolab.data.etl.data_report import build_report, shortcut_banner

    report = build_report(dataset_dir)
    assert report.tables["mask_coverage"].loc["Pro", "implausible"] == 4 and len(report.tables["masks_implausible"]) == 4
    assert shortcut_banner(manifest).count("SHORTCUT") == 1


# ---------------------------------------------------------------- imagefolder: formats, contrast


@pytest.fixture(scope="module")
def imagefolder(planted, tmp_path_factory):
    """<class>/* in every format the ETL reads, and a full-range gradient."""
    root = tmp_path_factory.mktemp("raw") / "imagefolder"
    smears = [sorted((planted / "Original" / name).glob(f"{name}_*.jpg")) for name in ("Pro", "Pre", "Benign")]
    images = [Image.open(path).convert("RGB") for path in sum(smears, [])]  # 30 different smears
    for name, batch in (("Blast", images[:10]), ("Normal", images[10:20])):
        formats = [("a.JPG", "JPEG", {}), ("b.Jpg", "JPEG", {}), ("c.jpeg", "JPEG", {}), ("d.bmp", "BMP", {}),
                   ("e.tif", "TIFF", {}), ("f.png", "PNG", {}), ("g.PNG", "PNG", {}), ("h.tiff", "TIFF", {}),
                   ("i.jpg", "JPEG", {}), ("j.jpg", "JPEG", {})]
        for image, (file_name, format, options) in zip(batch, formats):
            write(root / name / f"{name}_{file_name}", encode(image, format, **options))
    write(root / "Blast" / "grey.png", encode(images[20].convert("L"), "PNG"))
    write(root / "Blast" / "palette.png", encode(images[21].convert("P"), "PNG"))
    write(root / "Normal" / "cmyk.jpg", encode(images[22].convert("CMYK"), "JPEG"))
    write(root / "Normal" / "deep.tif", tiff16())
    write(root / "Normal" / "rgba.png", encode(images[23].convert("RGBA"), "PNG"))
    ramp = np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))
    write(root / "Normal" / "gradient.png", encode(Image.fromarray(np.stack([ramp, ramp.T, 255 - ramp], -1)), "PNG"))
    shutil.copy(root / "Blast" / "Blast_a.JPG", root / "Blast" / "copy.jpg")
    bad = plant_bad_files(root, lambda c, stem, suffix: root / ("Blast", "Normal")[c] / f"{stem}{suffix}", root / "Blast" / "Blast_b.Jpg")
    return root, bad


def test_imagefolder_reads_every_format_and_extension_case(spark, imagefolder, tmp_path):
    imagefolder, bad = imagefolder
    dataset_dir = run_etl(spark, imagefolder, tmp_path, EtlParams(image_size=64, seed=1, max_bad_fraction=0.3))
    manifest, table = load_manifest(dataset_dir), load_split(dataset_dir)
    assert manifest["layout"] == "imagefolder" and manifest["classes"] == ["Blast", "Normal"]
    assert manifest["files"] == {"in": 32, "out": 26, "quarantined": 6} and reasons(manifest) == bad
    assert ["Blast/Blast_a.JPG", "Blast/copy.jpg"] in manifest["duplicate_groups"]
    assert not manifest["has_masks"] and table["mask"].isna().all()
    assert all(np.asarray(Image.open(io.BytesIO(b))).shape == (64, 64, 3) for b in table["image"])

    # The seed's transform.py normalises, then save_image clamps to [0, 1]: most contrast is lost.
    # The ETL stores the image as it is (mean and std go to the manifest), so the gradient survives bit for bit.
    source = np.asarray(Image.open(imagefolder / "Normal" / "gradient.png"))
    stored = np.asarray(Image.open(io.BytesIO(table.set_index("source_path").loc["Normal/gradient.png", "image"])))
    assert np.array_equal(stored, source)
    normalised = (source / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    seed_saved = np.clip(normalised * 255 + 0.5, 0, 255).astype(np.uint8)  # torchvision.utils.save_image
    assert (np.isin(seed_saved, [0, 255])).mean() > 0.4 and not np.array_equal(seed_saved, source)


# ---------------------------------------------------------------- label_in_name (ALL-IDB2) and cnmc (C-NMC 2019)


@pytest.fixture(scope="module")
def all_idb2(planted, tmp_path_factory):
    root = tmp_path_factory.mktemp("raw") / "ALL_IDB2"
    smears = sorted((planted / "Original").glob("*/[A-Z]*_000[0-7].jpg"))[:24]
    for i, path in enumerate(smears, start=1):
        write(root / "img" / f"Im{i:03d}_{i % 2}.tif", encode(Image.open(path), "TIFF"))
    write(root / "img" / "Im950_0.tif", tiff16())
    write(root / "img" / "readme.txt", b"ALL-IDB2: 260 images, label in the name")
    bad = plant_bad_files(root, lambda c, stem, suffix: root / "img" / f"{stem}_{'10'[c]}{suffix}", root / "img" / "Im001_1.tif")
    return root, bad | {"img/readme.txt": "unknown_class"}


def test_label_in_name_is_detected_and_names_the_classes(spark, all_idb2, tmp_path):
    all_idb2, bad = all_idb2
    params = EtlParams(image_size=32, min_side=16, max_bad_fraction=0.3)
    dataset_dir = run_etl(spark, all_idb2, tmp_path, params)
    manifest, table = load_manifest(dataset_dir), load_split(dataset_dir)
    assert manifest["layout"] == "label_in_name" and manifest["classes"] == ["Blast", "Normal"]
    assert manifest["files"] == {"in": 31, "out": 24, "quarantined": 7} and reasons(manifest) == bad
    readme = next(q for q in manifest["quarantine"] if q["source_path"] == "img/readme.txt")
    assert readme["message"] == "the file name does not match label_pattern '_(?P<label>[01])\\\\.'"
    labels = table.set_index("source_path")["class_name"]
    assert labels["img/Im003_1.tif"] == "Blast" and labels["img/Im002_0.tif"] == "Normal"

    # a new input file makes a new dataset
    changed = tmp_path / "changed"
    shutil.copytree(all_idb2, changed)
    shutil.copy(changed / "img" / "Im003_1.tif", changed / "img" / "Im099_1.tif")
    again = run_etl(spark, changed, tmp_path, params, dataset_name="ALL_IDB2")
    assert again.parent == dataset_dir.parent and again.name != dataset_dir.name


@pytest.fixture(scope="module")
def cnmc(planted, tmp_path_factory):
    """C-NMC 2019 style: fold_k/{all,hem}/UID_<patient>_<image>_<cell>_<class>.bmp, several images per patient."""
    root = tmp_path_factory.mktemp("raw") / "C-NMC"
    smears = sorted((planted / "Original").glob("*/[A-Z]*_00[0-9][0-9].jpg"))  # 40
    patients = [("all", str(p)) for p in range(1, 9)] + [("hem", f"H{p}") for p in range(1, 9)]
    for i, path in enumerate(smears):
        folder, patient = patients[i % len(patients)]
        write(root / "training_data" / f"fold_{i % 3}" / folder / f"UID_{patient}_{i}_1_{folder}.bmp",
              encode(Image.open(path), "BMP"))
    write(root / "test_data" / "1.bmp", (root / "training_data" / "fold_1" / "all" / "UID_2_1_1_all.bmp").read_bytes())
    folders = [("all", "1"), ("hem", "H1")]
    bad = plant_bad_files(root, lambda c, stem, suffix: root / "training_data" / "fold_0" / folders[c][0]
                          / f"UID_{folders[c][1]}_{stem}_1_{folders[c][0]}{suffix}",
                          root / "training_data" / "fold_0" / "all" / "UID_1_0_1_all.bmp")
    return root, bad | {"test_data/1.bmp": "unknown_class"}


def test_cnmc_patients_never_straddle_splits(spark, cnmc, tmp_path):
    cnmc, bad = cnmc
    dataset_dir = run_etl(spark, cnmc, tmp_path, EtlParams(image_size=32, seed=4, max_bad_fraction=0.3))
    manifest, table = load_manifest(dataset_dir), load_split(dataset_dir)
    assert manifest["layout"] == "cnmc" and manifest["classes"] == ["all", "hem"]
    assert manifest["files"] == {"in": 46, "out": 39, "quarantined": 7} and reasons(manifest) == bad
    assert table["patient_id"].notna().all() and table["patient_id"].nunique() == 16
    assert (table.groupby("patient_id")["split"].nunique() == 1).all()
    assert (table.groupby("patient_id")["group_id"].nunique() == 1).all()
    assert sum(manifest["patients"].values()) == 16 and set(manifest["patients"]) == {"train", "val", "test"}
    assert manifest["leakage"]["grouped_patient"] == 0 < manifest["leakage"]["naive_patient"]
    assert json.loads((dataset_dir / "manifest.json").read_text())["parameters"]["patient_pattern"] is None


@pytest.fixture(scope="module")
def cnmc_csv(tmp_path_factory):
    """C-NMC 2019 as distributed: flat images/ with labels.csv and held_out_test/ with its own CSV; both list files that
    are not there, and one image is listed nowhere."""
    root = tmp_path_factory.mktemp("raw") / "C-NMC-subset"
    rng = np.random.default_rng(5)
    noise = lambda: Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))  # noqa: E731
    train = [(f"UID_{i}_1_1_{'all' if i % 2 else 'hem'}.bmp", i % 2, 3 if i < 2 else 10 + i) for i in range(8)]
    test = [(f"{i}.png", i % 2, 30 + i) for i in range(4)]
    for name, _, _ in train:
        write(root / "images" / name, encode(noise(), "BMP"))
    for name, _, _ in test:
        write(root / "held_out_test" / "test_images" / name, encode(noise(), "PNG"))
    write(root / "images" / "unlisted.png", encode(noise(), "PNG"))
    listed = [(patient, name, label) for name, label, patient in train] + [(90, f"gone_{i}.bmp", i % 2) for i in range(10)]
    pd.DataFrame(listed, columns=["Patient_no", "Patient_ID", "labels"]).to_csv(root / "labels.csv")
    held_out = [(patient, name, label) for name, label, patient in test] + [(91, "gone.png", 0)]
    pd.DataFrame(held_out, columns=["Patient_no", "Patient_ID", "labels"]).to_csv(root / "held_out_test" / "test_labels.csv")
    return root


def test_labels_csv_classes_missing_files_and_accounting(spark, cnmc_csv, tmp_path):
    params = dict(image_size=16, min_side=16, seed=2, label_names={"0": "hem", "1": "all"})
    dataset_dir = run_etl(spark, cnmc_csv, tmp_path, EtlParams(**params))
    manifest, table = load_manifest(dataset_dir), load_split(dataset_dir)
    assert manifest["layout"] == "labels_csv" and manifest["classes"] == ["all", "hem"]
    assert manifest["files"] == {"in": 15, "out": 12, "quarantined": 1, "label_files": 2}
    assert reasons(manifest) == {"images/unlisted.png": "unknown_class"}
    assert sum(sum(per_class.values()) for per_class in manifest["counts"].values()) == 12
    assert table.groupby("class_name").size().to_dict() == {"all": 6, "hem": 6}
    labels = manifest["labels"]
    assert labels["missing"] == 11 and labels["missing_sample"][:2] == ["gone.png", "gone_0.bmp"]
    assert labels["files"]["labels.csv"]["columns"] == {"file": "Patient_ID", "label": "labels", "patient": "Patient_no"}
    rows = table.set_index("source_path")
    assert rows.loc["held_out_test/test_images/1.png", ["class_name", "patient_id"]].tolist() == ["all", "31"]
    assert rows.loc["images/UID_0_1_1_hem.bmp", "split"] == rows.loc["images/UID_1_1_1_all.bmp", "split"]  # patient 3

    relabelled = tmp_path / "relabelled"  # the CSV is input: a changed label is a new dataset
    shutil.copytree(cnmc_csv, relabelled)
    csv = pd.read_csv(relabelled / "labels.csv", index_col=0)
    csv.loc[csv["Patient_ID"] == "UID_2_1_1_hem.bmp", "labels"] = 1
    csv.to_csv(relabelled / "labels.csv")
    mapped = run_etl(spark, relabelled, tmp_path, EtlParams(**params, label_map={"hem": "normal", "all": "blast"}),
                     dataset_name="C-NMC-subset")
    assert mapped.parent == dataset_dir.parent and mapped.name != dataset_dir.name
    manifest = load_manifest(mapped)
    assert manifest["classes"] == ["blast", "normal"]
    assert manifest["label_map"]["counts"] == {"all": {"blast": 7}, "hem": {"normal": 5}}

    with pytest.raises(ValueError, match="1 class\\(es\\) after curation \\(\\['normal'\\]\\) with layout 'labels_csv'"):
        run_etl(spark, cnmc_csv, tmp_path / "one", EtlParams(**params, label_map={"hem": "normal"}, max_bad_fraction=0.9))
    assert not [p for p in (tmp_path / "one").rglob("*") if p.is_file()]


def test_labels_csv_acquisition_column_orders_the_blocks_and_is_refused_clearly(spark, cnmc_csv, tmp_path):
    """``acquisition_column`` orders each class by the label files' numbers (here Patient_no), not by the last number
    in the file name (which would put ``1.png`` first); the manifest names the key. A column of text, or the option
    on a layout without label files, is refused before any work."""
    params = dict(image_size=16, min_side=16, seed=2, label_names={"0": "hem", "1": "all"}, acquisition_blocks=3,
                  acquisition_embargo=0)
    dataset_dir = run_etl(spark, cnmc_csv, tmp_path, EtlParams(**params, acquisition_column="Patient_no"))
    manifest, table = load_manifest(dataset_dir), load_split(dataset_dir)
    assert manifest["acquisition"]["available"] and manifest["acquisition"]["key"] == "column 'Patient_no' of the label files"
    assert manifest["labels"]["files"]["labels.csv"]["columns"]["acquisition"] == "Patient_no"
    blasts = table[table["class_name"] == "all"].sort_values("acquisition_rank")["source_path"].tolist()
    assert blasts == [f"images/UID_{i}_1_1_all.bmp" for i in (1, 3, 5, 7)] + [
        f"held_out_test/test_images/{i}.png" for i in (1, 3)]  # Patient_no 3, 13, 15, 17, 31, 33
    assert table.groupby("class_name")["acquisition_block"].nunique().to_dict() == {"all": 3, "hem": 3}
    with pytest.raises(ValueError, match="acquisition_column 'Patient_ID' must hold a number for every image"):
        run_etl(spark, cnmc_csv, tmp_path / "text", EtlParams(**params, acquisition_column="Patient_ID"))
    folders = tmp_path / "folders"
    for name in ("Benign/a_1.png", "Pre/b_2.png"):
        write(folders / name, encode(Image.new("RGB", (24, 24)), "PNG"))
    with pytest.raises(ValueError, match="acquisition_column 'session' names a column of the labels_csv layout's label "
                                         "files, but this dataset's layout is 'imagefolder'"):
        run_etl(spark, folders, tmp_path / "out", EtlParams(image_size=16, acquisition_column="session"))
