"""The prediction API's metrics on a real registered model: requests counted, the referral threshold the model's
version tag carries (accept or refer, counted per image), and the drift alerts (low confidence, colour)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sample_images import SMEAR, solid_png
from serving_helpers import LIMITS, metric, predict

from leukolab.serving.app import ServingSettings, create_app
from leukolab.serving.metrics import ServingMetrics


def test_metrics_count_known_requests(fresh_client, model_env):
    client = fresh_client()
    for _ in range(2):
        assert predict(client, SMEAR).status_code == 200
    assert predict(client, b"not an image").status_code == 415
    client.get("/no/such/path")
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert metric(text, "leukolab_requests_total", route="/predict", status="200") == 2
    assert metric(text, "leukolab_requests_total", route="/predict", status="415") == 1
    assert metric(text, "leukolab_requests_total", route="unmatched", status="404") == 1
    assert "/no/such/path" not in text
    assert metric(text, "leukolab_predictions_total") == 2
    assert metric(text, "leukolab_prediction_errors_total", reason="not_an_image") == 1
    assert metric(text, "leukolab_inference_seconds_count") == 2
    assert metric(text, "leukolab_batch_size_sum") == 2
    assert metric(text, "leukolab_prediction_confidence_count") == 2
    info = dict(name="leukolab", version=model_env["version"], run_id=model_env["run_id"])
    assert metric(text, "leukolab_model_info", **info) == 1


def test_without_a_threshold_tag_every_prediction_is_accepted(client):
    body = predict(client, SMEAR).json()
    assert (body["decision"], body["referral_threshold"]) == ("accept", None)
    assert client.get("/version").json()["referral_threshold"] is None


def test_the_version_tag_decides_accept_or_refer_at_the_confidence_itself(model_env, tag_threshold):
    """``confidence >= referral_threshold`` accepts: at the answer's own confidence it is accepted, just above referred."""
    with TestClient(create_app(model_env["uri"], LIMITS)) as plain:
        confidence = predict(plain, SMEAR).json()["confidence"]
    for threshold, decision in ((confidence, "accept"), (float(np.nextafter(confidence, 1.0)), "refer")):
        uri = tag_threshold("leukolab-threshold-test", threshold)
        with TestClient(create_app(uri, LIMITS)) as client:
            body = predict(client, SMEAR).json()
            assert (body["decision"], body["referral_threshold"], body["confidence"]) == (decision, threshold, confidence)
            assert client.get("/version").json()["referral_threshold"] == threshold
            assert metric(client.get("/metrics").text, "leukolab_referrals_total") == (decision == "refer")


def test_referrals_are_answered_and_counted_per_image(referring_model):
    with TestClient(create_app(referring_model["uri"], LIMITS)) as client:
        assert metric(client.get("/metrics").text, "leukolab_referrals_total") == 0
        single = predict(client, SMEAR).json()
        batch = client.post("/predict/batch", files=[("files", (f"{i}.jpg", SMEAR)) for i in range(3)]).json()
        text = client.get("/metrics").text
    assert single["decision"] == "refer" and single["referral_threshold"] == 1.0 and single["predicted_class"]
    assert (single["reason"], single["ood_score"]) == ("low_confidence", None)
    assert [(p["decision"], p["reason"]) for p in batch["predictions"]] == [("refer", "low_confidence")] * 3
    assert metric(text, "leukolab_referrals_total", reason="low_confidence") == 4
    assert metric(text, "leukolab_predictions_total") == 4


def test_a_bad_threshold_tag_leaves_the_server_unready_and_says_why(model_env):
    from mlflow.tracking import MlflowClient

    from leukolab.predictor.decision import THRESHOLD_TAG

    client = MlflowClient(model_env["tracking_uri"])
    client.create_registered_model("leukolab-bad-tag")
    source = client.get_model_version("leukolab", model_env["version"])
    version = client.create_model_version("leukolab-bad-tag", source.source, source.run_id, tags={THRESHOLD_TAG: "high"})
    with TestClient(create_app(f"models:/leukolab-bad-tag/{version.version}", LIMITS)) as api:
        body = predict(api, SMEAR).json()
    assert body["reason"] == "load_failed" and "referral_threshold tag of model version leukolab-bad-tag/1 is 'high'" in body["detail"]


def test_low_confidence_alert_fires_after_a_run_of_unsure_predictions(fresh_client):
    client = fresh_client(ServingSettings(low_confidence_threshold=0.99, low_confidence_run=3))
    for expected in (0, 0, 1, 1):
        predict(client, SMEAR)
        assert metric(client.get("/metrics").text, "leukolab_low_confidence_alert") == expected


def test_low_confidence_alert_resets_on_a_confident_prediction():
    metrics = ServingMetrics(low_confidence_threshold=0.5, low_confidence_run=5)
    alert = []
    for confidence in (0.4, 0.3, 0.45, 0.2, 0.49, 0.1, 0.9, 0.4):
        metrics.observe_prediction("Pre", confidence, 0.01)
        alert.append(metrics.low_confidence_alert._value.get())
    assert alert == [0, 0, 0, 0, 1, 1, 0, 0]


def test_colour_drift_alert_follows_the_mean_colour_of_recent_inputs(fresh_client):
    """The test model's training mean colour is mid-grey (0.5, 0.5, 0.5): white inputs are far from it."""
    client = fresh_client(replace(LIMITS, colour_window=2, colour_drift_threshold=0.2))
    seen = []
    for level in [255] * 3 + [128] * 2:
        assert predict(client, solid_png((level, level, level))).status_code == 200
        text = client.get("/metrics").text
        seen.append((metric(text, "leukolab_colour_drift_alert"), metric(text, "leukolab_input_colour_distance")))
    # one white image: far, but the window is not full yet; white twice: alert; white and grey: still far; two greys: back
    distance = [np.sqrt(3) * abs(mean / 255 - 0.5) for mean in (255, 255, 255, (255 + 128) / 2, 128)]
    assert [alert for alert, _ in seen] == [0, 1, 1, 1, 0]
    assert [d for _, d in seen] == pytest.approx(distance, abs=1e-6)


def test_colour_drift_needs_a_full_window_and_a_training_colour():
    metrics = ServingMetrics(colour_drift_threshold=0.1, colour_window=3)
    white = [np.full((8, 8, 3), 255, np.uint8)]
    metrics.observe_batch(white)
    assert metrics.colour_distance._value.get() == 0 and metrics.batch_size._sum.get() == 1  # no training colour
    metrics.set_model("m", "1", "r", ["A"], training_colour=[0.5, 0.5, 0.5])
    metrics.observe_batch(white * 2)
    assert metrics.colour_drift_alert._value.get() == 0
    metrics.observe_batch(white)
    assert metrics.colour_drift_alert._value.get() == 1
    assert metrics.colour_distance._value.get() == pytest.approx(np.sqrt(3 * 0.25))
