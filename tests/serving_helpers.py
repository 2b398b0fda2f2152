"""What the prediction API's tests share: the limits their apps run with, a test client once its model is ready,
a request to ``/predict`` and ``/predict/batch``, and a metric's value from the exposition text."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from leukolab.serving.app import ServingSettings

LIMITS = ServingSettings(max_upload_bytes=200_000, max_pixels=4_000_000)


def ready_client(app, **options) -> TestClient:
    """Enter a TestClient (running the lifespan) and wait for the model to load."""
    client = TestClient(app, **options).__enter__()
    deadline = time.monotonic() + 60
    while client.get("/ready").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    return client


def predict(client: TestClient, data: bytes, name: str = "smear.jpg"):
    return client.post("/predict", files={"file": (name, data)})


def predict_batch(client: TestClient, images: list[bytes], field: str = "files"):
    return client.post("/predict/batch", files=[(field, (f"smear-{i}.png", data)) for i, data in enumerate(images)])


def metric(text: str, sample_name: str, **labels) -> float:
    """Sum of the samples called ``sample_name`` whose labels include ``labels``."""
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == sample_name and labels.items() <= sample.labels.items())
