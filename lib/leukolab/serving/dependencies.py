"""What the routes depend on (``Depends``): the app's settings, its metrics and the model that loads at start-up.

The model loads in a worker thread when the app starts (:meth:`ModelSlot.lifespan`), so routes that do not need
it answer at once; :func:`ready_model` waits for it, :func:`loaded_model` does not. While it is not there, both
raise the 503 :class:`~leukolab.serving.errors.ApiError` the routes answer with.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

import numpy as np
import torch
from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool

from leukolab.publishing.model import SmearModel
from leukolab.serving.batching import MicroBatcher
from leukolab.serving.errors import ApiError
from leukolab.serving.metrics import ServingMetrics
from leukolab.serving.model import ModelInfo, load_model
from leukolab.serving.settings import ServingSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """The served model, what stands behind its URI, and the batcher that runs its forward passes."""

    model: SmearModel
    info: ModelInfo
    batcher: MicroBatcher


class ModelSlot:
    """The served model, loaded in a worker thread when the app starts."""

    def __init__(self, settings: ServingSettings, metrics: ServingMetrics):
        self.uri, self.settings, self.metrics = settings.model_uri, settings, metrics
        self._task: asyncio.Task[LoadedModel] | None = None

    @asynccontextmanager
    async def lifespan(self, app: FastAPI):
        self._task = asyncio.create_task(self._load_and_start())
        yield
        self._task.cancel()
        if self.ready:
            await self._task.result().batcher.stop()

    async def _load_and_start(self) -> LoadedModel:
        model, info = await run_in_threadpool(self._load)
        batcher = MicroBatcher(lambda arrays: predict_arrays(model, self.metrics, arrays), self.settings.max_batch_size,
                               self.settings.max_wait_ms / 1000, self.settings.inference_workers)
        batcher.start()
        return LoadedModel(model, info, batcher)

    def _load(self) -> tuple[SmearModel, ModelInfo]:
        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        try:
            model, info = load_model(self.uri)
        except Exception:
            log.exception("could not load the model %s", self.uri)
            raise
        self.metrics.set_model(info.name, info.version, info.run_id, model.class_names, model.meta.get("mean"))
        log.info("serving %s (%s)", self.uri, info.label)
        return model, info

    @property
    def ready(self) -> bool:
        task = self._task
        return task is not None and task.done() and not task.cancelled() and task.exception() is None

    async def get(self, wait: bool = True) -> LoadedModel:
        """The loaded model, waiting for it unless ``wait`` is false; a 503 :class:`ApiError` when it is not there."""
        if self._task is None or not (wait or self._task.done()):
            raise ApiError(503, f"the model {self.uri} is still loading", "loading")
        try:
            return await asyncio.shield(self._task)
        except Exception as error:
            raise ApiError(503, f"the model {self.uri} could not be loaded: {error}", "load_failed") from None


def predict_arrays(model: SmearModel, metrics: ServingMetrics, arrays: list[np.ndarray],
                   explain: bool = False) -> list[tuple[dict, float]]:
    """One forward pass over prepared images (in a worker thread; with ``explain`` also the heatmaps' pass): each
    answer with the pass's seconds."""
    started = time.perf_counter()
    answers = model.predict_prepared(arrays, explain)
    seconds = time.perf_counter() - started
    metrics.observe_batch(arrays)
    return [(answer, seconds) for answer in answers]


async def get_settings(request: Request) -> ServingSettings:
    """The settings the app was created with (:meth:`ServingSettings.from_env` unless given)."""
    return request.app.state.settings


async def get_metrics(request: Request) -> ServingMetrics:
    return request.app.state.metrics


async def get_model_slot(request: Request) -> ModelSlot:
    return request.app.state.model_slot


async def ready_model(slot: Annotated[ModelSlot, Depends(get_model_slot)]) -> LoadedModel:
    """The served model, waiting for it while it loads; a 503 when it could not be loaded."""
    return await slot.get(wait=True)


async def loaded_model(slot: Annotated[ModelSlot, Depends(get_model_slot)]) -> LoadedModel:
    """The served model if it is loaded now; a 503 while it loads or when it could not be loaded."""
    return await slot.get(wait=False)


Settings = Annotated[ServingSettings, Depends(get_settings)]
Metrics = Annotated[ServingMetrics, Depends(get_metrics)]
Slot = Annotated[ModelSlot, Depends(get_model_slot)]
ReadyModel = Annotated[LoadedModel, Depends(ready_model)]
LoadedNow = Annotated[LoadedModel, Depends(loaded_model)]
