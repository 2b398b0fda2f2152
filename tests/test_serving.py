"""The prediction API on a real registered model: endpoints, refusals, image modes, batches, its settings (its metrics,
the real server and the heatmaps: tests/test_serving_metrics.py, test_serving_server.py, test_serving_explain.py)."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sample_images import IMAGE_MODES, NOISE_JPEG, SMEAR, encode, png_header_only, solid_png
from serving_helpers import LIMITS, metric, predict, predict_batch, ready_client

from leukolab.predictor.smear_model import SmearModel
from leukolab.serving import model_slot as model_slot_module
from leukolab.serving.app import ServingSettings, create_app
from leukolab.serving.dependencies import get_settings


def test_health_ready_and_version(client, model_env):
    health = client.get("/").json()
    assert (health["status"], health["model_uri"], health["model_ready"]) == ("ok", model_env["uri"], True)
    assert client.get("/ready").json() == {"status": "ready"}
    version = client.get("/version").json()
    assert version["name"] == "leukolab" and version["version"] == model_env["version"]
    assert version["run_id"] == model_env["run_id"]
    assert version["dataset_fingerprint"] == "test-fingerprint"
    assert version["class_names"] == model_env["class_names"] and version["task"] == "joint"
    assert version["image_size"] == 64
    assert version["ood_check"] is None  # published without an out-of-distribution check: it serves without one


def test_predict_answers_class_probabilities_and_mask(client, model_env):
    response = predict(client, SMEAR)
    assert response.status_code == 200
    body = response.json()
    assert set(body["probabilities"]) == set(model_env["class_names"])
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert body["predicted_class"] == max(body["probabilities"], key=body["probabilities"].get)
    assert body["confidence"] == pytest.approx(max(body["probabilities"].values()))
    mask = Image.open(io.BytesIO(base64.b64decode(body["mask"])))
    assert mask.size == (64, 64) and set(np.unique(np.asarray(mask))) <= {0, 255}
    assert 0 <= body["mask_fraction"] <= 1
    assert body["model_version"] == f"leukolab/{model_env['version']}"
    assert body["latency_ms"] > 0


def file_field(data: bytes, field: str = "file") -> dict:
    return {"files": {field: ("upload", data)}}
CHUNKED_UPLOAD = iter([b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n',
                       b"\xff" * 300_000, b"\r\n--b--\r\n"])  # no Content-Length: the stream is counted
BAD_REQUESTS = {
    "empty file": (file_field(b""), 400, "empty"),
    "not an image": (file_field(b"hello, world"), 415, "not_an_image"),
    "truncated jpeg": (file_field(NOISE_JPEG[:1500]), 400, "truncated"),
    "jpeg cut inside its header": (file_field(NOISE_JPEG[:300]), 400, "truncated"),
    "wrong field name": (file_field(SMEAR, field="image"), 422, "missing_file"),
    "no body": ({}, 422, "missing_file"),
    "text instead of a file": ({"data": {"file": "not a file"}}, 422, "missing_file"),
    "json body": ({"json": {"file": "abc"}}, 422, "missing_file"),
    "multipart without boundary": ({"content": b"--x\r\n", "headers": {"content-type": "multipart/form-data"}},
                                   400, "malformed_request"),
    "file just over the limit": (file_field(b"\xff" * 210_000), 413, "file_too_large"),
    "body far over the limit": (file_field(b"\xff" * 1_000_000), 413, "file_too_large"),
    "chunked body over the limit": ({"content": CHUNKED_UPLOAD, "headers": {"content-type": "multipart/form-data; boundary=b"}},
                                    413, "file_too_large"),
    "too many pixels": (file_field(encode(Image.new("L", (2100, 2100)), "PNG")), 413, "too_many_pixels"),
    "decompression bomb": (file_field(png_header_only(100_000, 100_000)), 413, "too_many_pixels"),
    "two files to /predict": ({"files": [("file", ("a.jpg", SMEAR)), ("file", ("b.jpg", SMEAR))]}, 413, "too_many_files"),
    "explain that is not a boolean": ({**file_field(SMEAR), "params": {"explain": "maybe"}}, 422, "invalid_request"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=str)
def test_bad_input_is_refused_with_json_and_the_next_request_succeeds(client, case):
    request, status, reason = BAD_REQUESTS[case]
    response = client.post("/predict", **request)
    assert (response.status_code, response.json()["reason"]) == (status, reason)
    assert isinstance(response.json()["detail"], str) and response.json()["detail"]
    assert predict(client, SMEAR).status_code == 200


def test_routes_take_their_limits_from_the_settings_dependency(client):
    client.app.dependency_overrides[get_settings] = lambda: replace(LIMITS, max_upload_bytes=len(SMEAR) - 1)
    try:
        response = predict(client, SMEAR)
    finally:
        client.app.dependency_overrides.clear()
    assert (response.status_code, response.json()["reason"]) == (413, "file_too_large")
    assert predict(client, SMEAR).status_code == 200


def test_missing_file_message_names_the_field(client):
    assert "field named 'file'" in client.post("/predict", files={"image": ("a.jpg", SMEAR)}).json()["detail"]


def test_unknown_route_and_method_answer_json(client):
    assert client.get("/nope").json()["reason"] == "not_found"
    assert client.get("/predict").status_code == 405


@pytest.mark.parametrize("mode", IMAGE_MODES, ids=str)
def test_image_modes_are_converted(client, mode):
    response = predict(client, IMAGE_MODES[mode](), name="image")
    assert response.status_code == 200, response.text
    assert response.json()["predicted_class"] is not None


def test_decoding_and_inference_run_off_the_event_loop_in_an_inference_worker(client, monkeypatch):
    decode, forward = model_slot_module.decode_image, SmearModel.predict_prepared
    threads = {}

    def outside_the_loop(step, function):
        def checked(*args, **kwargs):
            with pytest.raises(RuntimeError):
                asyncio.get_running_loop()
            threads[step] = threading.current_thread().name
            return function(*args, **kwargs)
        return checked

    monkeypatch.setattr(model_slot_module, "decode_image", outside_the_loop("decode", decode))
    monkeypatch.setattr(SmearModel, "predict_prepared", outside_the_loop("forward", forward))
    assert predict(client, SMEAR).status_code == 200
    assert threads["forward"].startswith("leukolab-inference") and threads["decode"] == threads["forward"]


def test_a_bug_in_inference_is_a_json_500_and_counted(fresh_client, monkeypatch):
    client = fresh_client(raise_server_exceptions=False)

    def crash(*args):
        raise RuntimeError("bug")

    monkeypatch.setattr(SmearModel, "predict_prepared", crash)
    response = predict(client, SMEAR)
    assert (response.status_code, response.json()["reason"]) == (500, "internal_error")
    text = client.get("/metrics").text
    assert metric(text, "leukolab_requests_total", route="/predict", status="500") == 1
    assert metric(text, "leukolab_prediction_errors_total", reason="internal_error") == 1
    monkeypatch.undo()
    assert predict(client, SMEAR).status_code == 200


def test_openapi_documents_every_response_field(client):
    schema = client.get("/openapi.json").json()
    for model in ("Prediction", "BatchPrediction", "VersionInfo", "Health", "ErrorBody"):
        properties = schema["components"]["schemas"][model]["properties"]
        assert all(field.get("description") for field in properties.values()), model
    for path, field in (("/predict", "file"), ("/predict/batch", "files")):
        upload = schema["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert upload["required"] == [field] and upload["properties"][field]["description"]
        responses = schema["paths"][path]["post"]["responses"]
        assert {"200", "400", "413", "415", "422", "503"} <= set(responses)
        assert responses["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")


def test_batch_answers_each_file_in_order_as_predict_does(client, model_env):
    images = [SMEAR, solid_png((250, 250, 250)), IMAGE_MODES["greyscale"]()]
    response = predict_batch(client, images)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == f"leukolab/{model_env['version']}" and body["latency_ms"] > 0
    assert len(body["predictions"]) == 3
    for image, answer in zip(images, body["predictions"]):
        single = predict(client, image).json()
        assert answer["predicted_class"] == single["predicted_class"]
        assert answer["probabilities"] == pytest.approx(single["probabilities"], abs=1e-5)
        assert answer["mask"] == single["mask"]


MAX_FILES = ServingSettings(max_upload_bytes=200_000, max_pixels=4_000_000, max_batch_files=3)
BAD_BATCHES = {
    "more files than max_batch_files": ([SMEAR] * 4, "files", 413, "too_many_files"),
    "wrong field name": ([SMEAR] * 2, "file", 422, "missing_file"),
    "one file not an image": ([SMEAR, b"plain text", SMEAR], "files", 415, "not_an_image"),
    "one file empty": ([SMEAR, b""], "files", 400, "empty"),
    "one file over the size limit": ([SMEAR, b"\xff" * 210_000], "files", 413, "file_too_large"),
    "one decompression bomb": ([png_header_only(100_000, 100_000), SMEAR], "files", 413, "too_many_pixels"),
}


@pytest.fixture(scope="module")
def batch_client(model_env):
    client = ready_client(create_app(model_env["uri"], MAX_FILES))
    yield client
    client.__exit__(None, None, None)


@pytest.mark.parametrize("case", BAD_BATCHES, ids=str)
def test_bad_batches_are_refused_with_json_and_the_next_batch_succeeds(batch_client, case):
    images, field, status, reason = BAD_BATCHES[case]
    response = predict_batch(batch_client, images, field)
    assert (response.status_code, response.json()["reason"]) == (status, reason)
    assert response.json()["detail"]
    assert predict_batch(batch_client, [SMEAR] * 3).status_code == 200


def test_batch_refusal_names_the_bad_file(batch_client):
    detail = predict_batch(batch_client, [SMEAR, b"plain text"]).json()["detail"]
    assert detail.startswith("file 2 ('smear-1.png')")
    assert "at most 3 files" in predict_batch(batch_client, [SMEAR] * 5).json()["detail"]


def test_concurrent_requests_share_forward_passes(fresh_client):
    """With a generous wait, 12 concurrent requests make fewer than 12 passes, none over max_batch_size."""
    client = fresh_client(replace(LIMITS, max_batch_size=8, max_wait_ms=300))
    with ThreadPoolExecutor(12) as pool:
        statuses = list(pool.map(lambda _: predict(client, SMEAR).status_code, range(12)))
    assert statuses == [200] * 12
    text = client.get("/metrics").text
    assert metric(text, "leukolab_batch_size_sum") == 12
    assert metric(text, "leukolab_batch_size_count") < 12
    assert metric(text, "leukolab_batch_size_bucket", le="8.0") == metric(text, "leukolab_batch_size_count")
    assert metric(text, "leukolab_inference_seconds_count") == 12


def test_a_model_that_cannot_load_leaves_the_server_up_and_unready(model_env):
    with TestClient(create_app("models:/no-such-model@champion", LIMITS)) as client:
        assert client.get("/").json()["model_ready"] is False
        deadline = time.monotonic() + 30
        while (ready := client.get("/ready").json())["reason"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready["reason"] == "load_failed" and "no-such-model" in ready["detail"]
        response = predict(client, SMEAR)
        assert (response.status_code, response.json()["reason"]) == (503, "load_failed")
        assert client.get("/version").status_code == 503


def test_settings_come_from_the_environment():
    settings = ServingSettings.from_env({"LEUKOLAB_MAX_UPLOAD_BYTES": "1234", "LEUKOLAB_MAX_PIXELS": "99",
                                         "LEUKOLAB_MODEL_URI": "models:/other@challenger"})
    assert (settings.max_upload_bytes, settings.max_pixels, settings.model_uri) == (1234, 99, "models:/other@challenger")
    assert ServingSettings.from_env({}) == ServingSettings()
    with pytest.raises(ValueError, match="LEUKOLAB_MAX_PIXELS"):
        ServingSettings.from_env({"LEUKOLAB_MAX_PIXELS": "lots"})


@pytest.mark.parametrize("size", [(1, 1), (10000, 2), (31, 64), (32, 32), (256, 32), (257, 32)])
def test_the_api_and_the_etl_agree_on_which_images_are_usable(client, size):
    from leukolab.data.etl.job import process_file
    from leukolab.data.etl.params import EtlParams
    from leukolab.data.etl.sources import Layout

    image = io.BytesIO()
    Image.new("RGB", size, (200, 150, 170)).save(image, format="PNG")
    etl = process_file("Benign/smear.png", image.getvalue(), Layout("imagefolder"), EtlParams())
    response = client.post("/predict", files={"file": ("smear.png", image.getvalue(), "image/png")})
    if etl["status"] == "ok":
        assert response.status_code == 200, response.text
    else:
        assert response.status_code == 400 and response.json()["reason"] == etl["reason"], response.text
    assert (etl["status"], etl["reason"]) == {(1, 1): ("quarantined", "too_small"), (10000, 2): ("quarantined", "too_small"),
                                              (31, 64): ("quarantined", "too_small"), (257, 32): ("quarantined", "too_elongated")
                                              }.get(size, ("ok", None))
