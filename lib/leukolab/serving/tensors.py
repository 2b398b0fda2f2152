"""Tensors of the Open Inference Protocol: an inference request's images read from its body (JSON with base64
strings, or JSON then raw tensors with the binary tensor extension), and outputs written back the same two ways.

A raw ``BYTES`` tensor is each element's length (4 bytes, little-endian) followed by its bytes; a raw ``FP32``
tensor is little-endian 32-bit floats in row-major order.
"""

from __future__ import annotations

import base64
import binascii
import struct
from dataclasses import dataclass

import numpy as np
from fastapi.responses import Response
from pydantic import ValidationError

from leukolab.serving.errors import ApiError, describe
from leukolab.serving.protocol import BINARY_HEADER, IMAGE_INPUT, OUTPUTS, InferenceRequest, InferenceResponse, ResponseOutput


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: list[int]
    values: list

    @property
    def datatype(self) -> str:
        return OUTPUTS[self.name]


def parse_request(body: bytes, header_length: str | None) -> tuple[InferenceRequest, bytes]:
    """The request's JSON, validated, and the raw tensor bytes after it (``header_length``: the binary extension's
    header, the JSON's length; None when the body is all JSON)."""
    head, raw = body, b""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise ApiError(400, f"{BINARY_HEADER}: {header_length!r} is not a length within the body's {len(body)} "
                                "bytes", "malformed_request")
        head, raw = body[:int(header_length)], body[int(header_length):]
    try:
        return InferenceRequest.model_validate_json(head), raw
    except ValidationError as error:
        raise ApiError(400, f"not an inference request: {describe(error.errors())}", "malformed_request") from None


def image_files(request: InferenceRequest, raw: bytes, max_images: int, max_bytes: int) -> list[bytes]:
    """The encoded image files of the request's one input, ``image`` (BYTES, shape ``[n]``), within the limits."""
    if [tensor.name for tensor in request.inputs] != [IMAGE_INPUT]:
        raise ApiError(400, f"send one input named '{IMAGE_INPUT}' (got {[tensor.name for tensor in request.inputs]})",
                       "wrong_input")
    tensor = request.inputs[0]
    if tensor.datatype != "BYTES":
        raise ApiError(400, f"input '{IMAGE_INPUT}' has datatype BYTES (encoded image files), not {tensor.datatype!r}",
                       "wrong_datatype")
    if len(tensor.shape) != 1 or tensor.shape[0] < 1:
        raise ApiError(400, f"input '{IMAGE_INPUT}' has shape [n], n >= 1 images; got {tensor.shape}", "wrong_shape")
    count = tensor.shape[0]
    if count > max_images:
        raise ApiError(413, f"send at most {max_images} images per request; got {count}", "too_many_files")
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is not None:
        if type(size) is not int or size != len(raw) or tensor.data is not None:
            raise ApiError(400, f"binary_data_size is {size!r} and {len(raw)} bytes follow the JSON"
                                + (", and the input also has data" if tensor.data is not None else ""),
                           "malformed_request")
        files = unpack_bytes(raw, count)
    elif raw:
        raise ApiError(400, f"{len(raw)} bytes follow the JSON but no input has binary_data_size", "malformed_request")
    elif tensor.data is None:
        raise ApiError(400, f"input '{IMAGE_INPUT}' has neither data nor binary_data_size", "malformed_request")
    else:
        files = [from_base64(text, index) for index, text in enumerate(tensor.data)]
    if len(files) != count:
        raise ApiError(400, f"input '{IMAGE_INPUT}' has shape [{count}] but {len(files)} elements", "wrong_shape")
    for index, data in enumerate(files):
        if len(data) > max_bytes:
            raise ApiError(413, f"image {index} has {len(data):,} bytes; the limit is {max_bytes:,}", "file_too_large")
    return files


def from_base64(text: str, index: int) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"image {index} is not base64 (in JSON, BYTES elements are base64 strings of the "
                            "encoded files)", "bad_base64") from None


def unpack_bytes(raw: bytes, most: int) -> list[bytes]:
    """The elements of a raw BYTES tensor (at most ``most + 1``: enough to tell it has too many)."""
    elements, offset = [], 0
    while offset < len(raw) and len(elements) <= most:
        if offset + 4 > len(raw):
            raise ApiError(400, f"the raw BYTES tensor ends inside an element's length at byte {offset}",
                           "malformed_request")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise ApiError(400, f"a raw BYTES element of {length} bytes runs past the body's end", "malformed_request")
        elements.append(raw[offset:offset + length])
        offset += length
    return elements


def pack(tensor: Tensor) -> bytes:
    """The raw form of an output tensor."""
    if tensor.datatype == "BYTES":
        return b"".join(struct.pack("<I", len(data)) + data for data in (value.encode() for value in tensor.values))
    return np.asarray(tensor.values, dtype="<f4").tobytes()


def requested_outputs(request: InferenceRequest) -> list[tuple[str, bool]]:
    """(name, as raw bytes) of each output the request asks for, in its order; all four when it names none."""
    default_binary = (request.parameters or {}).get("binary_data_output") is True
    if not request.outputs:
        return [(name, default_binary) for name in OUTPUTS]
    unknown = [output.name for output in request.outputs if output.name not in OUTPUTS]
    if unknown:
        raise ApiError(400, f"unknown outputs {unknown}; this model has {list(OUTPUTS)}", "unknown_output")
    return [(output.name, (output.parameters or {}).get("binary_data", default_binary) is True)
            for output in request.outputs]


def encode_response(head: InferenceResponse, tensors: list[tuple[Tensor, bool]]) -> Response:
    """The response with ``head``'s fields and each (tensor, as raw bytes): all JSON, or with the binary tensor
    extension when any tensor goes raw (``application/octet-stream``, the JSON's length in its header)."""
    blobs = []
    for tensor, binary in tensors:
        output = ResponseOutput(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        if binary:
            blobs.append(pack(tensor))
            output.parameters = {"binary_data_size": len(blobs[-1])}
        else:
            output.data = tensor.values
        head.outputs.append(output)
    header = head.model_dump_json(exclude_none=True).encode()
    if not blobs:
        return Response(header, media_type="application/json")
    return Response(header + b"".join(blobs), media_type="application/octet-stream",
                    headers={BINARY_HEADER: str(len(header))})
