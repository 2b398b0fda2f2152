"""The API's client (``leukolab.serving.client``): the serve stage's check and the benchmarks' upload, against a real
server on 127.0.0.1."""

import httpx
import pytest

from leukolab.data.synthetic.smears import smear_table
from leukolab.serving.client import check_server, image_upload
from leukolab.serving.launch import start_server


@pytest.mark.integration
def test_the_check_sends_each_image_then_one_batch_and_gives_the_stage_record(model_env, tmp_path):
    smears = smear_table(1, 64, seed=3)
    with start_server(model_env["uri"], log_path=tmp_path / "server.log", timeout=180) as server:
        check = check_server(server.url, smears)
        body, headers = image_upload(model_env["example_image"])
        uploaded = httpx.post(f"{server.url}/predict", content=body, headers=headers, timeout=60, trust_env=False)
    assert uploaded.status_code == 200 and uploaded.json()["predicted_class"] in model_env["class_names"]
    assert (check.version["name"], check.version["version"]) == ("leukolab", model_env["version"])
    assert list(check.answers["true_class"]) == list(smears["class_name"]) and check.batch_agrees()
    assert (check.answers["round_trip_ms"] > 0).all() and check.latency().loc["batch request, per image"].item() > 0
    assert check.prediction_counters() and all(line.startswith("leukolab_predictions_total") for line in check.prediction_counters())
    record = check.record("models:/leukolab@champion")
    assert (record.requests, record.p50_ms) == (4, check.metrics()["serve_p50_ms"])
