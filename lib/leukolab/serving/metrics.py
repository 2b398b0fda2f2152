"""Prometheus metrics of the API, in a registry of their own so that several apps can live in one process.

No label holds a client address or a raw path: routes are labelled by their
template (``/predict``), requests that match no route by ``unmatched``.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

INFERENCE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONFIDENCE_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 11))


class ServingMetrics:
    """The API's metrics; ``low_confidence_alert`` is 1 after ``low_confidence_run`` predictions in a row under the threshold."""

    def __init__(self, low_confidence_threshold: float = 0.5, low_confidence_run: int = 5):
        self.registry = CollectorRegistry()
        self.low_confidence_threshold, self.low_confidence_run = low_confidence_threshold, low_confidence_run
        self._low_in_a_row = 0
        self.requests = Counter("leukolab_requests", "HTTP requests by route template and status code",
                                ["route", "status"], registry=self.registry)
        self.predictions = Counter("leukolab_predictions", "Answered predictions by predicted class",
                                   ["predicted_class"], registry=self.registry)
        self.prediction_errors = Counter("leukolab_prediction_errors", "Refused or failed predictions by reason",
                                         ["reason"], registry=self.registry)
        self.inference_seconds = Histogram("leukolab_inference_seconds", "Model time per image (preprocessing included)",
                                           buckets=INFERENCE_BUCKETS, registry=self.registry)
        self.confidence = Histogram("leukolab_prediction_confidence", "Probability of the predicted class",
                                    buckets=CONFIDENCE_BUCKETS, registry=self.registry)
        self.model_info = Gauge("leukolab_model_info", "The served model (always 1)",
                                ["name", "version", "run_id"], registry=self.registry)
        self.low_confidence_alert = Gauge(
            "leukolab_low_confidence_alert",
            f"1 while the last {low_confidence_run} predictions all had confidence under {low_confidence_threshold}",
            registry=self.registry)

    def set_model(self, name: str | None, version: str | None, run_id: str | None, class_names: list[str]) -> None:
        """Publish the served model and start every class's prediction counter at 0."""
        self.model_info.labels(name=name or "", version=version or "", run_id=run_id or "").set(1)
        for class_name in class_names:
            self.predictions.labels(predicted_class=class_name)

    def observe_prediction(self, predicted_class: str | None, confidence: float | None, seconds: float) -> None:
        """Record one answered prediction (``None`` class and confidence for segmentation-only models)."""
        self.inference_seconds.observe(seconds)
        self.predictions.labels(predicted_class=predicted_class or "none").inc()
        if confidence is None:
            return
        self.confidence.observe(confidence)
        self._low_in_a_row = self._low_in_a_row + 1 if confidence < self.low_confidence_threshold else 0
        self.low_confidence_alert.set(int(self._low_in_a_row >= self.low_confidence_run))

    def observe_error(self, reason: str) -> None:
        self.prediction_errors.labels(reason=reason).inc()

    content_type = CONTENT_TYPE_LATEST

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format (:attr:`content_type`)."""
        return generate_latest(self.registry)


class RequestMetricsMiddleware:
    """ASGI middleware counting every HTTP response by route template and status (500 when the app raised)."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route=route, status=str(status)).inc()
