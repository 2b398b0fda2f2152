"""The model that answers: loaded in a worker thread when the app starts, swapped for each new version of an alias.

:class:`ModelSlot` holds the :class:`LoadedModel` that answers (hot swap: it follows an alias URI to each new
version); the routes take it through :mod:`leukolab.serving.dependencies`. While it is not there, :meth:`ModelSlot.get`
raises the 503 :class:`~leukolab.serving.errors.ApiError` the routes answer with.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from leukolab.images import ImageRules, decode_image
from leukolab.models.folding import fold_batch_norms
from leukolab.predictor.meta import ModelInfo
from leukolab.predictor.smear_model import SmearModel
from leukolab.predictor.uri import is_alias, load_model, resolve_model
from leukolab.serving.batching import MicroBatcher
from leukolab.serving.errors import ApiError
from leukolab.serving.metrics import ServingMetrics
from leukolab.serving.settings import ServingSettings

log = logging.getLogger(__name__)


@dataclass(eq=False)
class LoadedModel:
    """A loaded version, what stands behind its URI, the batcher that runs its forward passes, and how many requests
    use it now (:meth:`ModelSlot.use`): a version swapped out stops its batcher once none does."""

    model: SmearModel
    info: ModelInfo
    batcher: MicroBatcher
    users: int = 0
    unused: asyncio.Event = field(default_factory=asyncio.Event)


class ModelSlot:
    """The model that answers: loaded in a worker thread when the app starts, then, for an alias URI, swapped for
    the alias's new version every time it moves.

    Every ``settings.model_poll_seconds`` (0: never) the alias is resolved again; a new version is loaded, prepared
    for inference and warmed (:meth:`_load`) in a worker thread while the old one answers, gets its batcher, and
    takes the old one's place at once: requests that started on the old version finish on it (each holds its
    :class:`LoadedModel`), and its batcher stops when the last one is done. Each swap is logged and counted
    (``leukolab_model_swaps_total{outcome}``). A version that fails to load is logged and counted ``failed``, the
    old one keeps answering, and that version is not tried again until the alias moves (or the server restarts).
    """

    def __init__(self, settings: ServingSettings, metrics: ServingMetrics):
        self.uri, self.settings, self.metrics = settings.model_uri, settings, metrics
        self.current: LoadedModel | None = None
        self.load_error: Exception | None = None
        self._first_load_done: asyncio.Event | None = None
        self._follow_task: asyncio.Task | None = None
        self._retiring: set[asyncio.Task] = set()
        self._failed_version: str | None = None

    @asynccontextmanager
    async def lifespan(self, app: FastAPI):
        self.current, self.load_error, self._first_load_done = None, None, asyncio.Event()
        self._follow_task = asyncio.create_task(self._load_and_follow())
        yield
        self._follow_task.cancel()
        await asyncio.gather(self._follow_task, *self._retiring, return_exceptions=True)
        if self.current is not None:
            await self.current.batcher.stop()

    async def _load_and_follow(self) -> None:
        try:
            self._serve(await self._load_and_start(None))
        except Exception as error:
            self.load_error = error
        finally:
            self._first_load_done.set()
        if not (self.settings.model_poll_seconds > 0 and is_alias(self.uri)):
            return
        log.info("following %s: resolved every %g s", self.uri, self.settings.model_poll_seconds)
        unresolved = False
        while True:
            await asyncio.sleep(self.settings.model_poll_seconds)
            try:
                resolved = await run_in_threadpool(resolve_model, self.uri)
            except Exception as error:  # the registry is unreachable: keep serving, say so once
                if not unresolved:
                    log.warning("could not resolve %s (%s); the served version answers until it resolves", self.uri, error)
                unresolved = True
                continue
            unresolved = False
            await self._swap_to(resolved)

    async def _swap_to(self, resolved: tuple[str, ModelInfo]) -> None:
        """Load, warm and serve the version ``resolved`` names unless it is the one answering or one that failed."""
        version = resolved[1].version
        serving = self.current.info.version if self.current else None
        if version in (serving, self._failed_version):
            return
        log.info("%s moved to version %s (serving %s): loading it", self.uri, version, serving)
        try:
            loaded = await self._load_and_start(resolved)
        except Exception:  # _load logged it
            self._failed_version = version
            self.metrics.observe_swap("failed")
            log.error("%s version %s could not be loaded; version %s keeps answering, and %s is not tried again "
                      "until the alias moves", self.uri, version, serving, version)
            return
        old = self.current
        self._serve(loaded)
        self._failed_version = None
        self.metrics.observe_swap("swapped")
        log.info("swapped %s: version %s answers now (was %s)", self.uri, version, serving)
        if old is not None:
            task = asyncio.create_task(self._retire(old))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    def _serve(self, loaded: LoadedModel) -> None:
        self.current, self.load_error = loaded, None
        info, model = loaded.info, loaded.model
        self.metrics.set_model(info.name, info.version, info.run_id, model.class_names, model.meta.arriving_colour)

    @staticmethod
    async def _retire(old: LoadedModel) -> None:
        """Stop ``old``'s batcher once no request uses it."""
        while old.users:
            old.unused.clear()
            await old.unused.wait()
        await old.batcher.stop()

    async def _load_and_start(self, resolved: tuple[str, ModelInfo] | None) -> LoadedModel:
        model, info = await run_in_threadpool(self._load, resolved)
        rules = replace(model.image_rules, max_pixels=self.settings.max_pixels)
        batcher = MicroBatcher(lambda files: predict_files(model, self.metrics, files, rules),
                               self.settings.max_batch_size, self.settings.max_wait_ms / 1000,
                               self.settings.inference_workers)
        batcher.start()
        return LoadedModel(model, info, batcher)

    def _load(self, resolved: tuple[str, ModelInfo] | None) -> tuple[SmearModel, ModelInfo]:
        """Load the model, ``resolved`` or as the URI resolves now, fold its batch norms into its convolutions
        (:mod:`leukolab.models.folding`), and warm it: one forward pass on a blank image."""
        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        started = time.perf_counter()
        try:
            model, info = load_model(self.uri, resolved)
            folded = fold_batch_norms(model.network)
            size = model.meta.image_size
            model.predict_prepared([np.zeros((size, size, 3), np.uint8)])
        except Exception:
            log.exception("could not load the model %s", self.uri if resolved is None else resolved[0])
            raise
        log.info("loaded %s (%s) in %.1f s, %d batch norms folded", self.uri, info.label, time.perf_counter() - started,
                 folded)
        return model, info

    @property
    def ready(self) -> bool:
        return self.current is not None

    async def get(self, wait: bool = True) -> LoadedModel:
        """The model that answers, waiting for the first one unless ``wait`` is false; a 503 :class:`ApiError` when
        it is not there."""
        if wait and self._first_load_done is not None:
            await self._first_load_done.wait()
        if self.current is not None:
            return self.current
        if self.load_error is not None:
            raise ApiError(503, f"the model {self.uri} could not be loaded: {self.load_error}", "load_failed")
        raise ApiError(503, f"the model {self.uri} is still loading", "loading")

    @asynccontextmanager
    async def use(self, wait: bool = True) -> AsyncIterator[LoadedModel]:
        """:meth:`get`, counted as a user of that version until the block ends (a swap waits for it)."""
        served = await self.get(wait)
        served.users += 1
        try:
            yield served
        finally:
            served.users -= 1
            if not served.users:
                served.unused.set()


def predict_files(model: SmearModel, metrics: ServingMetrics, files: list[bytes],
                  rules: ImageRules) -> list[tuple[dict, float] | Exception]:
    """Decode and prepare each file (in a worker thread), then one forward pass over those that are images
    (:func:`predict_arrays`); a file that could not be used answers with its error alone (an
    :class:`~leukolab.images.ImageRejected` when it is not a usable image)."""
    prepared: list[np.ndarray | Exception] = []
    for data in files:
        try:
            prepared.append(model.prepare(decode_image(data, rules)))
        except Exception as error:
            prepared.append(error)
    arrays = [array for array in prepared if not isinstance(array, Exception)]
    answers = iter(predict_arrays(model, metrics, arrays) if arrays else [])
    return [array if isinstance(array, Exception) else next(answers) for array in prepared]


def predict_arrays(model: SmearModel, metrics: ServingMetrics, arrays: list[np.ndarray],
                   explain: bool = False) -> list[tuple[dict, float]]:
    """One forward pass over prepared images (in a worker thread; with ``explain`` also the heatmaps' pass): each
    answer with the pass's seconds."""
    started = time.perf_counter()
    answers = model.predict_prepared(arrays, explain)
    seconds = time.perf_counter() - started
    metrics.observe_batch(arrays)
    return [(answer, seconds) for answer in answers]
