"""The prediction API's heatmaps (``explain``): added to an answer that stays as it was, per image in a batch, off
the batcher, refused by a segmenter, documented."""

from __future__ import annotations

import asyncio
import base64
import io
import threading

import numpy as np
import pytest
from PIL import Image
from sample_images import NOISE_JPEG, SMEAR
from serving_helpers import LIMITS, predict, predict_batch, ready_client

from leukolab.predictor.smear_model import SmearModel
from leukolab.serving.app import create_app


def heatmap_of(answer: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["heatmap_png"]))))


def test_explain_adds_a_heatmap_and_leaves_the_rest_of_the_answer_as_it_was(client):
    plain = predict(client, SMEAR).json()
    assert plain["heatmap_png"] is None
    response = client.post("/predict?explain=true", files={"file": ("smear.jpg", SMEAR)})
    assert response.status_code == 200, response.text
    explained = response.json()
    heatmap = heatmap_of(explained)
    assert heatmap.shape == (64, 64) and heatmap.dtype == np.uint8
    assert explained["probabilities"] == pytest.approx(plain["probabilities"], abs=1e-5)
    assert {k: v for k, v in explained.items() if k not in ("heatmap_png", "latency_ms", "probabilities", "confidence")} \
        == {k: v for k, v in plain.items() if k not in ("heatmap_png", "latency_ms", "probabilities", "confidence")}
    assert client.post("/predict?explain=false", files={"file": ("smear.jpg", SMEAR)}).json()["heatmap_png"] is None


def test_batch_explains_each_image_as_predict_does(client):
    images = [SMEAR, NOISE_JPEG]
    response = client.post("/predict/batch?explain=true", files=[("files", (f"{i}.jpg", data)) for i, data in enumerate(images)])
    assert response.status_code == 200, response.text
    for image, answer in zip(images, response.json()["predictions"]):
        single = client.post("/predict?explain=true", files={"file": ("smear.jpg", image)}).json()
        assert answer["heatmap_png"] == single["heatmap_png"] and answer["predicted_class"] == single["predicted_class"]
    assert all(answer["heatmap_png"] is None for answer in predict_batch(client, images).json()["predictions"])


def test_explained_requests_skip_the_batcher_and_plain_ones_never_explain(client, monkeypatch):
    explain, threads = SmearModel.explain_prepared, []

    def recorded(*args, **kwargs):
        with pytest.raises(RuntimeError):
            asyncio.get_running_loop()
        threads.append(threading.current_thread().name)
        return explain(*args, **kwargs)

    monkeypatch.setattr(SmearModel, "explain_prepared", recorded)
    assert predict(client, SMEAR).status_code == 200 and predict_batch(client, [SMEAR] * 2).status_code == 200
    assert threads == []
    assert client.post("/predict?explain=true", files={"file": ("smear.jpg", SMEAR)}).status_code == 200
    assert len(threads) == 1 and not threads[0].startswith("leukolab-inference")


def test_a_classifier_explains_and_a_segmenter_refuses(model_env, classifier_uri, segmentation_model_uri):
    classifier, segmenter = (ready_client(create_app(uri, LIMITS)) for uri in (classifier_uri, segmentation_model_uri))
    try:
        answer = classifier.post("/predict?explain=true", files={"file": ("smear.jpg", SMEAR)}).json()
        assert answer["mask"] is None and heatmap_of(answer).shape == (64, 64)
        assert predict(segmenter, SMEAR).status_code == 200
        response = segmenter.post("/predict?explain=true", files={"file": ("smear.jpg", SMEAR)})
        assert (response.status_code, response.json()["reason"]) == (400, "cannot_explain")
        assert "only segments" in response.json()["detail"]
    finally:
        for served in (classifier, segmenter):
            served.__exit__(None, None, None)


def test_openapi_documents_the_explain_flag(client):
    schema = client.get("/openapi.json").json()
    for path in ("/predict", "/predict/batch"):
        flag = {p["name"]: p for p in schema["paths"][path]["post"]["parameters"]}["explain"]
        assert flag["in"] == "query" and flag["schema"]["default"] is False and "heatmap_png" in flag["description"]
    heatmap = schema["components"]["schemas"]["Prediction"]["properties"]["heatmap_png"]
    assert "Grad-CAM" in heatmap["description"] and "heatmap_png" not in schema["components"]["schemas"]["Prediction"].get("required", [])
