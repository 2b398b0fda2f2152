"""The API's routes: liveness, readiness, the served model's version, predictions and Prometheus metrics.

Each route takes what it needs as dependencies (:mod:`leukolab.serving.dependencies`): a prediction waits for the
model, reads its uploads within the limits (:mod:`leukolab.serving.uploads`) and has the
:class:`~leukolab.serving.batching.MicroBatcher` answer them: its workers decode the files of concurrent requests
(a bad image is refused on its own) and predict them in one forward pass. With ``explain=true`` a request's images
skip the batcher: they are decoded, predicted and explained (Grad-CAM, with gradients) together in a thread of the
pool. Kept free of ``from __future__ import annotations``: FastAPI reads the routes' annotations at run time.
"""

import asyncio
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

import leukolab
from leukolab.review.keeping import ReferredKeeper
from leukolab.serving.admission import Admission, Admitted
from leukolab.serving.auth import Authorized
from leukolab.serving.dependencies import Keeper, LoadedNow, Metrics, ReadyModel, Settings, Slot
from leukolab.serving.errors import ApiError
from leukolab.serving.metrics import ServingMetrics
from leukolab.serving.model_slot import LoadedModel, predict_arrays
from leukolab.serving.schemas import BatchPrediction, ErrorBody, Health, Prediction, Readiness, VersionInfo
from leukolab.serving.uploads import Upload, answers_in_order, prepare_all, uploads_in

router = APIRouter()
NOT_READY = {503: {"model": ErrorBody, "description": "The model is loading or failed to load, or the server is "
                                                     "draining (shutting down)"}}
UNAUTHORIZED = {401: {"model": ErrorBody, "description": "The server has a token (LEUKOLAB_API_TOKEN) and the request "
                                                         "did not send it as Authorization: Bearer"}}
BUSY = {503: {"model": ErrorBody, "description": "The model is loading or failed to load; or, with Retry-After, the "
                                                 "server holds max_pending requests (reason overloaded) or is shutting "
                                                 "down (reason draining): retry later or elsewhere"}}
IMAGE_FORMATS = "JPEG, PNG, TIFF, BMP, GIF (first frame) or WebP"


async def request_started() -> float:
    """When the route began handling the request (``time.perf_counter``), for the answers' ``latency_ms``."""
    return time.perf_counter()


Started = Annotated[float, Depends(request_started)]
Explain = Annotated[bool, Query(description="Add heatmap_png to each answer: where the model looked (Grad-CAM of the "
                                            "predicted class). Costs a pass with gradients per request, outside the "
                                            "micro-batcher; models that only segment refuse it (400, cannot_explain)")]


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
        400: {"model": ErrorBody, "description": f"Empty, truncated or corrupt image ({files}), a malformed body, "
                                                 "or explain=true for a model that only segments"},
        413: {"model": ErrorBody, "description": "A file over max_upload_bytes, an image over max_pixels"
                                                 + (", or more files than max_batch_files" if many else "")},
        415: {"model": ErrorBody, "description": f"{files.capitalize()} is not an image"},
        422: {"model": ErrorBody, "description": f"No file in the multipart field '{'files' if many else 'file'}', "
                                                 "or explain is not a boolean"},
        **UNAUTHORIZED, **BUSY,
    }


@router.get("/", response_model=Health, summary="Liveness")
async def health(slot: Slot) -> Health:
    return Health(status="ok", model_uri=slot.uri, model_ready=slot.ready, leukolab_version=leukolab.__version__)


@router.get("/ready", response_model=Readiness, responses=NOT_READY, summary="Readiness: 200 once the model is loaded")
async def ready(_: LoadedNow, request: Request) -> Readiness:
    refuse_while_draining(request.app.state.admission)
    return Readiness(status="ready")


def refuse_while_draining(admission: Admission) -> None:
    """The 503 of a readiness route once the server drains (so load balancers stop sending it work)."""
    if admission.draining:
        raise ApiError(503, "the server is shutting down: it finishes the requests it holds and takes no new ones",
                       "draining")


@router.get("/version", response_model=VersionInfo, responses={**NOT_READY, **UNAUTHORIZED}, summary="The served model",
            dependencies=[Authorized])
async def version(served: ReadyModel) -> VersionInfo:
    model, info = served.model, served.info
    return VersionInfo(model_uri=info.uri, name=info.name, version=info.version, run_id=info.run_id,
                       dataset_fingerprint=info.dataset_fingerprint, referral_threshold=info.referral_threshold,
                       ood_check=model.ood.summary() if model.ood is not None else None,
                       task=model.task, class_names=model.class_names,
                       image_size=model.meta.image_size, leukolab_version=leukolab.__version__)


@router.post("/predict", response_model=Prediction, summary="Classify (and segment) one smear image",
             openapi_extra=upload_body("file", many=False), responses=refusals(many=False), dependencies=[Authorized])
async def predict(_: Admitted, started: Started, served: ReadyModel,
                  uploads: Annotated[list[Upload], Depends(uploads_in("file", many=False))],
                  settings: Settings, metrics: Metrics, keeper: Keeper, explain: Explain = False) -> Prediction:
    answers = await predict_uploads(served, uploads, settings.max_pixels, metrics, explain)
    return (await answered(uploads, answers, served, started, metrics, keeper))[0]


@router.post("/predict/batch", response_model=BatchPrediction, summary="Classify (and segment) several smear images",
             openapi_extra=upload_body("files", many=True), responses=refusals(many=True), dependencies=[Authorized])
async def predict_batch(_: Admitted, started: Started, served: ReadyModel,
                        uploads: Annotated[list[Upload], Depends(uploads_in("files", many=True))],
                        settings: Settings, metrics: Metrics, keeper: Keeper, explain: Explain = False) -> BatchPrediction:
    answers = await predict_uploads(served, uploads, settings.max_pixels, metrics, explain)
    return BatchPrediction(predictions=await answered(uploads, answers, served, started, metrics, keeper),
                           model_version=served.info.label, latency_ms=(time.perf_counter() - started) * 1000)


@router.get("/metrics", response_class=Response, summary="Prometheus metrics",
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
async def prometheus_metrics(metrics: Metrics) -> Response:
    return Response(metrics.exposition(), media_type=metrics.content_type)


async def predict_uploads(served: LoadedModel, uploads: list[Upload], max_pixels: int, metrics: ServingMetrics,
                          explain: bool = False) -> list[tuple[dict, float]]:
    """Have the batcher decode and predict the uploads (refusing the request at the first bad one, in upload order);
    with ``explain``, decode, predict and explain them in a worker thread."""
    if explain and served.model.task == "segmentation":
        raise ApiError(400, "explain=true needs a model that classifies; this one only segments", "cannot_explain")
    if explain:
        arrays = await run_in_threadpool(prepare_all, served.model, uploads, max_pixels)
        answers = await run_in_threadpool(predict_arrays, served.model, metrics, arrays, True)
    else:
        results = await asyncio.gather(*(served.batcher.submit(data) for _, data in uploads), return_exceptions=True)
        answers = answers_in_order(uploads, results)
    for answer, seconds in answers:
        metrics.observe_prediction(answer.get("predicted_class"), answer.get("confidence"), seconds)
    return answers


async def answered(uploads: list[Upload], answers: list[tuple[dict, float]], served: LoadedModel, started: float,
                   metrics: ServingMetrics, keeper: ReferredKeeper | None) -> list[Prediction]:
    """The :class:`Prediction` of each answer (:func:`prediction`); with a ``keeper``, the referred ones' uploads go
    to the review store (in a worker thread) before the answers leave."""
    predictions = [prediction(answer, served, started, metrics) for answer in answers]
    if keeper is not None:
        dumped = [one.model_dump(exclude={"mask", "heatmap_png"}) for one in predictions]
        await run_in_threadpool(keeper.keep, uploads, dumped, served.info.name, served.info.version or served.info.run_id)
    return predictions


def prediction(answer: tuple[dict, float], served: LoadedModel, started: float, metrics: ServingMetrics) -> Prediction:
    """The :class:`Prediction` of one (answer, seconds) of the batcher, timed from ``started``, its decision counted."""
    answered = Prediction.from_answer(answer[0], served.model.class_names, served.info.label,
                                      (time.perf_counter() - started) * 1000, served.info.referral_threshold)
    metrics.observe_decision(answered.decision, answered.reason)
    return answered
