"""The prediction API on a real registered model: endpoints, refusals, image modes, metrics, the real server."""

from __future__ import annotations

import asyncio
import base64
import io
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from leukolab.predictor.smear_model import SmearModel
from leukolab.serving import uploads as uploads_module
from leukolab.serving.app import ServingSettings, create_app
from leukolab.serving.dependencies import get_settings
from leukolab.serving.launch import start_server
from leukolab.serving.metrics import ServingMetrics

LIMITS = ServingSettings(max_upload_bytes=200_000, max_pixels=4_000_000)


def ready_client(app, **options) -> TestClient:
    """Enter a TestClient (running the lifespan) and wait for the model to load."""
    client = TestClient(app, **options).__enter__()
    deadline = time.monotonic() + 60
    while client.get("/ready").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    return client


@pytest.fixture(scope="module")
def client(model_env):
    client = ready_client(create_app(model_env["uri"], LIMITS))
    yield client
    client.__exit__(None, None, None)


@pytest.fixture
def fresh_client(model_env):
    """An app of its own, for tests that count metrics."""
    def make(settings: ServingSettings = LIMITS, **options) -> TestClient:
        clients.append(ready_client(create_app(model_env["uri"], settings), **options))
        return clients[-1]
    clients: list[TestClient] = []
    yield make
    for client in clients:
        client.__exit__(None, None, None)


def encode(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


SMEAR = encode(Image.new("RGB", (80, 60), (200, 110, 160)), "JPEG")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming ``width`` x ``height`` pixels in a few dozen bytes (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def predict(client: TestClient, data: bytes, name: str = "smear.jpg"):
    return client.post("/predict", files={"file": (name, data)})


def metric(text: str, sample_name: str, **labels) -> float:
    """Sum of the samples called ``sample_name`` whose labels include ``labels``."""
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == sample_name and labels.items() <= sample.labels.items())


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


NOISE_JPEG = encode(Image.effect_noise((400, 300), 60).convert("RGB"), "JPEG")
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


def animated_gif() -> bytes:
    frames = [Image.new("P", (40, 32), i) for i in (10, 200)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


IMAGE_MODES = {
    "greyscale": lambda: encode(Image.new("L", (50, 40), 120), "PNG"),
    "rgba": lambda: encode(Image.new("RGBA", (50, 40), (200, 10, 10, 100)), "PNG"),
    "palette": lambda: encode(Image.new("RGB", (50, 40), (20, 200, 90)).convert("P"), "PNG"),
    "cmyk jpeg": lambda: encode(Image.new("CMYK", (50, 40), (10, 200, 30, 0)), "JPEG"),
    "16-bit png": lambda: encode(Image.fromarray(np.full((40, 50), 40_000, dtype=np.uint16)), "PNG"),
    "animated gif": animated_gif,
    "tiff": lambda: encode(Image.new("RGB", (50, 40), (90, 90, 200)), "TIFF"),
}


@pytest.mark.parametrize("mode", IMAGE_MODES, ids=str)
def test_image_modes_are_converted(client, mode):
    response = predict(client, IMAGE_MODES[mode](), name="image")
    assert response.status_code == 200, response.text
    assert response.json()["predicted_class"] is not None


def test_decoding_and_inference_run_off_the_event_loop(client, monkeypatch):
    decode, forward = uploads_module.decode_image, SmearModel.predict_prepared
    threads = {}

    def outside_the_loop(step, function):
        def checked(*args, **kwargs):
            with pytest.raises(RuntimeError):
                asyncio.get_running_loop()
            threads[step] = threading.current_thread().name
            return function(*args, **kwargs)
        return checked

    monkeypatch.setattr(uploads_module, "decode_image", outside_the_loop("decode", decode))
    monkeypatch.setattr(SmearModel, "predict_prepared", outside_the_loop("forward", forward))
    assert predict(client, SMEAR).status_code == 200
    assert threads["forward"].startswith("leukolab-inference") and threads["decode"] != threads["forward"]


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


def predict_batch(client: TestClient, images: list[bytes], field: str = "files"):
    return client.post("/predict/batch", files=[(field, (f"smear-{i}.png", data)) for i, data in enumerate(images)])


def solid_png(rgb: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> bytes:
    return encode(Image.new("RGB", size, rgb), "PNG")


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


def test_metrics_count_known_requests(fresh_client, model_env):
    client = fresh_client()
    for _ in range(2):
        assert predict(client, SMEAR).status_code == 200
    assert predict(client, b"not an image").status_code == 415
    client.get("/no/such/path")
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert metric(text, "leukolab_requests_total", route="/predict", status="200") == 2
    assert metric(text, "leukolab_requests_total", route="/predict", status="415") == 1
    assert metric(text, "leukolab_requests_total", route="unmatched", status="404") == 1
    assert "/no/such/path" not in text
    assert metric(text, "leukolab_predictions_total") == 2
    assert metric(text, "leukolab_prediction_errors_total", reason="not_an_image") == 1
    assert metric(text, "leukolab_inference_seconds_count") == 2
    assert metric(text, "leukolab_batch_size_sum") == 2
    assert metric(text, "leukolab_prediction_confidence_count") == 2
    info = dict(name="leukolab", version=model_env["version"], run_id=model_env["run_id"])
    assert metric(text, "leukolab_model_info", **info) == 1


def test_without_a_threshold_tag_every_prediction_is_accepted(client):
    body = predict(client, SMEAR).json()
    assert (body["decision"], body["referral_threshold"]) == ("accept", None)
    assert client.get("/version").json()["referral_threshold"] is None


def test_the_version_tag_decides_accept_or_refer_at_the_confidence_itself(model_env, tag_threshold):
    """``confidence >= referral_threshold`` accepts: at the answer's own confidence it is accepted, just above referred."""
    with TestClient(create_app(model_env["uri"], LIMITS)) as plain:
        confidence = predict(plain, SMEAR).json()["confidence"]
    for threshold, decision in ((confidence, "accept"), (float(np.nextafter(confidence, 1.0)), "refer")):
        uri = tag_threshold("leukolab-threshold-test", threshold)
        with TestClient(create_app(uri, LIMITS)) as client:
            body = predict(client, SMEAR).json()
            assert (body["decision"], body["referral_threshold"], body["confidence"]) == (decision, threshold, confidence)
            assert client.get("/version").json()["referral_threshold"] == threshold
            assert metric(client.get("/metrics").text, "leukolab_referrals_total") == (decision == "refer")


def test_referrals_are_answered_and_counted_per_image(referring_model):
    with TestClient(create_app(referring_model["uri"], LIMITS)) as client:
        assert metric(client.get("/metrics").text, "leukolab_referrals_total") == 0
        single = predict(client, SMEAR).json()
        batch = client.post("/predict/batch", files=[("files", (f"{i}.jpg", SMEAR)) for i in range(3)]).json()
        text = client.get("/metrics").text
    assert single["decision"] == "refer" and single["referral_threshold"] == 1.0 and single["predicted_class"]
    assert (single["reason"], single["ood_score"]) == ("low_confidence", None)
    assert [(p["decision"], p["reason"]) for p in batch["predictions"]] == [("refer", "low_confidence")] * 3
    assert metric(text, "leukolab_referrals_total", reason="low_confidence") == 4
    assert metric(text, "leukolab_predictions_total") == 4


def test_a_bad_threshold_tag_leaves_the_server_unready_and_says_why(model_env):
    from mlflow.tracking import MlflowClient

    from leukolab.predictor.decision import THRESHOLD_TAG

    client = MlflowClient(model_env["tracking_uri"])
    client.create_registered_model("leukolab-bad-tag")
    source = client.get_model_version("leukolab", model_env["version"])
    version = client.create_model_version("leukolab-bad-tag", source.source, source.run_id, tags={THRESHOLD_TAG: "high"})
    with TestClient(create_app(f"models:/leukolab-bad-tag/{version.version}", LIMITS)) as api:
        body = predict(api, SMEAR).json()
    assert body["reason"] == "load_failed" and "referral_threshold tag of model version leukolab-bad-tag/1 is 'high'" in body["detail"]


def test_low_confidence_alert_fires_after_a_run_of_unsure_predictions(fresh_client):
    client = fresh_client(ServingSettings(low_confidence_threshold=0.99, low_confidence_run=3))
    for expected in (0, 0, 1, 1):
        predict(client, SMEAR)
        assert metric(client.get("/metrics").text, "leukolab_low_confidence_alert") == expected


def test_low_confidence_alert_resets_on_a_confident_prediction():
    metrics = ServingMetrics(low_confidence_threshold=0.5, low_confidence_run=5)
    alert = []
    for confidence in (0.4, 0.3, 0.45, 0.2, 0.49, 0.1, 0.9, 0.4):
        metrics.observe_prediction("Pre", confidence, 0.01)
        alert.append(metrics.low_confidence_alert._value.get())
    assert alert == [0, 0, 0, 0, 1, 1, 0, 0]


def test_colour_drift_alert_follows_the_mean_colour_of_recent_inputs(fresh_client):
    """The test model's training mean colour is mid-grey (0.5, 0.5, 0.5): white inputs are far from it."""
    client = fresh_client(replace(LIMITS, colour_window=2, colour_drift_threshold=0.2))
    seen = []
    for level in [255] * 3 + [128] * 2:
        assert predict(client, solid_png((level, level, level))).status_code == 200
        text = client.get("/metrics").text
        seen.append((metric(text, "leukolab_colour_drift_alert"), metric(text, "leukolab_input_colour_distance")))
    # one white image: far, but the window is not full yet; white twice: alert; white and grey: still far; two greys: back
    distance = [np.sqrt(3) * abs(mean / 255 - 0.5) for mean in (255, 255, 255, (255 + 128) / 2, 128)]
    assert [alert for alert, _ in seen] == [0, 1, 1, 1, 0]
    assert [d for _, d in seen] == pytest.approx(distance, abs=1e-6)


def test_colour_drift_needs_a_full_window_and_a_training_colour():
    metrics = ServingMetrics(colour_drift_threshold=0.1, colour_window=3)
    white = [np.full((8, 8, 3), 255, np.uint8)]
    metrics.observe_batch(white)
    assert metrics.colour_distance._value.get() == 0 and metrics.batch_size._sum.get() == 1  # no training colour
    metrics.set_model("m", "1", "r", ["A"], training_colour=[0.5, 0.5, 0.5])
    metrics.observe_batch(white * 2)
    assert metrics.colour_drift_alert._value.get() == 0
    metrics.observe_batch(white)
    assert metrics.colour_drift_alert._value.get() == 1
    assert metrics.colour_distance._value.get() == pytest.approx(np.sqrt(3 * 0.25))


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


@pytest.mark.integration
def test_real_server_answers_over_http(model_env, tmp_path):
    with start_server(model_env["uri"], log_path=tmp_path / "server.log", timeout=90) as server:
        response = httpx.post(f"{server.url}/predict", files={"file": ("smear.jpg", SMEAR)}, timeout=30)
        assert response.status_code == 200 and response.json()["model_version"] == "leukolab/1"
        assert "leukolab_model_info" in httpx.get(f"{server.url}/metrics").text
    assert server.process.poll() is not None


@pytest.mark.integration
def test_start_server_reports_a_model_that_cannot_load(model_env):
    with pytest.raises(RuntimeError, match="could not load the model") as failure:
        start_server("models:/no-such-model@champion", timeout=90)
    assert "no-such-model" in str(failure.value)


LOAD_CONCURRENCY, LOAD_SECONDS, WARMUP_SECONDS = 32, 30, 5


async def keep_busy(url: str, seconds: float, uploads: list[tuple[bytes, int]]) -> dict[int, list[int]]:
    """``LOAD_CONCURRENCY`` clients posting ``uploads`` in turn for ``seconds``: the statuses seen per upload."""
    seen: dict[int, list[int]] = {i: [] for i in range(len(uploads))}
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=LOAD_CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits, trust_env=False) as http:
        async def client(offset: int) -> None:
            i = offset
            while time.monotonic() < deadline:
                which = i % len(uploads)
                response = await http.post("/predict", files={"file": ("upload", uploads[which][0])})
                seen[which].append(response.status_code)
                i += 1
        await asyncio.gather(*(client(offset) for offset in range(LOAD_CONCURRENCY)))
    return seen


@pytest.mark.integration
def test_load_at_concurrency_32_answers_everything_and_holds_its_memory(model_env, tmp_path):
    """32 clients for 30 s, one request in eight a bad file: every answer as expected, RSS growth under 10%.

    Growth is measured after a warm-up that runs every batch size once: the allocator and oneDNN keep buffers per
    input shape (a one-time cost, flat afterwards), which a leak would not be.
    """
    import psutil

    uploads = [(SMEAR, 200), (NOISE_JPEG, 200), (IMAGE_MODES["rgba"](), 200), (solid_png((120, 60, 140), (300, 200)), 200),
               (IMAGE_MODES["animated gif"](), 200), (NOISE_JPEG[:1500], 400), (b"not an image", 415), (SMEAR, 200)]
    with start_server(model_env["uri"], log_path=tmp_path / "server.log", timeout=90) as server:
        process = psutil.Process(server.process.pid)
        for size in range(1, ServingSettings().max_batch_size + 1):  # one request at a time: a pass of each size
            files = [("files", ("smear.jpg", SMEAR))] * size
            assert httpx.post(f"{server.url}/predict/batch", files=files, timeout=60, trust_env=False).status_code == 200
        asyncio.run(keep_busy(server.url, WARMUP_SECONDS, uploads))
        rss_before = process.memory_info().rss
        seen = asyncio.run(keep_busy(server.url, LOAD_SECONDS, uploads))
        rss_after = process.memory_info().rss
        text = httpx.get(f"{server.url}/metrics", trust_env=False).text
        assert server.process.poll() is None, server.log_tail()
    for which, statuses in seen.items():
        assert statuses and set(statuses) == {uploads[which][1]}, (which, sorted(set(statuses)))
    answered = sum(len(statuses) for which, statuses in seen.items() if uploads[which][1] == 200)
    assert metric(text, "leukolab_requests_total", route="/predict", status="500") == 0
    assert metric(text, "leukolab_batch_size_count") < metric(text, "leukolab_batch_size_sum")  # passes were shared
    assert metric(text, "leukolab_batch_size_sum") >= answered
    print(f"{answered} predictions in {LOAD_SECONDS} s at concurrency {LOAD_CONCURRENCY}; "
          f"RSS {rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MiB")
    assert rss_after < 1.10 * rss_before


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
