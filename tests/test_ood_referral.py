"""The smoke run's champion refers images from other labs and of other kinds as out of distribution, in its
evaluation and in every consumer: the API, v2 inference and `leukolab predict` (the demo: tests/test_demo_browser.py).

The stand-ins are the synthetic shifted sets (:mod:`leukolab.data.synthetic.shift`, the evaluation's seed), which
nothing was fitted or chosen on: the check was fitted on the smoke run's train split and its threshold chosen on
train out of fold and val. The smoke champion's confidence threshold refers all of its 4 test images, so the coverage
drop is read with the check's own in-domain referrals (0 of 4 allowed)."""

from __future__ import annotations

import base64
import csv
import io
import json

import pytest
from conftest import leukolab
from PIL import Image

from leukolab.data.synthetic.shift import SHIFTS, shifted_images

pytestmark = pytest.mark.integration

INFER = "/v2/models/leukolab/infer"


def jpeg(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def champion_env(smoke_run):
    """The smoke run's workspace as the process's tracking store, and its evaluation's output."""
    workspace, _ = smoke_run
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LEUKOLAB_WORKSPACE", str(workspace))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield {"workspace": workspace,
               "evaluation": json.loads((workspace / "runs" / "smoke-1" / "evaluate.json").read_text())}


@pytest.fixture(scope="module")
def shifted_image() -> bytes:
    """A greyscale field at the smoke run's image size: unlike anything the champion was trained on."""
    return jpeg(next(shifted_images("greyscale", 1, 64, seed=3)))


def test_the_champion_refers_the_shifted_sets_and_keeps_its_in_domain_coverage(champion_env):
    ood = champion_env["evaluation"]["ood"]
    assert ood is not None and ood["check"]["used"] == ["mahalanobis", "knn", "colour", "kind", "size"]
    assert ood["check"]["calibration_images"] > ood["check"]["val_images"]  # train out of fold as well as val
    sets = {row["set"].removeprefix("synthetic "): row for row in ood["sets"]}
    assert set(sets) == set(SHIFTS)
    assert all(row["referred"] >= 0.95 and row["auroc_combined"] >= 0.95 for row in sets.values()), sets
    cost = ood["cost"]
    assert cost["in_domain_referred"] <= 0.02, cost  # as if every in-domain answer had been accepted
    assert cost["before"]["coverage"] - cost["after"]["coverage"] <= 0.02, cost


def test_api_and_v2_answer_out_of_distribution_and_count_it(champion_env, shifted_image):
    from fastapi.testclient import TestClient

    from leukolab.serving.app import create_app

    with TestClient(create_app("models:/leukolab@champion")) as client:
        version = client.get("/version").json()
        assert version["ood_check"]["used"] == ["mahalanobis", "knn", "colour", "kind", "size"]
        answer = client.post("/predict", files={"file": ("grey.jpg", shifted_image)}).json()
        assert (answer["decision"], answer["reason"]) == ("refer", "out_of_distribution"), answer
        assert answer["ood_score"] > version["ood_check"]["threshold"] and answer["probabilities"]
        batch = client.post("/predict/batch", files=[("files", ("a.jpg", shifted_image))]).json()
        assert batch["predictions"][0]["reason"] == "out_of_distribution"
        request = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                               "data": [base64.b64encode(shifted_image).decode()]}]}
        outputs = {o["name"]: o["data"] for o in client.post(INFER, json=request).json()["outputs"]}
        assert (outputs["decision"], outputs["reason"]) == (["refer"], ["out_of_distribution"])
        metrics = client.get("/metrics").text
    assert 'leukolab_referrals_total{reason="out_of_distribution"} 3.0' in metrics


def test_predict_writes_out_of_distribution_in_its_csv(champion_env, shifted_image, tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "grey.jpg").write_bytes(shifted_image)
    out = tmp_path / "scores.csv"
    result = leukolab(champion_env["workspace"], "predict", str(tmp_path / "images"), "--out", str(out), timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    (row,) = list(csv.DictReader(out.open()))
    assert (row["decision"], row["reason"]) == ("refer", "out_of_distribution") and float(row["ood_score"]) > 0
