"""Uploaded images: read from a multipart body (or the JSON body of ``/v2`` inference) within the limits, refused
unread when over them, then decoded.

Kept free of ``from __future__ import annotations``: FastAPI reads the dependencies' annotations at run time.
"""

from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

import numpy as np
from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.types import Message

from leukolab.images import ImageRejected, decode_image
from leukolab.predictor.smear_model import SmearModel
from leukolab.serving.dependencies import Settings
from leukolab.serving.errors import ApiError

MULTIPART_ALLOWANCE = 64 * 1024
"""Bytes of multipart framing allowed on top of the files' limit before the body is refused unread."""

Upload = tuple[str, bytes]
"""An uploaded file's name and bytes."""


def uploads_in(field: str, many: bool) -> Callable[..., Coroutine[Any, Any, list[Upload]]]:
    """A dependency: the files of multipart ``field`` (at most ``max_batch_files`` when ``many``, else one)."""
    async def uploads(request: Request, settings: Settings) -> list[Upload]:
        max_files = settings.max_batch_files if many else 1
        return await read_uploads(request, field, max_files, settings.max_upload_bytes)
    return uploads


def within_limit(request: Request, body_limit: int, max_bytes: int) -> Request:
    """``request`` whose body is refused (413) when over ``body_limit`` bytes: at once when its Content-Length says
    so, else as it streams in. ``max_bytes``: the limit per file, for the message."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > body_limit:
        raise ApiError(413, f"the upload has {int(declared):,} bytes; the limit is {max_bytes:,} per file", "file_too_large")
    received = 0

    async def receive_within_limit() -> Message:  # for bodies sent without Content-Length
        nonlocal received
        message = await request.receive()
        received += len(message.get("body", b""))
        if received > body_limit:
            raise ApiError(413, f"the upload is over the limit of {max_bytes:,} bytes per file", "file_too_large")
        return message

    return Request(request.scope, receive_within_limit)


async def read_body(request: Request, max_files: int, max_bytes: int) -> bytes:
    """The body of a JSON request carrying up to ``max_files`` files of ``max_bytes`` as base64 (or raw)."""
    base64_bytes = -(-max_bytes // 3) * 4
    return await within_limit(request, max_files * (base64_bytes + 8) + MULTIPART_ALLOWANCE, max_bytes).body()


async def read_uploads(request: Request, field: str, max_files: int, max_bytes: int) -> list[Upload]:
    """(file name, bytes) of the files in multipart ``field``; bodies over the limits are refused unread."""
    bounded = within_limit(request, max_files * max_bytes + MULTIPART_ALLOWANCE, max_bytes)
    try:
        async with bounded.form(max_files=max_files, max_fields=10) as form:
            files = [value for value in form.getlist(field) if isinstance(value, UploadFile)]
            if not files:
                got = "a text field" if field in form else f"fields {sorted(form)}" if form else "no form fields"
                raise ApiError(422, f"send the image{'s' if max_files > 1 else ''} as multipart/form-data in a field "
                                    f"named '{field}' (got {got})", "missing_file")
            uploads = [(upload.filename or f"file {i + 1}", await upload.read()) for i, upload in enumerate(files)]
    except HTTPException as error:
        if error.status_code == 400 and str(error.detail).startswith("Too many files"):
            raise ApiError(413, f"send at most {max_files} file{'s' if max_files > 1 else ''} per request to "
                                f"{request.url.path}", "too_many_files") from None
        raise
    for name, data in uploads:
        if len(data) > max_bytes:
            raise ApiError(413, f"{name!r} has {len(data):,} bytes; the limit is {max_bytes:,}", "file_too_large")
    return uploads


def prepare_all(model: SmearModel, uploads: list[Upload], max_pixels: int) -> list[np.ndarray]:
    """Each upload decoded and resized for the network; the :func:`refusal` of the first that is not a usable image."""
    arrays = []
    for index, (_, data) in enumerate(uploads):
        try:
            arrays.append(model.prepare(decode_image(data, replace(model.image_rules, max_pixels=max_pixels))))
        except ImageRejected as error:
            raise refusal(uploads, index, error) from None
    return arrays


def answers_in_order(uploads: list[Upload], results: list) -> list:
    """The batcher's answers for ``uploads``; the first that is an error raised instead (an :class:`ImageRejected` as
    its :func:`refusal`)."""
    for index, result in enumerate(results):
        if isinstance(result, ImageRejected):
            raise refusal(uploads, index, result) from None
        if isinstance(result, BaseException):
            raise result
    return results


def refusal(uploads: list[Upload], index: int, error: ImageRejected) -> ImageRejected:
    """The request's refusal for upload ``index``: ``error``, naming the file by its number and name when there are
    several."""
    if len(uploads) == 1:
        return error
    return ImageRejected(error.reason, f"file {index + 1} ({uploads[index][0]!r}): {error}")
