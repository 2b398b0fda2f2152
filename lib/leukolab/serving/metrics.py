"""Prometheus metrics of the API, in a registry of their own so that several apps can live in one process.

No label holds a client address or a raw path: routes are labelled by their
template (``/predict``), requests that match no route by ``unmatched``.

Two drift signals raise gauges: a run of low-confidence predictions, and the
mean colour of the last inputs moving away from the training split's mean
colour (the dataset manifest's ``train_mean``, which the model carries as its
normalisation ``mean``), measured as the Euclidean distance of RGB in [0, 1].
"""

from __future__ import annotations

import threading
from collections import deque

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from leukolab.predictor.decision import LOW_CONFIDENCE, OUT_OF_DISTRIBUTION, REFER

INFERENCE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONFIDENCE_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 11))
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
SWAP_OUTCOMES = ("swapped", "failed")
REJECTION_REASONS = ("overloaded", "draining")


class ServingMetrics:
    """The API's metrics and its two drift alerts (see the module docstring).

    ``low_confidence_alert`` is 1 after ``low_confidence_run`` predictions in a
    row under ``low_confidence_threshold``; ``colour_drift_alert`` is 1 while the
    mean colour of the last ``colour_window`` inputs is more than
    ``colour_drift_threshold`` from the training mean (judged once the window is full).
    """

    def __init__(self, low_confidence_threshold: float = 0.5, low_confidence_run: int = 5,
                 colour_drift_threshold: float = 0.1, colour_window: int = 100):
        self.registry = CollectorRegistry()
        self.low_confidence_threshold, self.low_confidence_run = low_confidence_threshold, low_confidence_run
        self.colour_drift_threshold = colour_drift_threshold
        self._low_in_a_row = 0
        self._recent_colours: deque[np.ndarray] = deque(maxlen=colour_window)
        self._training_colour: np.ndarray | None = None
        self._colour_lock = threading.Lock()
        self.requests = Counter("leukolab_requests", "HTTP requests by route template and status code",
                                ["route", "status"], registry=self.registry)
        self.predictions = Counter("leukolab_predictions", "Answered predictions by predicted class",
                                   ["predicted_class"], registry=self.registry)
        self.referrals = Counter("leukolab_referrals", "Predictions answered refer (refer to a haematologist), by reason: "
                                 "out_of_distribution or low_confidence (under the version's referral_threshold)",
                                 ["reason"], registry=self.registry)
        for reason in (LOW_CONFIDENCE, OUT_OF_DISTRIBUTION):
            self.referrals.labels(reason=reason)  # exported at 0 from the start, so rates and dashboards have a series
        self.prediction_errors = Counter("leukolab_prediction_errors", "Refused or failed predictions by reason",
                                         ["reason"], registry=self.registry)
        self.rejections = Counter("leukolab_rejected_requests", "Prediction requests refused at once with 503 and "
                                  "Retry-After, by reason: overloaded (max_pending held) or draining (shutting down)",
                                  ["reason"], registry=self.registry)
        for reason in REJECTION_REASONS:
            self.rejections.labels(reason=reason)
        self.pending = Gauge("leukolab_pending_requests", "Prediction requests held now (queued or in a forward pass); "
                             "past the server's max_pending they are refused", registry=self.registry)
        self.inference_seconds = Histogram(
            "leukolab_inference_seconds", "Per image: seconds of the batched forward pass (with postprocessing) that answered it",
            buckets=INFERENCE_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("leukolab_batch_size", "Images per forward pass (micro-batching)",
                                    buckets=BATCH_SIZE_BUCKETS, registry=self.registry)
        self.confidence = Histogram("leukolab_prediction_confidence", "Probability of the predicted class",
                                    buckets=CONFIDENCE_BUCKETS, registry=self.registry)
        self.model_info = Gauge("leukolab_model_info", "The model that answers (always 1; one series, replaced on a swap)",
                                ["name", "version", "run_id"], registry=self.registry)
        self.model_swaps = Counter("leukolab_model_swaps", "Attempts to follow the served alias to a new version, by "
                                   "outcome: swapped (it answers now) or failed (it could not load; the old one answers)",
                                   ["outcome"], registry=self.registry)
        for outcome in SWAP_OUTCOMES:
            self.model_swaps.labels(outcome=outcome)
        self.low_confidence_alert = Gauge(
            "leukolab_low_confidence_alert",
            f"1 while the last {low_confidence_run} predictions all had confidence under {low_confidence_threshold}",
            registry=self.registry)
        self.colour_distance = Gauge(
            "leukolab_input_colour_distance",
            f"Distance (RGB in [0, 1]) of the mean colour of the last {colour_window} inputs from the training mean",
            registry=self.registry)
        self.colour_drift_alert = Gauge(
            "leukolab_colour_drift_alert",
            f"1 while leukolab_input_colour_distance is over {colour_drift_threshold} (over a full window of inputs)",
            registry=self.registry)

    def set_model(self, name: str | None, version: str | None, run_id: str | None, class_names: list[str],
                  training_colour: list[float] | None = None) -> None:
        """Publish the model that answers (in place of the one before), start every class's prediction counter at 0,
        note the training mean colour."""
        self.model_info.clear()
        self.model_info.labels(name=name or "", version=version or "", run_id=run_id or "").set(1)
        for class_name in class_names:
            self.predictions.labels(predicted_class=class_name)
        if training_colour is not None:
            self._training_colour = np.asarray(training_colour, dtype=np.float64)

    def observe_swap(self, outcome: str) -> None:
        """Count a swap to a new version of the served alias: ``swapped`` or ``failed``."""
        self.model_swaps.labels(outcome=outcome).inc()

    def observe_prediction(self, predicted_class: str | None, confidence: float | None, seconds: float) -> None:
        """Record one answered prediction (``None`` class and confidence for segmentation-only models)."""
        self.inference_seconds.observe(seconds)
        self.predictions.labels(predicted_class=predicted_class or "none").inc()
        if confidence is None:
            return
        self.confidence.observe(confidence)
        self._low_in_a_row = self._low_in_a_row + 1 if confidence < self.low_confidence_threshold else 0
        self.low_confidence_alert.set(int(self._low_in_a_row >= self.low_confidence_run))

    def observe_decision(self, decision: str, reason: str | None = None) -> None:
        """Count a ``refer`` decision by its reason (``accept`` is every other prediction of
        ``leukolab_predictions_total``)."""
        if decision == REFER:
            self.referrals.labels(reason=reason or LOW_CONFIDENCE).inc()

    def observe_batch(self, images: list[np.ndarray]) -> None:
        """Record one forward pass over ``images`` (H x W x 3 uint8 each): its size and its inputs' colours."""
        self.batch_size.observe(len(images))
        if self._training_colour is None:
            return
        colours = [mean_colour(image) for image in images]
        with self._colour_lock:
            self._recent_colours.extend(colours)
            distance = float(np.linalg.norm(np.mean(self._recent_colours, axis=0) - self._training_colour))
            window_full = len(self._recent_colours) == self._recent_colours.maxlen
        self.colour_distance.set(distance)
        self.colour_drift_alert.set(int(window_full and distance > self.colour_drift_threshold))

    def observe_rejection(self, reason: str) -> None:
        """Count a prediction request refused before any work (:mod:`leukolab.serving.admission`)."""
        self.rejections.labels(reason=reason).inc()

    def observe_error(self, reason: str) -> None:
        self.prediction_errors.labels(reason=reason).inc()

    content_type = CONTENT_TYPE_LATEST

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format (:attr:`content_type`)."""
        return generate_latest(self.registry)


def mean_colour(image: np.ndarray) -> np.ndarray:
    """The mean RGB of an H x W x 3 uint8 image, in [0, 1] (a sum by matrix product: numpy reduces the pixel axis of
    an N x 3 array ten times slower)."""
    pixels = image.reshape(-1, 3)
    return np.ones(len(pixels)) @ pixels / (255.0 * len(pixels))


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
