"""The Open Inference Protocol (v2) routes: refusals in the protocol's form in process, then Triton's own HTTP client
(``tritonclient.http``) against the real server: health, metadata, readiness, inference that agrees with /predict."""

from __future__ import annotations

import base64
import io
import json
import struct
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from leukolab.serving.app import ServingSettings, create_app
from leukolab.serving.launch import start_server

LIMITS = ServingSettings(max_upload_bytes=200_000, max_pixels=4_000_000, max_batch_files=4)
INFER = "/v2/models/leukolab/infer"


def jpeg(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="JPEG")
    return buffer.getvalue()


SMEARS = [jpeg((80, 60), (200, 110, 160)), jpeg((64, 64), (120, 60, 140)), jpeg((100, 90), (230, 200, 210))]


def metric(text: str, sample_name: str, **labels) -> float:
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == sample_name and labels.items() <= sample.labels.items())


@pytest.fixture(scope="module")
def client(model_env):
    with TestClient(create_app(model_env["uri"], LIMITS)) as client:
        deadline = time.monotonic() + 60
        while client.get("/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        yield client


def request_of(images: list[bytes], **changes) -> dict:
    tensor = {"name": "image", "datatype": "BYTES", "shape": [len(images)],
              "data": [base64.b64encode(image).decode() for image in images]}
    return {"inputs": [{**tensor, **changes}]}


def binary_body(images: list[bytes], size_change: int = 0) -> tuple[bytes, dict]:
    raw = b"".join(struct.pack("<I", len(image)) + image for image in images)
    head = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(images)],
                                   "parameters": {"binary_data_size": len(raw) + size_change}}]}).encode()
    return head + raw, {"Inference-Header-Content-Length": str(len(head))}


BAD = {
    "not json": ({"content": b"{nope"}, 400, "malformed_request"),
    "no inputs": ({"json": {"outputs": []}}, 400, "malformed_request"),
    "wrong input name": ({"json": {"inputs": [{**request_of(SMEARS[:1])["inputs"][0], "name": "file"}]}}, 400, "wrong_input"),
    "two inputs": ({"json": {"inputs": request_of(SMEARS[:1])["inputs"] * 2}}, 400, "wrong_input"),
    "wrong datatype": ({"json": request_of(SMEARS[:1], datatype="UINT8")}, 400, "wrong_datatype"),
    "shape of two dimensions": ({"json": request_of(SMEARS[:1], shape=[1, 1])}, 400, "wrong_shape"),
    "shape that disagrees with data": ({"json": request_of(SMEARS[:2], shape=[3])}, 400, "wrong_shape"),
    "numbers as data": ({"json": request_of(SMEARS[:1], data=[1, 2])}, 400, "malformed_request"),
    "bad base64": ({"json": request_of(SMEARS[:1], data=["not base64!"])}, 400, "bad_base64"),
    "not an image": ({"json": request_of([b"hello, world"])}, 415, "not_an_image"),
    "empty image": ({"json": request_of([b""])}, 400, "empty"),
    "too small": ({"json": request_of([jpeg((1, 1), (0, 0, 0))])}, 400, "too_small"),
    "too many images": ({"json": request_of(SMEARS[:1] * 5)}, 413, "too_many_files"),
    "image over the limit": ({"json": request_of([b"\xff" * 210_000])}, 413, "file_too_large"),
    "unknown output": ({"json": {**request_of(SMEARS[:1]), "outputs": [{"name": "mask"}]}}, 400, "unknown_output"),
    "header length past the body": ({"content": b"{}", "headers": {"Inference-Header-Content-Length": "99"}}, 400,
                                    "malformed_request"),
    "binary size that disagrees": (dict(zip(("content", "headers"), binary_body(SMEARS[:1], size_change=3))), 400,
                                   "malformed_request"),
}


@pytest.mark.parametrize("case", BAD, ids=str)
def test_bad_inference_is_refused_in_the_protocols_form(client, case):
    request, status, reason = BAD[case]
    response = client.post(INFER, **request)
    assert (response.status_code, response.json()["reason"]) == (status, reason), response.text
    assert set(response.json()) == {"error", "reason"} and response.json()["error"]
    assert client.post(INFER, json=request_of(SMEARS[:1])).status_code == 200


def test_unknown_models_versions_and_routes_are_404s_in_the_protocols_form(client, model_env):
    for path in ("/v2/models/other", "/v2/models/other/ready", "/v2/models/leukolab/versions/99",
                 "/v2/models/leukolab/versions/99/ready", "/v2/nope"):
        response = client.get(path)
        assert response.status_code == 404 and set(response.json()) == {"error", "reason"}, path
    assert client.post("/v2/models/other/infer", json=request_of(SMEARS[:1])).json()["reason"] == "unknown_model"
    assert client.get(f"/v2/models/leukolab/versions/{model_env['version']}/ready").json() == {"name": "leukolab", "ready": True}


def test_json_and_binary_bodies_answer_alike_and_outputs_come_as_asked(client):
    asked = {**request_of(SMEARS), "id": "r-1", "outputs": [{"name": "decision"}, {"name": "probabilities"}]}
    answer = client.post(INFER, json=asked).json()
    assert (answer["id"], answer["model_name"], [output["name"] for output in answer["outputs"]]) == \
        ("r-1", "leukolab", ["decision", "probabilities"])
    decision, probabilities = answer["outputs"]
    assert decision["shape"] == [3] and set(decision["data"]) <= {"accept", "refer"}
    assert probabilities["datatype"] == "FP32" and probabilities["shape"] == [3, 4]
    assert np.allclose(np.reshape(probabilities["data"], (3, 4)).sum(axis=1), 1, atol=1e-5)
    body, headers = binary_body(SMEARS)
    binary = client.post(INFER, content=body, headers=headers).json()
    assert [output["name"] for output in binary["outputs"]] == ["probabilities", "predicted_class", "confidence", "decision",
                                                               "reason"]
    assert np.allclose(binary["outputs"][0]["data"], probabilities["data"], atol=1e-6)


def test_openapi_documents_the_v2_routes_and_the_inference_request(client):
    document = client.get("/openapi.json").json()
    for path in ("/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/{name}", "/v2/models/{name}/ready",
                 "/v2/models/{name}/versions/{version}", "/v2/models/{name}/versions/{version}/ready"):
        assert "get" in document["paths"][path], path
    infer = document["paths"]["/v2/models/{name}/infer"]["post"]
    assert set(infer["responses"]) >= {"200", "400", "404", "413", "415", "503"}
    assert infer["requestBody"]["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/InferenceRequest"
    assert {"InferenceRequest", "RequestInput", "RequestOutput", "V2Error"} <= set(document["components"]["schemas"])


@pytest.fixture(scope="module")
def server(model_env, tmp_path_factory):
    log = tmp_path_factory.mktemp("v2-server") / "server.log"
    with start_server(model_env["uri"], log_path=log, timeout=90) as server:
        yield server


@pytest.fixture
def triton(server):
    import tritonclient.http as triton_http

    client = triton_http.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=60)
    yield client
    client.close()


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_tritonclient_sees_a_live_ready_server_and_its_model(triton, model_env):
    assert triton.is_server_live() and triton.is_server_ready()
    server = triton.get_server_metadata()
    assert server["name"] == "leukolab" and "binary_tensor_data" in server["extensions"]
    model = triton.get_model_metadata("leukolab")
    assert (model["name"], model["versions"]) == ("leukolab", [model_env["version"]])
    assert model["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert {output["name"]: output["shape"] for output in model["outputs"]} == {
        "probabilities": [-1, 4], "predicted_class": [-1], "confidence": [-1], "decision": [-1], "reason": [-1]}
    assert model["parameters"]["class_names"] == model_env["class_names"]
    assert triton.is_model_ready("leukolab") and triton.is_model_ready("leukolab", model_env["version"])
    assert not triton.is_model_ready("other") and not triton.is_model_ready("leukolab", "99")


def triton_input(images: list[bytes], binary: bool):
    import tritonclient.http as triton_http

    tensor = triton_http.InferInput("image", [len(images)], "BYTES")
    values = images if binary else [base64.b64encode(image) for image in images]  # JSON carries BYTES as strings
    tensor.set_data_from_numpy(np.array(values, dtype=object), binary_data=binary)
    return tensor


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_tritonclient_inference_agrees_with_predict(triton, server):
    import tritonclient.http as triton_http

    expected = [httpx.post(f"{server.url}/predict", files={"file": ("smear.jpg", image)}, timeout=60).json()
                for image in SMEARS]
    binary = triton.infer("leukolab", [triton_input(SMEARS, binary=True)])  # the client's default: raw tensors
    as_json = triton.infer("leukolab", [triton_input(SMEARS, binary=False)], model_version="1",
                           outputs=[triton_http.InferRequestedOutput(name, binary_data=False)
                                    for name in ("predicted_class", "probabilities", "decision")])
    for result in (binary, as_json):
        classes = [value.decode() if isinstance(value, bytes) else value for value in result.as_numpy("predicted_class")]
        assert classes == [answer["predicted_class"] for answer in expected]
        probabilities = result.as_numpy("probabilities")
        assert probabilities.shape == (3, 4)
        assert np.allclose(probabilities, [list(answer["probabilities"].values()) for answer in expected], atol=1e-5)
        decisions = [value.decode() if isinstance(value, bytes) else value for value in result.as_numpy("decision")]
        assert decisions == [answer["decision"] for answer in expected]
    assert np.allclose(binary.as_numpy("confidence"), [answer["confidence"] for answer in expected], atol=1e-5)
    assert as_json.as_numpy("confidence") is None  # not asked for
    text = httpx.get(f"{server.url}/metrics").text
    assert metric(text, "leukolab_requests_total", route="/v2/models/{name}/infer", status="200") == 1
    assert metric(text, "leukolab_requests_total", route="/v2/models/{name}/versions/{version}/infer", status="200") == 1


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_tritonclient_gets_a_refusal_for_a_bad_image(triton, server):
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as refusal:
        triton.infer("leukolab", [triton_input([SMEARS[0], b"not an image"], binary=True)])
    assert refusal.value.status() == "415" and "file 2" in refusal.value.message()
    with pytest.raises(InferenceServerException) as refusal:
        triton.infer("other", [triton_input(SMEARS[:1], binary=True)])
    assert refusal.value.status() == "404"
    assert metric(httpx.get(f"{server.url}/metrics").text, "leukolab_prediction_errors_total", reason="not_an_image") == 1
    assert triton.infer("leukolab", [triton_input(SMEARS[:1], binary=True)]).as_numpy("predicted_class").shape == (1,)
