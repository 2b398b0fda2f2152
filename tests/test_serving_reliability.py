"""The API under overload, on SIGTERM and behind a token: fast 503s past max_pending, a drain that loses nothing,
401 without the bearer token, and a server that will not start exposed without one."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from leukolab.predictor.smear_model import SmearModel
from leukolab.processes.background import free_port
from leukolab.serving.admission import Admission
from leukolab.serving.app import ServingSettings, create_app
from leukolab.serving.auth import check_exposure, is_loopback
from leukolab.serving.errors import ApiError
from leukolab.serving.launch import start_server
from leukolab.serving.metrics import ServingMetrics
from leukolab.widgets import predict_for_demo

TOKEN = "s3cret-token-for-tests"


def jpeg(colour: tuple[int, int, int] = (200, 110, 160)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (80, 60), colour).save(buffer, "JPEG")
    return buffer.getvalue()


SMEAR = jpeg()
V2_REQUEST = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(SMEAR).decode()]}]}


def metric(text: str, sample_name: str, **labels) -> float:
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == sample_name and labels.items() <= sample.labels.items())


def ready_client(app) -> TestClient:
    client = TestClient(app).__enter__()
    deadline = time.monotonic() + 60
    while client.get("/ready").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    return client


def test_admission_holds_up_to_its_limit_then_refuses_with_retry_after():
    metrics = ServingMetrics()
    admission = Admission(2, metrics, retry_after_s=2.5)
    admission.admit(), admission.admit()
    with pytest.raises(ApiError) as refused:
        admission.admit()
    assert (refused.value.status, refused.value.reason, refused.value.headers) == (503, "overloaded", {"Retry-After": "3"})
    admission.release()
    admission.admit()  # a place is free again
    admission.begin_drain()
    with pytest.raises(ApiError, match="shutting down") as draining:
        admission.admit()
    assert draining.value.reason == "draining"
    text = metrics.exposition().decode()
    assert metric(text, "leukolab_pending_requests") == 2
    assert metric(text, "leukolab_rejected_requests_total", reason="overloaded") == 1
    assert metric(text, "leukolab_rejected_requests_total", reason="draining") == 1
    assert not asyncio.run(admission.drained(0.05))  # two still held
    admission.release(), admission.release()
    assert asyncio.run(admission.drained(0.05))
    with pytest.raises(ValueError):
        Admission(-1, metrics)


@pytest.fixture
def held_client(model_env, monkeypatch):
    """A client of an app that holds one prediction request at most, whose forward passes wait for ``release``."""
    release = threading.Event()
    forward = SmearModel.predict_prepared

    def held(self, arrays, explain=False):
        if not release.wait(30):
            raise TimeoutError("the test never released the forward pass")
        return forward(self, arrays, explain)

    settings = ServingSettings(max_pending=1, retry_after_seconds=2)
    client = ready_client(create_app(model_env["uri"], settings))  # loads (and warms) before the hold
    monkeypatch.setattr(SmearModel, "predict_prepared", held)
    yield client, release
    release.set()
    client.__exit__(None, None, None)


def test_past_max_pending_predictions_get_a_fast_503_and_health_stays_open(held_client):
    client, release = held_client
    admission = client.app.state.admission
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, "/predict", files={"file": ("smear.jpg", SMEAR)})
        deadline = time.monotonic() + 10
        while admission.pending < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        refusals = []
        for send in (lambda: client.post("/predict", files={"file": ("smear.jpg", SMEAR)}),
                     lambda: client.post("/predict/batch", files=[("files", ("a.jpg", SMEAR))]),
                     lambda: client.post("/v2/models/leukolab/infer", json=V2_REQUEST)):
            started = time.perf_counter()
            refusals.append((send(), time.perf_counter() - started))
        for path in ("/", "/ready", "/metrics", "/v2/health/live", "/v2/health/ready"):
            assert client.get(path).status_code == 200, path
        release.set()
        assert first.result(30).status_code == 200
    for response, seconds in refusals:
        assert response.status_code == 503 and response.headers["retry-after"] == "2", response.text
        assert response.json()["reason"] == "overloaded" and seconds < 0.5
    assert set(refusals[0][0].json()) == {"detail", "reason"}
    assert set(refusals[2][0].json()) == {"error", "reason"}  # the v2 route answers in the protocol's form
    text = client.get("/metrics").text
    assert metric(text, "leukolab_rejected_requests_total", reason="overloaded") == 3
    assert admission.pending == 0
    assert client.post("/predict", files={"file": ("smear.jpg", SMEAR)}).status_code == 200


def test_v2_inference_in_another_media_type_is_a_415_and_the_server_keeps_serving(model_env):
    client = ready_client(create_app(model_env["uri"], ServingSettings()))
    try:
        for media in ("text/plain", "multipart/form-data; boundary=x", "application/xml"):
            response = client.post("/v2/models/leukolab/infer", content=b'{"inputs": []}', headers={"content-type": media})
            assert response.status_code == 415 and response.json()["reason"] == "unsupported_media_type", media
            assert set(response.json()) == {"error", "reason"}
            assert client.post("/v2/models/leukolab/infer", json=V2_REQUEST).status_code == 200
    finally:
        client.__exit__(None, None, None)


def test_with_a_token_the_model_routes_want_it_and_health_and_metrics_stay_open(model_env):
    client = ready_client(create_app(model_env["uri"], ServingSettings(api_token=TOKEN)))
    good, bad = {"Authorization": f"Bearer {TOKEN}"}, {"Authorization": "Bearer not-it"}
    try:
        for path in ("/", "/ready", "/metrics", "/v2/health/live", "/v2/health/ready", "/v2", "/openapi.json"):
            assert client.get(path).status_code == 200, path
        calls = {"/predict": lambda **h: client.post("/predict", files={"file": ("s.jpg", SMEAR)}, **h),
                 "/predict/batch": lambda **h: client.post("/predict/batch", files=[("files", ("s.jpg", SMEAR))], **h),
                 "/version": lambda **h: client.get("/version", **h),
                 "v2 infer": lambda **h: client.post("/v2/models/leukolab/infer", json=V2_REQUEST, **h),
                 "v2 metadata": lambda **h: client.get("/v2/models/leukolab", **h)}
        for name, call in calls.items():
            for headers in ({}, {"headers": bad}, {"headers": {"Authorization": f"Basic {TOKEN}"}}):
                response = call(**headers)
                assert response.status_code == 401 and response.json()["reason"] == "unauthorized", (name, headers)
                assert response.headers["www-authenticate"].startswith("Bearer")
            assert call(headers=good).status_code == 200, name
        assert set(calls["v2 infer"]().json()) == {"error", "reason"}
        assert "HTTPBearer" in client.get("/openapi.json").json()["components"]["securitySchemes"]
    finally:
        client.__exit__(None, None, None)


def test_an_exposed_server_needs_a_token_or_insecure():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")
    check_exposure("127.0.0.1", "", insecure=False)
    check_exposure("0.0.0.0", TOKEN, insecure=False)
    check_exposure("0.0.0.0", "", insecure=True)
    with pytest.raises(SystemExit, match="LEUKOLAB_API_TOKEN"):
        check_exposure("0.0.0.0", "", insecure=False)
    assert TOKEN not in repr(ServingSettings(api_token=TOKEN))


@pytest.mark.integration
def test_the_real_server_refuses_to_start_exposed_without_a_token():
    env = {key: value for key, value in os.environ.items() if key != "LEUKOLAB_API_TOKEN"}
    finished = subprocess.run([sys.executable, "-m", "leukolab.serving", "--host", "0.0.0.0", "--port",
                               str(free_port("0.0.0.0"))], env=env, capture_output=True, text=True, timeout=60)
    assert finished.returncode != 0 and "refusing to serve on 0.0.0.0 without a token" in finished.stderr


async def predict_all(url: str, count: int) -> list[int]:
    async with httpx.AsyncClient(base_url=url, timeout=60, trust_env=False,
                                 headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        files = [("files", (f"{i}.jpg", jpeg((200, 10 * i, 160)))) for i in range(8)]
        responses = await asyncio.gather(*(http.post("/predict/batch", files=files) for _ in range(count)))
    return [response.status_code for response in responses]


def admitted(metrics_text: str) -> float:
    """Batch requests the server holds or has answered."""
    return metric(metrics_text, "leukolab_pending_requests") + metric(
        metrics_text, "leukolab_requests_total", route="/predict/batch", status="200")


@pytest.mark.integration
def test_sigterm_drains_requests_in_flight_then_exits_0_and_never_logs_the_token(model_env, tmp_path, monkeypatch):
    """Sixteen batch requests in flight at SIGTERM: readiness turns 503 at once, new work is refused, all are
    answered, the process exits 0 well within drain_seconds, and the token is nowhere in its log."""
    monkeypatch.setenv("LEUKOLAB_API_TOKEN", TOKEN)
    monkeypatch.setenv("LEUKOLAB_DRAIN_SECONDS", "30")
    monkeypatch.setenv("LEUKOLAB_INFERENCE_WORKERS", "1")
    server = start_server(model_env["uri"], log_path=tmp_path / "server.log", timeout=90)
    try:
        assert predict_for_demo(SMEAR, api_url=server.url)["decision"] in ("accept", "refer")  # the demo sends the token
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(asyncio.run, predict_all(server.url, 16))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and admitted(httpx.get(f"{server.url}/metrics").text) < 16:
                time.sleep(0.05)  # until the server has taken all sixteen (held, or answered already)
            stopped_at = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            ready = httpx.get(f"{server.url}/ready", timeout=5)
            refused = httpx.post(f"{server.url}/predict", files={"file": ("s.jpg", SMEAR)}, timeout=5,
                                 headers={"Authorization": f"Bearer {TOKEN}"})
            statuses = in_flight.result(90)
        code = server.process.wait(30)
    finally:
        server.stop()
    assert (ready.status_code, ready.json()["reason"]) == (503, "draining")
    assert (refused.status_code, refused.json()["reason"]) == (503, "draining") and "retry-after" in refused.headers
    assert statuses == [200] * 16, server.log_tail()
    assert code == 0 and time.monotonic() - stopped_at < 30, server.log_tail()
    log = (tmp_path / "server.log").read_text()
    held = re.search(r"finishing (\d+) held prediction request", log)
    assert held and int(held.group(1)) >= 1 and "drained: every held request was answered" in log, log[-2000:]
    assert TOKEN not in log
