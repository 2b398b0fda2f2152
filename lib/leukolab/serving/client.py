"""A client of the prediction API: images sent one request each or in one batch, each answer with its round trip.

:func:`check_server` is the serve stage's check (``50_serve``): real test images sent to a running server one by
one and then all in one ``POST /predict/batch``, the answers beside the true classes, the latency and the
server's prediction counters; its :class:`ServerCheck` gives the stage's record. :func:`post_images` is the
sending loop under it, which the tests use too; :func:`image_upload` is the multipart body of one image, built
once, as the benchmarks send it many times.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx
import pandas as pd

from leukolab.stages.records import ServeRecord

BOUNDARY = "leukolab-client-boundary"
TIMEOUT = 60.0
"""Seconds a request may take (a first request waits for the model's first forward pass)."""


@dataclass(frozen=True)
class Sent:
    """One request's answer and its round trip in milliseconds."""

    response: httpx.Response
    ms: float


def post_images(url: str, images: list[bytes], filename: str = "smear.png", content_type: str = "image/png",
                timeout: float = TIMEOUT) -> list[Sent]:
    """``POST url`` once per image (the form field ``file``), one at a time, whatever each answers."""
    sent = []
    for image in images:
        started = time.perf_counter()
        response = httpx.post(url, files={"file": (filename, image, content_type)}, timeout=timeout, trust_env=False)
        sent.append(Sent(response, 1000 * (time.perf_counter() - started)))
    return sent


def post_batch(url: str, images: list[bytes], filename: str = "smear.png", content_type: str = "image/png",
               timeout: float = TIMEOUT) -> Sent:
    """All ``images`` in one ``POST url`` (the form field ``files``, as ``/predict/batch`` takes them)."""
    started = time.perf_counter()
    response = httpx.post(url, files=[("files", (filename, image, content_type)) for image in images], timeout=timeout,
                          trust_env=False)
    return Sent(response, 1000 * (time.perf_counter() - started))


def image_upload(image: bytes, filename: str = "smear.jpg", content_type: str = "image/jpeg") -> tuple[bytes, dict[str, str]]:
    """One image as the ``multipart/form-data`` body of ``POST /predict`` (the field ``file``), and its headers."""
    head = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n").encode()
    return head + image + f"\r\n--{BOUNDARY}--\r\n".encode(), {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


@dataclass
class ServerCheck:
    """What :func:`check_server` saw: the server's version, one answer per image (``true_class``,
    ``predicted_class``, ``confidence``, ``round_trip_ms``), the batch's classes and time, the metrics page."""

    version: dict
    answers: pd.DataFrame
    batch_classes: list[str]
    batch_ms: float
    metrics_text: str

    def latency(self) -> pd.DataFrame:
        """Round-trip milliseconds of the single requests (count, mean, std, min, p50, p95, max), and the batch's
        per image."""
        latency = self.answers["round_trip_ms"].describe(percentiles=[0.5, 0.95]).round(1).to_frame("one request per image")
        latency.loc["batch request, per image"] = round(self.batch_ms / len(self.answers), 1)
        return latency

    def batch_agrees(self) -> bool:
        """Whether the batch answered the classes the single requests did."""
        return self.batch_classes == list(self.answers["predicted_class"])

    def prediction_counters(self) -> list[str]:
        """The ``leukolab_predictions_total`` lines of the server's metrics."""
        return [line for line in self.metrics_text.splitlines() if line.startswith("leukolab_predictions_total")]

    def metrics(self) -> dict[str, float]:
        """What the serve stage logs: accuracy over the images sent, the median round trip."""
        return {"serve_accuracy": float((self.answers["true_class"] == self.answers["predicted_class"]).mean()),
                "serve_p50_ms": float(self.answers["round_trip_ms"].median())}

    def record(self, model_uri: str) -> ServeRecord:
        return ServeRecord(model_uri=model_uri, requests=len(self.answers), p50_ms=float(self.answers["round_trip_ms"].median()))


def check_server(url: str, images: pd.DataFrame) -> ServerCheck:
    """Send ``images`` (rows with ``image``, PNG bytes, and ``class_name``) to the server at ``url``: one ``POST
    /predict`` each, then all in one ``POST /predict/batch``; a refused request raises."""
    version = httpx.get(f"{url}/version", trust_env=False).json()
    answers = []
    for sent, true_class in zip(post_images(f"{url}/predict", list(images["image"])), images["class_name"]):
        answer = sent.response.raise_for_status().json()
        answers.append({"true_class": true_class, "predicted_class": answer["predicted_class"],
                        "confidence": answer["confidence"], "round_trip_ms": sent.ms})
    batch = post_batch(f"{url}/predict/batch", list(images["image"]))
    classes = [p["predicted_class"] for p in batch.response.raise_for_status().json()["predictions"]]
    return ServerCheck(version, pd.DataFrame(answers), classes, batch.ms, httpx.get(f"{url}/metrics", trust_env=False).text)
