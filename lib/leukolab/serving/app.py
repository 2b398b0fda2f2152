"""The FastAPI app: loads the model at start-up, predicts on uploaded images, reports health and metrics.

The model loads in a worker thread when the app starts, so ``GET /`` and ``GET /metrics`` answer at once and
``GET /ready`` says 503 until it is there; ``POST /predict`` waits for it. An alias (``models:/leukolab@champion``)
is pinned to its version before loading, so ``/version`` names the weights that answer. Every refusal is a JSON
``{"detail", "reason"}`` with a 4xx status.

The app is made of: :mod:`~leukolab.serving.settings` (the limits), :mod:`~leukolab.serving.dependencies` (what
routes take: settings, metrics, the loaded model), :mod:`~leukolab.serving.model_slot` (the model that answers, hot
swapped), :mod:`~leukolab.serving.errors` (refusals as exceptions and
their handlers), :mod:`~leukolab.serving.uploads` (reading and decoding images) and
:mod:`~leukolab.serving.routes`, with the Open Inference Protocol's in :mod:`~leukolab.serving.v2`.
"""

from __future__ import annotations

from dataclasses import replace

from fastapi import FastAPI

import leukolab
from leukolab.review.keeping import keeper_from_env
from leukolab.serving.admission import Admission
from leukolab.serving.errors import install_error_handlers
from leukolab.serving.metrics import RequestMetricsMiddleware, ServingMetrics
from leukolab.serving.model_slot import ModelSlot
from leukolab.serving.routes import router
from leukolab.serving.settings import ServingSettings
from leukolab.serving.v2 import include as include_v2

__all__ = ["ServingSettings", "create_app"]


def create_app(model_uri: str | None = None, settings: ServingSettings | None = None) -> FastAPI:
    """The API for ``model_uri`` (default: ``settings.model_uri``, i.e. ``LEUKOLAB_MODEL_URI`` or the champion)."""
    settings = settings or ServingSettings.from_env()
    if model_uri:
        settings = replace(settings, model_uri=model_uri)
    metrics = ServingMetrics(settings.low_confidence_threshold, settings.low_confidence_run,
                             settings.colour_drift_threshold, settings.colour_window)
    slot = ModelSlot(settings, metrics)
    app = FastAPI(title="leukolab", version=leukolab.__version__, lifespan=slot.lifespan,
                  description="Acute Lymphoblastic Leukemia detection in blood smear images (research use only).")
    app.state.settings, app.state.metrics, app.state.model_slot = settings, metrics, slot
    app.state.admission = Admission(settings.max_pending, metrics, settings.retry_after_seconds)
    app.state.review_keeper = keeper_from_env(metrics.registry)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    install_error_handlers(app, metrics)
    app.include_router(router)
    include_v2(app)
    return app
