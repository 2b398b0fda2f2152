"""The Open Inference Protocol (v2, REST) bodies the API speaks under ``/v2``, as in Triton, KServe and MLServer.

One input, ``image`` (``BYTES``, shape ``[n]``: encoded image files, base64 strings in JSON or raw with the binary
tensor extension), and five outputs per image. Every field is described in the OpenAPI document.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

PREFIX = "/v2"
"""Routes under this prefix answer refusals as :class:`V2Error`."""
SERVER_NAME = "leukolab"
EXTENSIONS = ["binary_tensor_data"]
IMAGE_INPUT = "image"
OUTPUTS = {"probabilities": "FP32", "predicted_class": "BYTES", "confidence": "FP32", "decision": "BYTES",
           "reason": "BYTES"}
"""Each output's datatype; ``probabilities`` has shape ``[n, classes]``, the others ``[n]``."""
BINARY_HEADER = "Inference-Header-Content-Length"
"""With the binary tensor extension: the length of the JSON that starts the body; raw tensors follow it."""

Parameters = dict[str, Any]


class V2Error(BaseModel):
    error: str = Field(description="What was wrong, in words")
    reason: str = Field(description="Machine-readable cause, e.g. bad_base64, not_an_image, unknown_model, loading")


class Liveness(BaseModel):
    live: bool = Field(description="Always true: the process answers")


class ServerReadiness(BaseModel):
    ready: bool = Field(description="True: the model is loaded (a 503 while it loads or when it failed to load)")


class ModelReadiness(BaseModel):
    name: str = Field(description="The model's name")
    ready: bool = Field(description="True: the model is loaded")


class ServerMetadata(BaseModel):
    name: str = Field(description='The server: "leukolab"')
    version: str = Field(description="Version of the leukolab package")
    extensions: list[str] = Field(description="Protocol extensions: binary_tensor_data")


class TensorMetadata(BaseModel):
    name: str = Field(description="Tensor name")
    datatype: str = Field(description="BYTES or FP32")
    shape: list[int] = Field(description="Shape; -1 is any size (the number of images)")


class ModelMetadata(BaseModel):
    name: str = Field(description="The registered model's name (the name in the routes)")
    versions: list[str] = Field(description="The registered version that answers (empty for a runs:/ URI)")
    platform: str = Field(description='"pytorch"')
    inputs: list[TensorMetadata] = Field(description="image: BYTES [-1], encoded image files")
    outputs: list[TensorMetadata] = Field(description="probabilities FP32 [-1, classes], predicted_class BYTES [-1], "
                                                      "confidence FP32 [-1], decision BYTES [-1], reason BYTES [-1] "
                                                      "(none for a model that only segments)")
    parameters: Parameters = Field(description="class_names (the order of probabilities) and referral_threshold")


class RequestInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description='"image"', json_schema_extra={"enum": [IMAGE_INPUT]})
    shape: list[int] = Field(description="[n]: the number of images", json_schema_extra={
        "minItems": 1, "maxItems": 1, "items": {"type": "integer", "minimum": 1}})
    datatype: str = Field(description='"BYTES"', json_schema_extra={"enum": ["BYTES"]})
    parameters: Parameters | None = Field(default=None, description="binary_data_size: bytes of this tensor after "
                                                                    "the JSON (binary tensor extension)")
    data: list[str] | None = Field(default=None, description="n encoded image files (JPEG, PNG, TIFF, BMP, GIF, "
                                                             "WebP) as base64 strings; absent with binary_data_size")


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="probabilities, predicted_class, confidence, decision or reason",
                      json_schema_extra={"enum": list(OUTPUTS)})
    parameters: Parameters | None = Field(default=None, description="binary_data: true for raw bytes after the JSON")


class InferenceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(default=None, description="Echoed in the response")
    parameters: Parameters | None = Field(default=None, description="binary_data_output: true for every output "
                                                                    "as raw bytes after the JSON")
    inputs: list[RequestInput] = Field(description="Exactly one input: image",
                                       json_schema_extra={"minItems": 1, "maxItems": 1})
    outputs: list[RequestOutput] | None = Field(default=None, description="The outputs wanted (default: all five)")


class ResponseOutput(BaseModel):
    name: str = Field(description="Output name")
    datatype: str = Field(description="FP32 or BYTES")
    shape: list[int] = Field(description="[n, classes] for probabilities, [n] for the others")
    parameters: Parameters | None = Field(default=None, description="binary_data_size, when sent as raw bytes")
    data: list[float] | list[str] | None = Field(default=None, description="The values, flattened in row-major "
                                                                           "order (absent when sent as raw bytes)")


class InferenceResponse(BaseModel):
    model_name: str = Field(description="The model's name")
    model_version: str | None = Field(default=None, description="The registered version that answered")
    id: str | None = Field(default=None, description="The request's id")
    outputs: list[ResponseOutput] = Field(description="The outputs asked for, in their order (default: all five)")


def output_metadata(class_count: int) -> list[TensorMetadata]:
    """The outputs of a model that classifies into ``class_count`` classes."""
    return [TensorMetadata(name=name, datatype=datatype, shape=[-1, class_count] if name == "probabilities" else [-1])
            for name, datatype in OUTPUTS.items()]
