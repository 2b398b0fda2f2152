"""The FastAPI app: loads the model at start-up, predicts on uploaded images, reports health and metrics.

The model loads in a worker thread when the app starts, so ``GET /`` and
``GET /metrics`` answer at once and ``GET /ready`` says 503 until it is there;
``POST /predict`` waits for it. An alias (``models:/leukolab@champion``) is
pinned to its version before loading, so ``/version`` names the weights that
answer. Every refusal is a JSON ``{"detail", "reason"}`` with a 4xx status.

A request's images are read and size-checked before decoding, decoded and
resized one by one in the thread pool (so a bad image is refused on its own),
then answered by the :class:`~leukolab.serving.batching.MicroBatcher`, which
groups the images of concurrent requests into one forward pass.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields, replace
from http import HTTPStatus

import numpy as np
import torch
from fastapi import APIRouter, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.types import Message

import leukolab
from leukolab.images import DEFAULT_MAX_PIXELS, ImageRejected, decode_image
from leukolab.publishing.model import SmearModel
from leukolab.serving.batching import MicroBatcher
from leukolab.serving.metrics import RequestMetricsMiddleware, ServingMetrics
from leukolab.serving.model import DEFAULT_MODEL_URI, ModelInfo, load_model
from leukolab.serving.schemas import BatchPrediction, ErrorBody, Health, Prediction, Readiness, VersionInfo

log = logging.getLogger(__name__)

MULTIPART_ALLOWANCE = 64 * 1024
"""Bytes of multipart framing allowed on top of the files' limit before the body is refused unread."""
PREDICTION_ROUTES = ("/predict", "/predict/batch")
IMAGE_REJECTION_STATUS = {"not_an_image": 415, "too_many_pixels": 413}
"""HTTP status per :class:`ImageRejected` reason; the other reasons are 400."""


@dataclass(frozen=True)
class ServingSettings:
    """Serving limits; :meth:`from_env` reads each from ``LEUKOLAB_<NAME>`` (e.g. ``LEUKOLAB_MAX_PIXELS``)."""

    model_uri: str = DEFAULT_MODEL_URI
    max_upload_bytes: int = 10 * 1024 * 1024
    """Largest file accepted (each file of a batch), refused before decoding."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_batch_files: int = 32
    """Most files one ``POST /predict/batch`` may send."""
    max_batch_size: int = 8
    """Most images in one forward pass (on CPU, larger batches of a small CNN run slower per image)."""
    max_wait_ms: float = 2.0
    """How long a forward pass waits for more images once one is there."""
    inference_workers: int = 2
    """Forward passes that may run at the same time, each in its own thread."""
    torch_threads: int = 0
    """Threads of each forward pass (``torch.set_num_threads``); 0: the server gives each worker its share of the
    cores (see :func:`leukolab.serving.launch.serve_forever`), an app made in another process leaves torch as it is."""
    low_confidence_threshold: float = 0.5
    low_confidence_run: int = 5
    colour_drift_threshold: float = 0.1
    colour_window: int = 100

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ServingSettings:
        environ = os.environ if environ is None else environ
        values = {}
        for field in fields(cls):
            name = f"LEUKOLAB_{field.name.upper()}"
            if environ.get(name):
                try:
                    values[field.name] = type(field.default)(environ[name])
                except ValueError:
                    raise ValueError(f"{name}={environ[name]!r} is not a valid {type(field.default).__name__}") from None
        return cls(**values)


class Refusal(Exception):
    """A request the API answers with an :class:`ErrorBody` and a 4xx/5xx status."""

    def __init__(self, status: int, reason: str, detail: str):
        super().__init__(detail)
        self.status, self.reason, self.detail = status, reason, detail


class ModelSlot:
    """The served model, loaded in a worker thread when the app starts, and the batcher that runs it."""

    def __init__(self, settings: ServingSettings, metrics: ServingMetrics):
        self.uri, self.settings, self.metrics = settings.model_uri, settings, metrics
        self.batcher: MicroBatcher | None = None
        self._task: asyncio.Task | None = None

    @asynccontextmanager
    async def lifespan(self, app: FastAPI):
        self._task = asyncio.create_task(self._load_and_start())
        yield
        self._task.cancel()
        if self.batcher is not None:
            await self.batcher.stop()

    async def _load_and_start(self) -> tuple[SmearModel, ModelInfo]:
        model, info = await run_in_threadpool(self._load)
        self.batcher = MicroBatcher(lambda arrays: _predict_batch(model, self.metrics, arrays), self.settings.max_batch_size,
                                    self.settings.max_wait_ms / 1000, self.settings.inference_workers)
        self.batcher.start()
        return model, info

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

    async def get(self, wait: bool = True) -> tuple[SmearModel, ModelInfo]:
        """The model and its info, waiting for it to load unless ``wait`` is false; a 503 :class:`Refusal` otherwise."""
        if self._task is None or not (wait or self._task.done()):
            raise Refusal(503, "loading", f"the model {self.uri} is still loading")
        try:
            return await asyncio.shield(self._task)
        except Exception as error:
            raise Refusal(503, "load_failed", f"the model {self.uri} could not be loaded: {error}") from None


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
    app.state.settings, app.state.metrics, app.state.model = settings, metrics, slot
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    app.add_exception_handler(Refusal, _refused)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
    app.include_router(router)
    return app


router = APIRouter()
NOT_READY = {503: {"model": ErrorBody, "description": "The model is loading or failed to load"}}
IMAGE_FORMATS = "JPEG, PNG, TIFF, BMP, GIF (first frame) or WebP"


def upload_body(field: str, many: bool) -> dict:
    """The OpenAPI request body of a multipart upload in ``field`` (one file, or an array of them)."""
    file = {"type": "string", "format": "binary"}
    schema = {"type": "array", "items": file, "description": f"The images ({IMAGE_FORMATS}), one part each"} if many \
        else {**file, "description": f"The image: {IMAGE_FORMATS}"}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": [field], "properties": {field: schema}}}}}}


def refusals(many: bool) -> dict:
    """The 4xx/503 answers of a prediction route, for OpenAPI."""
    files = "a file" if many else "the file"
    return {
        400: {"model": ErrorBody, "description": f"Empty, truncated or corrupt image ({files}), or a malformed body"},
        413: {"model": ErrorBody, "description": "A file over max_upload_bytes, an image over max_pixels"
                                                 + (", or more files than max_batch_files" if many else "")},
        415: {"model": ErrorBody, "description": f"{files.capitalize()} is not an image"},
        422: {"model": ErrorBody, "description": f"No file in the multipart field '{'files' if many else 'file'}'"},
        **NOT_READY,
    }


@router.get("/", response_model=Health, summary="Liveness")
async def health(request: Request) -> Health:
    slot = request.app.state.model
    return Health(status="ok", model_uri=slot.uri, model_ready=slot.ready, leukolab_version=leukolab.__version__)


@router.get("/ready", response_model=Readiness, responses=NOT_READY, summary="Readiness: 200 once the model is loaded")
async def ready(request: Request) -> Readiness:
    await request.app.state.model.get(wait=False)
    return Readiness(status="ready")


@router.get("/version", response_model=VersionInfo, responses=NOT_READY, summary="The served model")
async def version(request: Request) -> VersionInfo:
    model, info = await request.app.state.model.get()
    return VersionInfo(model_uri=info.uri, name=info.name, version=info.version, run_id=info.run_id,
                       dataset_fingerprint=info.dataset_fingerprint, task=model.task, class_names=model.class_names,
                       image_size=int(model.meta["image_size"]), leukolab_version=leukolab.__version__)


@router.post("/predict", response_model=Prediction, summary="Classify (and segment) one smear image",
             openapi_extra=upload_body("file", many=False), responses=refusals(many=False))
async def predict(request: Request) -> Prediction:
    started = time.perf_counter()
    settings = request.app.state.settings
    model, info = await request.app.state.model.get()
    uploads = await read_uploads(request, "file", 1, settings.max_upload_bytes)
    answers = await predict_uploads(request, model, uploads)
    return _prediction(answers[0], model, info, started)


@router.post("/predict/batch", response_model=BatchPrediction, summary="Classify (and segment) several smear images",
             openapi_extra=upload_body("files", many=True), responses=refusals(many=True))
async def predict_batch(request: Request) -> BatchPrediction:
    started = time.perf_counter()
    settings = request.app.state.settings
    model, info = await request.app.state.model.get()
    uploads = await read_uploads(request, "files", settings.max_batch_files, settings.max_upload_bytes)
    answers = await predict_uploads(request, model, uploads)
    predictions = [_prediction(answer, model, info, started) for answer in answers]
    return BatchPrediction(predictions=predictions, model_version=info.label,
                           latency_ms=(time.perf_counter() - started) * 1000)


@router.get("/metrics", response_class=Response, summary="Prometheus metrics",
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
async def prometheus_metrics(request: Request) -> Response:
    metrics = request.app.state.metrics
    return Response(metrics.exposition(), media_type=metrics.content_type)


async def read_uploads(request: Request, field: str, max_files: int, max_bytes: int) -> list[tuple[str, bytes]]:
    """(file name, bytes) of the files in multipart ``field``; bodies over the limits are refused unread."""
    body_limit = max_files * max_bytes + MULTIPART_ALLOWANCE
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > body_limit:
        raise Refusal(413, "file_too_large", f"the upload has {int(declared):,} bytes; the limit is {max_bytes:,} per file")
    received = 0

    async def receive_within_limit() -> Message:  # for bodies sent without Content-Length
        nonlocal received
        message = await request.receive()
        received += len(message.get("body", b""))
        if received > body_limit:
            raise Refusal(413, "file_too_large", f"the upload is over the limit of {max_bytes:,} bytes per file")
        return message

    try:
        async with Request(request.scope, receive_within_limit).form(max_files=max_files, max_fields=10) as form:
            files = [value for value in form.getlist(field) if isinstance(value, UploadFile)]
            if not files:
                got = "a text field" if field in form else f"fields {sorted(form)}" if form else "no form fields"
                raise Refusal(422, "missing_file", f"send the image{'s' if max_files > 1 else ''} as multipart/form-data "
                                                   f"in a field named '{field}' (got {got})")
            uploads = [(upload.filename or f"file {i + 1}", await upload.read()) for i, upload in enumerate(files)]
    except HTTPException as error:
        if error.status_code == 400 and str(error.detail).startswith("Too many files"):
            raise Refusal(413, "too_many_files", f"send at most {max_files} file{'s' if max_files > 1 else ''} "
                                                 f"per request to {request.url.path}") from None
        raise
    for name, data in uploads:
        if len(data) > max_bytes:
            raise Refusal(413, "file_too_large", f"{name!r} has {len(data):,} bytes; the limit is {max_bytes:,}")
    return uploads


async def predict_uploads(request: Request, model: SmearModel, uploads: list[tuple[str, bytes]]) -> list[tuple[dict, float]]:
    """Decode the uploads in a worker thread (refusing the request at the first bad one), then predict them in batches."""
    settings, batcher = request.app.state.settings, request.app.state.model.batcher
    arrays = await run_in_threadpool(_prepare_all, model, uploads, settings.max_pixels)
    answers = await asyncio.gather(*(batcher.submit(array) for array in arrays))
    for answer, seconds in answers:
        request.app.state.metrics.observe_prediction(answer.get("predicted_class"), answer.get("confidence"), seconds)
    return answers


def _prepare_all(model: SmearModel, uploads: list[tuple[str, bytes]], max_pixels: int) -> list[np.ndarray]:
    """Each upload decoded and resized for the network; a :class:`Refusal` naming the first that is not a usable image."""
    arrays = []
    for index, (name, data) in enumerate(uploads):
        try:
            arrays.append(model.prepare(decode_image(data, max_pixels=max_pixels)))
        except ImageRejected as error:
            which = f"file {index + 1} ({name!r}): " if len(uploads) > 1 else ""
            raise Refusal(IMAGE_REJECTION_STATUS.get(error.reason, 400), error.reason, f"{which}{error}") from None
    return arrays


def _predict_batch(model: SmearModel, metrics: ServingMetrics, arrays: list[np.ndarray]) -> list[tuple[dict, float]]:
    """One forward pass over prepared images (in the batcher's thread): each answer with the pass's seconds."""
    started = time.perf_counter()
    answers = model.predict_prepared(arrays)
    seconds = time.perf_counter() - started
    metrics.observe_batch(arrays)
    return [(answer, seconds) for answer in answers]


def _prediction(answer: tuple[dict, float], model: SmearModel, info: ModelInfo, started: float) -> Prediction:
    return Prediction.from_answer(answer[0], model.class_names, info.label, (time.perf_counter() - started) * 1000)


def _error_response(request: Request, status: int, reason: str, detail: str) -> JSONResponse:
    if getattr(request.scope.get("route"), "path", None) in PREDICTION_ROUTES:
        request.app.state.metrics.observe_error(reason)
    return JSONResponse(ErrorBody(detail=detail, reason=reason).model_dump(), status_code=status)


async def _refused(request: Request, error: Refusal) -> JSONResponse:
    return _error_response(request, error.status, error.reason, error.detail)


async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
    if error.status_code == 400:  # the multipart body could not be parsed
        return _error_response(request, 400, "malformed_request",
                               f"{error.detail}: send images as multipart/form-data ('file' for /predict, 'files' for /predict/batch)")
    try:
        reason = HTTPStatus(error.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        reason = f"http_{error.status_code}"
    return _error_response(request, error.status_code, reason, str(error.detail))


async def _internal_error(request: Request, error: Exception) -> JSONResponse:
    """A JSON 500 for a bug (Starlette re-raises the error afterwards, so the server logs its traceback)."""
    return _error_response(request, 500, "internal_error", f"internal error: {type(error).__name__}")
