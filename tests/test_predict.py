"""``leukolab predict`` on the registered test model: a folder of synthetic smears with a file that is not an image,
one too small and a nested folder; CSV rows, reasons, heatmaps, the referral decision, and the Spark path."""

from __future__ import annotations

import io

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from leukolab.cli import main
from leukolab.data.synthetic.folder import generate_dataset
from leukolab.scoring.predict import predict_paths

CLASSES = ["Benign", "Early", "Pre", "Pro"]


@pytest.fixture(scope="module")
def smears(tmp_path_factory):
    """A folder of 4 synthetic smears (and their 4 mask PNGs), ``notes.jpg`` (text), ``tiny.png`` (16 x 16), a smear
    in ``nested/deeper/``, a hidden file and a ``.txt`` (both skipped); beside it ``readme.txt``, given alone."""
    root = generate_dataset(tmp_path_factory.mktemp("smears") / "folder", images_per_class=1, image_size=64, seed=3)
    (root / "notes.jpg").write_text("not a smear")
    Image.new("RGB", (16, 16), (200, 100, 150)).save(root / "tiny.png")
    (root / "nested" / "deeper").mkdir(parents=True)
    Image.open(root / "Original" / "Pre" / "Pre_0000.jpg").rotate(90).save(root / "nested" / "deeper" / "turned.png")
    (root / ".hidden.jpg").write_bytes(b"")
    (root / "list.txt").write_text("skipped in folders")
    (root.parent / "readme.txt").write_text("given alone, so scored")
    return root


def read_csv(path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


def test_predict_writes_a_row_per_file_with_reasons_probabilities_and_heatmaps(model_env, smears, tmp_path, capsys):
    out, heatmaps, sheet = tmp_path / "scores.csv", tmp_path / "heatmaps", tmp_path / "sheet.png"
    code = main(["predict", str(smears), str(smears.parent / "readme.txt"), "--out", str(out), "--batch-size", "3",
                 "--explain", str(heatmaps), "--contact-sheet", str(sheet)])
    assert code == 0, capsys.readouterr().err
    rows = read_csv(out).set_index("path")
    images = sorted(str(p) for p in smears.rglob("*") if p.suffix in (".jpg", ".png") and not p.name.startswith("."))
    assert sorted(rows.index) == sorted([*images, str(smears.parent / "readme.txt")])
    assert list(rows.columns) == ["predicted_class", "confidence", *(f"p_{c}" for c in CLASSES), "ood_score",
                                  "mask_fraction", "decision", "reason", "heatmap"]
    reasons = rows["reason"].dropna().to_dict()
    assert reasons == {str(smears / "notes.jpg"): "not_an_image", str(smears / "tiny.png"): "too_small",
                       str(smears.parent / "readme.txt"): "not_an_image"}
    refused = rows.loc[list(reasons)]
    assert refused.drop(columns="reason").isna().all().all()

    usable = rows[rows["decision"].notna()]
    assert len(usable) == 9 and str(smears / "nested" / "deeper" / "turned.png") in usable.index
    probabilities = usable[[f"p_{c}" for c in CLASSES]].to_numpy()
    np.testing.assert_allclose(probabilities.sum(1), 1, atol=1e-5)
    assert (usable["predicted_class"] == [CLASSES[i] for i in probabilities.argmax(1)]).all()
    np.testing.assert_allclose(usable["confidence"], probabilities.max(1), atol=1e-6)
    assert set(usable["decision"]) == {"accept"}  # the test model's version has no referral threshold
    assert usable["reason"].isna().all() and usable["ood_score"].isna().all()  # nor an out-of-distribution check

    served = mlflow.pyfunc.load_model(model_env["uri"]).predict(
        pd.DataFrame({"image": [open(path, "rb").read() for path in usable.index]}))
    assert list(served["predicted_class"]) == list(usable["predicted_class"])
    np.testing.assert_allclose(served[[f"prob_{c}" for c in CLASSES]].to_numpy(), probabilities, atol=1e-5)

    assert usable["heatmap"].map(lambda p: Image.open(p).format).eq("PNG").all()
    assert (heatmaps / "nested" / "deeper" / "turned.png.heatmap.png").is_file()
    assert len(list(heatmaps.rglob("*.png"))) == 9
    assert Image.open(sheet).format == "PNG"
    assert "12 files, 9 scored; not used: 2 not_an_image, 1 too_small" in capsys.readouterr().err


def test_predict_writes_csv_to_stdout_and_refers_below_the_versions_threshold(referring_model, smears, capsys):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LEUKOLAB_WORKSPACE", str(referring_model["workspace"]))
        patch.setenv("MLFLOW_TRACKING_URI", referring_model["tracking_uri"])
        assert main(["predict", str(smears / "Original"), "--model-uri", referring_model["uri"]]) == 0
    rows = read_csv(io.StringIO(capsys.readouterr().out))
    assert len(rows) == 4 and set(rows["decision"]) == {"refer"} and set(rows["reason"]) == {"low_confidence"}
    assert rows["ood_score"].isna().all()  # a model published without an out-of-distribution check


def test_predict_refuses_a_missing_path_and_a_bad_batch_size(model_env, smears, capsys):
    assert main(["predict", str(smears / "no-such-folder")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["predict", str(smears), "--batch-size", "0"]) == 2
    assert "batch size must be at least 1" in capsys.readouterr().err


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_the_spark_job_gives_the_local_rows(model_env, smears, tmp_path):
    local = predict_paths([smears], batch_size=4, progress=False)
    on_spark = predict_paths([smears], batch_size=4, spark_master="local[1]", explain_dir=tmp_path, progress=False)
    pd.testing.assert_frame_equal(on_spark.drop(columns="heatmap"), local, check_exact=False, rtol=0, atol=1e-6)
    assert on_spark["heatmap"].dropna().map(lambda p: (tmp_path / p).is_file()).sum() == 9
