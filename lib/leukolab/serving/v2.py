"""The Open Inference Protocol (v2, REST) beside the API's own routes, for Triton, KServe and MLServer clients:
health, server and model metadata, model readiness and inference, with ``{name}`` the registered model's name and
the ``/versions/{version}`` forms naming its version.

Inference goes the way of ``POST /predict``: the body is read within the upload limits, each image decoded and
checked against the model's image rules, the forward passes run in the micro-batcher, the metrics count it (under
the route's template) and each answer carries the accept/refer decision (and the reason of a referral) as ``/predict`` decides it
(:func:`~leukolab.serving.routes.predict_uploads`, :func:`~leukolab.serving.routes.prediction`). Refusals answer
``{"error", "reason"}`` (:mod:`leukolab.serving.errors`). Kept free of ``from __future__ import annotations``:
FastAPI reads the routes' annotations at run time.
"""

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response

import leukolab
from leukolab.serving.admission import Admitted
from leukolab.serving.auth import Authorized
from leukolab.serving.dependencies import Keeper, LoadedNow, Metrics, ReadyModel, Settings
from leukolab.serving.errors import ApiError
from leukolab.serving.model_slot import LoadedModel
from leukolab.serving.protocol import (BINARY_HEADER, EXTENSIONS, IMAGE_INPUT, SERVER_NAME, InferenceRequest,
                                       InferenceResponse, Liveness, ModelMetadata, ModelReadiness, ServerMetadata,
                                       ServerReadiness, TensorMetadata, V2Error, output_metadata)
from leukolab.serving.routes import Started, answered, predict_uploads, refuse_while_draining
from leukolab.serving.schemas import Prediction
from leukolab.serving.tensors import Tensor, encode_response, image_files, parse_request, requested_outputs
from leukolab.serving.uploads import read_body

router = APIRouter(tags=["Open Inference Protocol v2"])
REFUSALS = {
    400: "Malformed JSON or binary body; wrong input name, datatype or shape; bad base64; unknown output; an empty, "
         "truncated, corrupt or unusable image (too small, too elongated); a model that only segments",
    404: "No model of that name, or no such version",
    413: "An image over max_upload_bytes or max_pixels, or more images than max_batch_files",
    401: "The server has a token (LEUKOLAB_API_TOKEN) and the request did not send it as Authorization: Bearer",
    415: "A body that is neither application/json nor application/octet-stream, or an element that is not an image",
    422: "A parameter of the wrong type",
    503: "The model is loading or failed to load; or, with Retry-After, the server holds max_pending requests "
         "(reason overloaded) or is shutting down (reason draining)",
}
INFER_MEDIA = ("application/json", "application/octet-stream")
MODEL = "/v2/models/{name}"
VERSION = "/v2/models/{name}/versions/{version}"
INFER_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary", "description": (
        f"Binary tensor extension: the InferenceRequest JSON, as many bytes as the header {BINARY_HEADER} says, "
        "then the raw tensor: per image its length (4 bytes, little-endian) and its file")}}}}}
BINARY_ANSWER = {"description": f"All JSON, or with binary outputs the InferenceResponse JSON ({BINARY_HEADER} "
                                "bytes) followed by the raw tensors",
                 "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}


def refusals(*statuses: int) -> dict:
    """The refusals of a v2 route, for OpenAPI."""
    return {status: {"model": V2Error, "description": REFUSALS[status]} for status in statuses}


def include(app: FastAPI) -> None:
    """Add the v2 routes to ``app``, and the inference request's schemas (read by hand: the body may be binary) to
    its OpenAPI document."""
    app.include_router(router)
    document = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schemas = document().setdefault("components", {}).setdefault("schemas", {})
            request = InferenceRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(request.pop("$defs", {}), InferenceRequest=request)
        return app.openapi_schema
    app.openapi = openapi


@router.get("/v2/health/live", response_model=Liveness, summary="v2 liveness")
async def live() -> Liveness:
    return Liveness(live=True)


@router.get("/v2/health/ready", response_model=ServerReadiness, responses=refusals(503), summary="v2 readiness")
async def server_ready(_: LoadedNow, request: Request) -> ServerReadiness:
    refuse_while_draining(request.app.state.admission)
    return ServerReadiness(ready=True)


@router.get("/v2", response_model=ServerMetadata, summary="v2 server metadata")
async def server_metadata() -> ServerMetadata:
    return ServerMetadata(name=SERVER_NAME, version=leukolab.__version__, extensions=EXTENSIONS)


@router.get(MODEL, response_model=ModelMetadata, responses=refusals(401, 404, 422, 503),
            summary="v2 model metadata",
            dependencies=[Authorized])
async def model_metadata(name: str, served: LoadedNow) -> ModelMetadata:
    return metadata(named(served, name))


@router.get(VERSION, response_model=ModelMetadata, responses=refusals(401, 404, 422, 503),
            summary="v2 model version metadata",
            dependencies=[Authorized])
async def version_metadata(name: str, version: str, served: LoadedNow) -> ModelMetadata:
    return metadata(named(served, name, version))


@router.get(f"{MODEL}/ready", response_model=ModelReadiness, responses=refusals(401, 404, 422, 503),
            summary="v2 model readiness",
            dependencies=[Authorized])
async def model_ready(name: str, served: LoadedNow) -> ModelReadiness:
    return ModelReadiness(name=model_name(named(served, name)), ready=True)


@router.get(f"{VERSION}/ready", response_model=ModelReadiness, responses=refusals(401, 404, 422, 503),
            summary="v2 model version readiness", dependencies=[Authorized])
async def version_ready(name: str, version: str, served: LoadedNow) -> ModelReadiness:
    return ModelReadiness(name=model_name(named(served, name, version)), ready=True)


@router.post(f"{MODEL}/infer", response_model=InferenceResponse, summary="v2 inference: classify smear images",
             openapi_extra=INFER_BODY, responses={200: BINARY_ANSWER, **refusals(400, 401, 404, 413, 415, 422, 503)},
             dependencies=[Authorized])
async def infer(_: Admitted, name: str, request: Request, started: Started, served: ReadyModel, settings: Settings,
                metrics: Metrics, keeper: Keeper) -> Response:
    return await answer(request, named(served, name), started, settings, metrics, keeper)


@router.post(f"{VERSION}/infer", response_model=InferenceResponse, summary="v2 inference on a version",
             openapi_extra=INFER_BODY, responses={200: BINARY_ANSWER, **refusals(400, 401, 404, 413, 415, 422, 503)},
             dependencies=[Authorized])
async def infer_version(_: Admitted, name: str, version: str, request: Request, started: Started, served: ReadyModel,
                        settings: Settings, metrics: Metrics, keeper: Keeper) -> Response:
    return await answer(request, named(served, name, version), started, settings, metrics, keeper)


def model_name(served: LoadedModel) -> str:
    """The served model's registered name (``leukolab`` for a ``runs:/`` URI)."""
    return served.info.name or SERVER_NAME


def named(served: LoadedModel, name: str, version: str | None = None) -> LoadedModel:
    """``served`` when it is the model ``name`` (and ``version``); else a 404."""
    if name != model_name(served):
        raise ApiError(404, f"no model {name!r}: this server serves {model_name(served)!r}", "unknown_model")
    if version is not None and version != served.info.version:
        raise ApiError(404, f"{name!r} has no version {version!r} here: version {served.info.version} answers",
                       "unknown_version")
    return served


def metadata(served: LoadedModel) -> ModelMetadata:
    model, info = served.model, served.info
    outputs = [] if model.task == "segmentation" else output_metadata(len(model.class_names))
    return ModelMetadata(name=model_name(served), versions=[info.version] if info.version else [], platform="pytorch",
                         inputs=[TensorMetadata(name=IMAGE_INPUT, datatype="BYTES", shape=[-1])], outputs=outputs,
                         parameters={"class_names": model.class_names, "referral_threshold": info.referral_threshold})


async def answer(request: Request, served: LoadedModel, started: float, settings: Settings,
                 metrics: Metrics, keeper: Keeper) -> Response:
    """Read the inference request, predict its images as ``/predict`` does, answer the outputs it asks for."""
    if served.model.task == "segmentation":
        raise ApiError(400, "this model only segments; v2 inference answers classes", "cannot_classify")
    refuse_other_media(request.headers.get("content-type"))
    body = await read_body(request, settings.max_batch_files, settings.max_upload_bytes)
    inference, raw = parse_request(body, request.headers.get(BINARY_HEADER))
    wanted = requested_outputs(inference)
    files = image_files(inference, raw, settings.max_batch_files, settings.max_upload_bytes)
    uploads = [(IMAGE_INPUT, data) for data in files]
    answers = await predict_uploads(served, uploads, settings.max_pixels, metrics)
    tensors = output_tensors(await answered(uploads, answers, served, started, metrics, keeper), served.model.class_names)
    head = InferenceResponse(model_name=model_name(served), model_version=served.info.version, id=inference.id,
                             outputs=[])
    return encode_response(head, [(tensors[name], binary) for name, binary in wanted])


def refuse_other_media(content_type: str | None) -> None:
    """A 415 unless the body is JSON, the binary extension's octet stream, or unlabelled (as some clients send it)."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media and media not in INFER_MEDIA:
        raise ApiError(415, f"an inference request is {' or '.join(INFER_MEDIA)}, not {media!r}",
                       "unsupported_media_type")


def output_tensors(predictions: list[Prediction], class_names: list[str]) -> dict[str, Tensor]:
    """The outputs of ``predictions``, by name (``reason``: empty for an accepted prediction)."""
    count = len(predictions)
    return {
        "probabilities": Tensor("probabilities", [count, len(class_names)],
                                [one.probabilities[name] for one in predictions for name in class_names]),
        "predicted_class": Tensor("predicted_class", [count], [one.predicted_class for one in predictions]),
        "confidence": Tensor("confidence", [count], [one.confidence for one in predictions]),
        "decision": Tensor("decision", [count], [one.decision for one in predictions]),
        "reason": Tensor("reason", [count], [one.reason or "" for one in predictions]),
    }
