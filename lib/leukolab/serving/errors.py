"""Refusals as exceptions: :class:`ApiError` (and :class:`~leukolab.images.ImageRejected`, Starlette's
``HTTPException``, a bug) answered as a JSON :class:`~leukolab.serving.schemas.ErrorBody` by the app's handlers, and
under ``/v2`` as the Open Inference Protocol's :class:`~leukolab.serving.protocol.V2Error`."""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from leukolab.images import ImageRejected
from leukolab.serving.metrics import ServingMetrics
from leukolab.serving.protocol import PREFIX, V2Error
from leukolab.serving.schemas import ErrorBody

PREDICTION_ROUTES = ("/predict", "/predict/batch", "/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer")
"""Routes whose refusals count in ``leukolab_prediction_errors_total``."""
IMAGE_REJECTION_STATUS = {"not_an_image": 415, "too_many_pixels": 413}
"""HTTP status per :class:`ImageRejected` reason; the other reasons are 400."""


class ApiError(Exception):
    """A request the API refuses: answered with ``status``, ``{"detail": detail, "reason": reason}`` and ``headers``
    (e.g. ``Retry-After``)."""

    def __init__(self, status: int, detail: str, reason: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.reason, self.headers = status, detail, reason, headers

    @classmethod
    def from_image_rejection(cls, error: ImageRejected) -> ApiError:
        return cls(IMAGE_REJECTION_STATUS.get(error.reason, 400), str(error), error.reason)

    @classmethod
    def from_http_exception(cls, error: HTTPException) -> ApiError:
        if error.status_code == 400:  # the multipart body could not be parsed
            return cls(400, f"{error.detail}: send images as multipart/form-data ('file' for /predict, 'files' for "
                            "/predict/batch)", "malformed_request")
        try:
            reason = HTTPStatus(error.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
        except ValueError:
            reason = f"http_{error.status_code}"
        return cls(error.status_code, str(error.detail), reason)

    @classmethod
    def from_validation_error(cls, error: RequestValidationError) -> ApiError:
        return cls(422, f"invalid request: {describe(error.errors())}", "invalid_request")


def describe(problems: Sequence[dict]) -> str:
    """Pydantic's validation errors in a line: ``where: what`` for the first three."""
    return "; ".join(f"{'.'.join(map(str, problem['loc'])) or 'body'}: {problem['msg']}" for problem in problems[:3])


def install_error_handlers(app: FastAPI, metrics: ServingMetrics) -> None:
    """Answer every refusal of ``app`` as an :class:`ErrorBody`, counting those of the prediction routes in ``metrics``."""

    def respond(request: Request, error: ApiError) -> JSONResponse:
        if getattr(request.scope.get("route"), "path", None) in PREDICTION_ROUTES:
            metrics.observe_error(error.reason)
        if request.url.path == PREFIX or request.url.path.startswith(f"{PREFIX}/"):
            body = V2Error(error=error.detail, reason=error.reason)
        else:
            body = ErrorBody(detail=error.detail, reason=error.reason)
        return JSONResponse(body.model_dump(), status_code=error.status, headers=error.headers)

    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return respond(request, error)

    async def image_rejected(request: Request, error: ImageRejected) -> JSONResponse:
        return respond(request, ApiError.from_image_rejection(error))

    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return respond(request, ApiError.from_http_exception(error))

    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        return respond(request, ApiError.from_validation_error(error))

    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        """A JSON 500 for a bug (Starlette re-raises the error afterwards, so the server logs its traceback)."""
        return respond(request, ApiError(500, f"internal error: {type(error).__name__}", "internal_error"))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(ImageRejected, image_rejected)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(Exception, internal_error)
