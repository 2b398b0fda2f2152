"""What the routes depend on (``Depends``): the app's settings, its metrics, the keeper of referred cases and the
model that answers.

The model loads in a worker thread when the app starts (:mod:`leukolab.serving.model_slot`), so routes that do not
need it answer at once; :func:`ready_model` waits for it, :func:`loaded_model` does not. While it is not there, both
raise the 503 :class:`~leukolab.serving.errors.ApiError` the routes answer with.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request

from leukolab.review.keeping import ReferredKeeper
from leukolab.serving.metrics import ServingMetrics
from leukolab.serving.model_slot import LoadedModel, ModelSlot
from leukolab.serving.settings import ServingSettings


async def get_settings(request: Request) -> ServingSettings:
    """The settings the app was created with (:meth:`ServingSettings.from_env` unless given)."""
    return request.app.state.settings


async def get_metrics(request: Request) -> ServingMetrics:
    return request.app.state.metrics


async def get_review_keeper(request: Request) -> ReferredKeeper | None:
    """The keeper of referred cases (``LEUKOLAB_KEEP_REFERRED=1``), else None."""
    return request.app.state.review_keeper


async def get_model_slot(request: Request) -> ModelSlot:
    return request.app.state.model_slot


async def ready_model(slot: Annotated[ModelSlot, Depends(get_model_slot)]) -> AsyncIterator[LoadedModel]:
    """The model that answers, waiting for it while it loads (a 503 when it could not be loaded); the request uses
    this version to its end, even when a newer one takes its place meanwhile."""
    async with slot.use(wait=True) as served:
        yield served


async def loaded_model(slot: Annotated[ModelSlot, Depends(get_model_slot)]) -> AsyncIterator[LoadedModel]:
    """The model that answers if it is loaded now; a 503 while it loads or when it could not be loaded."""
    async with slot.use(wait=False) as served:
        yield served


Settings = Annotated[ServingSettings, Depends(get_settings)]
Metrics = Annotated[ServingMetrics, Depends(get_metrics)]
Slot = Annotated[ModelSlot, Depends(get_model_slot)]
Keeper = Annotated[ReferredKeeper | None, Depends(get_review_keeper)]
ReadyModel = Annotated[LoadedModel, Depends(ready_model)]
LoadedNow = Annotated[LoadedModel, Depends(loaded_model)]
