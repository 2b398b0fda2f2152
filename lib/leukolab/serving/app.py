"""The FastAPI app: loads the model at start-up, predicts on uploaded images, reports health and metrics.

The model loads in a worker thread when the app starts, so ``GET /`` and
``GET /metrics`` answer at once and ``GET /ready`` says 503 until it is there;
``POST /predict`` waits for it. An alias (``models:/leukolab@champion``) is
pinned to its version before loading, so ``/version`` names the weights that
answer. Every refusal is a JSON ``{"detail", "reason"}`` with a 4xx status.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields, replace
from http import HTTPStatus

from fastapi import APIRouter, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.types import Message

import leukolab
from leukolab.images import DEFAULT_MAX_PIXELS, ImageRejected, decode_image
from leukolab.pyfunc import SmearModel
from leukolab.serving.metrics import RequestMetricsMiddleware, ServingMetrics
from leukolab.serving.model import DEFAULT_MODEL_URI, ModelInfo, load_model
from leukolab.serving.schemas import ErrorBody, Health, Prediction, Readiness, VersionInfo

log = logging.getLogger(__name__)

MULTIPART_ALLOWANCE = 64 * 1024
"""Bytes of multipart framing allowed on top of ``max_upload_bytes`` before the body is refused unread."""
IMAGE_REJECTION_STATUS = {"not_an_image": 415, "too_many_pixels": 413}
"""HTTP status per :class:`ImageRejected` reason; the other reasons are 400."""


@dataclass(frozen=True)
class ServingSettings:
    """Serving limits; :meth:`from_env` reads each from ``LEUKOLAB_<NAME>`` (e.g. ``LEUKOLAB_MAX_PIXELS``)."""

    model_uri: str = DEFAULT_MODEL_URI
    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = DEFAULT_MAX_PIXELS
    low_confidence_threshold: float = 0.5
    low_confidence_run: int = 5

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
    """The served model, loaded in a worker thread when the app starts."""

    def __init__(self, uri: str, metrics: ServingMetrics):
        self.uri, self.metrics = uri, metrics
        self._task: asyncio.Task | None = None

    @asynccontextmanager
    async def lifespan(self, app: FastAPI):
        self._task = asyncio.create_task(run_in_threadpool(self._load))
        yield
        self._task.cancel()

    def _load(self) -> tuple[SmearModel, ModelInfo]:
        try:
            model, info = load_model(self.uri)
        except Exception:
            log.exception("could not load the model %s", self.uri)
            raise
        self.metrics.set_model(info.name, info.version, info.run_id, model.class_names)
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
    metrics = ServingMetrics(settings.low_confidence_threshold, settings.low_confidence_run)
    slot = ModelSlot(settings.model_uri, metrics)
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
UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary",
                            "description": "The image: JPEG, PNG, TIFF, BMP, GIF (first frame), ..."}},
}}}}}


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


@router.post(
    "/predict", response_model=Prediction, summary="Classify (and segment) one smear image", openapi_extra=UPLOAD_BODY,
    responses={
        400: {"model": ErrorBody, "description": "Empty, truncated or corrupt image, or a malformed body"},
        413: {"model": ErrorBody, "description": "File over max_upload_bytes or image over max_pixels"},
        415: {"model": ErrorBody, "description": "The file is not an image"},
        422: {"model": ErrorBody, "description": "No file in the multipart field 'file'"},
        **NOT_READY,
    },
)
async def predict(request: Request) -> Prediction:
    started = time.perf_counter()
    settings, metrics = request.app.state.settings, request.app.state.metrics
    model, info = await request.app.state.model.get()
    data = await read_upload(request, settings.max_upload_bytes)
    try:
        answer, seconds = await run_in_threadpool(_infer, model, data, settings.max_pixels)
    except ImageRejected as error:
        raise Refusal(IMAGE_REJECTION_STATUS.get(error.reason, 400), error.reason, str(error)) from None
    metrics.observe_prediction(answer.get("predicted_class"), answer.get("confidence"), seconds)
    return Prediction.from_answer(answer, model.class_names, info.label, (time.perf_counter() - started) * 1000)


@router.get("/metrics", response_class=Response, summary="Prometheus metrics",
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
async def prometheus_metrics(request: Request) -> Response:
    metrics = request.app.state.metrics
    return Response(metrics.exposition(), media_type=metrics.content_type)


async def read_upload(request: Request, max_bytes: int) -> bytes:
    """The multipart field ``file`` of the request; bodies over ``max_bytes`` (plus framing) are refused unread."""
    body_limit = max_bytes + MULTIPART_ALLOWANCE
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > body_limit:
        raise Refusal(413, "file_too_large", f"the upload has {int(declared):,} bytes; the limit is {max_bytes:,}")
    received = 0

    async def receive_within_limit() -> Message:  # for bodies sent without Content-Length
        nonlocal received
        message = await request.receive()
        received += len(message.get("body", b""))
        if received > body_limit:
            raise Refusal(413, "file_too_large", f"the upload is over the limit of {max_bytes:,} bytes")
        return message

    async with Request(request.scope, receive_within_limit).form(max_files=1, max_fields=10) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            got = "a text field" if upload is not None else f"fields {sorted(form)}" if form else "no form fields"
            raise Refusal(422, "missing_file", f"send the image as multipart/form-data in a field named 'file' (got {got})")
        data = await upload.read()
    if len(data) > max_bytes:
        raise Refusal(413, "file_too_large", f"the file has {len(data):,} bytes; the limit is {max_bytes:,}")
    return data


def _infer(model: SmearModel, data: bytes, max_pixels: int) -> tuple[dict, float]:
    """Decode and predict one image (runs in a worker thread); the answer and the model's seconds."""
    image = decode_image(data, max_pixels=max_pixels)
    started = time.perf_counter()
    answer = model.predict_images([image])[0]
    return answer, time.perf_counter() - started


def _error_response(request: Request, status: int, reason: str, detail: str) -> JSONResponse:
    if getattr(request.scope.get("route"), "path", None) == "/predict":
        request.app.state.metrics.observe_error(reason)
    return JSONResponse(ErrorBody(detail=detail, reason=reason).model_dump(), status_code=status)


async def _refused(request: Request, error: Refusal) -> JSONResponse:
    return _error_response(request, error.status, error.reason, error.detail)


async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
    if error.status_code == 400:  # the multipart body could not be parsed
        return _error_response(request, 400, "malformed_request",
                               f"{error.detail}: send the image as multipart/form-data in a field named 'file'")
    try:
        reason = HTTPStatus(error.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        reason = f"http_{error.status_code}"
    return _error_response(request, error.status_code, reason, str(error.detail))


async def _internal_error(request: Request, error: Exception) -> JSONResponse:
    """A JSON 500 for a bug (Starlette re-raises the error afterwards, so the server logs its traceback)."""
    return _error_response(request, 500, "internal_error", f"internal error: {type(error).__name__}")
