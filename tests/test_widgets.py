"""The demo widget: predictions in process and through the API, the figure, and errors shown as messages."""

from __future__ import annotations

from datetime import datetime, timezone

import ipywidgets as widgets
import pytest
from fastapi.testclient import TestClient

from leukolab import widgets as demo
from leukolab.predictor.uri import load_model
from leukolab.processes.background import free_port
from leukolab.serving.app import ServingSettings, create_app
from leukolab.serving.schemas import Prediction


@pytest.fixture(scope="module")
def smear_model(model_env):
    return load_model(model_env["uri"])[0]


@pytest.fixture(scope="module")
def api(model_env):
    """A TestClient on the API; ``httpx.post`` is routed to it by ``api_url``."""
    with TestClient(create_app(model_env["uri"], ServingSettings()), base_url="http://api.test") as client:
        yield client


@pytest.fixture
def api_url(api, monkeypatch):
    monkeypatch.setattr(demo.httpx, "post", lambda url, files, timeout, headers=None: api.post(url, files=files, headers=headers))
    return "http://api.test"


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def parts(widget: widgets.Widget, kind: type) -> list:
    """Every descendant of ``widget`` of type ``kind``."""
    found = [widget] if isinstance(widget, kind) else []
    for child in getattr(widget, "children", ()):
        found += parts(child, kind)
    return found


def test_in_process_prediction_has_the_api_shape(smear_model, model_env):
    result = demo.predict_for_demo(model_env["example_image"], model=smear_model)
    assert set(result) == set(Prediction.model_fields)
    assert set(result["probabilities"]) == set(model_env["class_names"]) and result["mask"]


def test_api_prediction_matches_in_process(smear_model, model_env, api_url):
    remote = demo.predict_for_demo(model_env["example_image"], api_url=api_url)
    local = demo.predict_for_demo(model_env["example_image"], model=smear_model)
    assert remote["model_version"] == f"leukolab/{model_env['version']}"
    assert remote["probabilities"] == pytest.approx(local["probabilities"], abs=1e-5)


def test_api_errors_become_clear_messages(api_url):
    with pytest.raises(demo.DemoError, match=r"refused the image \(415\): the bytes are not an image"):
        demo.predict_for_demo(b"plain text", api_url=api_url)


def test_unreachable_api_is_reported():
    url = closed_port_url()
    with pytest.raises(demo.DemoError, match=f"the API at {url} is not reachable"):
        demo.predict_for_demo(b"x", api_url=url)


def test_render_result_overlays_the_mask_and_charts_probabilities(smear_model, model_env):
    result = demo.predict_for_demo(model_env["example_image"], model=smear_model)
    figure = demo.render_result(model_env["example_image"], result)
    image_axes, chart_axes = figure.axes
    assert len(image_axes.images) == 2  # the image and the mask overlay
    assert len(chart_axes.patches) == len(model_env["class_names"])
    assert result["predicted_class"] in image_axes.get_title()


def test_render_result_without_classification_shows_the_image_alone(model_env):
    result = {"predicted_class": None, "probabilities": None, "confidence": None, "mask": None}
    assert len(demo.render_result(model_env["example_image"], result).axes) == 1


def click_predict(app: widgets.Widget) -> str:
    """Press Predict; the message shown."""
    parts(app, widgets.Button)[0].click()
    return parts(app, widgets.HTML)[1].value


def upload(app: widgets.Widget, data: bytes) -> None:
    parts(app, widgets.FileUpload)[0].value = (
        {"name": "smear.jpg", "type": "image/jpeg", "size": len(data), "content": memoryview(data),
         "last_modified": datetime.now(timezone.utc)},)


def test_demo_predicts_an_example_in_process(model_env):
    app = demo.build_demo(model_env["uri"], examples=[("smear", model_env["example_image"])])
    parts(app, widgets.Dropdown)[0].value = model_env["example_image"]
    message = click_predict(app)
    assert "confidence" in message and "Could not" not in message
    assert bytes(parts(app, widgets.Image)[0].value).startswith(b"\x89PNG")


def test_demo_predicts_an_upload_through_the_api(model_env, api_url):
    app = demo.build_demo(api_url=api_url)
    upload(app, model_env["example_image"])
    assert f"leukolab/{model_env['version']}" in click_predict(app)


@pytest.mark.parametrize("failure", ["unreadable file", "model not found", "API down", "nothing chosen"])
def test_demo_shows_failures_as_messages(model_env, failure):
    model_uri = "models:/no-such-model@champion" if failure == "model not found" else model_env["uri"]
    app = demo.build_demo(model_uri, api_url=closed_port_url() if failure == "API down" else None)
    if failure != "nothing chosen":
        upload(app, b"not an image" if failure == "unreadable file" else model_env["example_image"])
    expected = {"unreadable file": "Could not predict:</b> the bytes are not an image",
                "model not found": "could not load the model models:/no-such-model@champion",
                "API down": "is not reachable", "nothing chosen": "Upload an image or choose an example first"}
    message = click_predict(app)
    assert expected[failure] in message and "Traceback" not in message
    assert parts(app, widgets.Image)[0].layout.display == "none"


def test_a_classifier_gets_its_mask_from_the_segmenter(model_env, classifier_uri, smear_model):
    classifier = load_model(classifier_uri)[0]
    plain = demo.predict_for_demo(model_env["example_image"], model=classifier)
    assert plain["mask"] is None and plain["predicted_class"] in model_env["class_names"]
    masked = demo.with_mask(plain, model_env["example_image"], smear_model)
    assert masked["mask"] == demo.predict_for_demo(model_env["example_image"], model=smear_model)["mask"]
    assert {k: v for k, v in masked.items() if not k.startswith("mask")} == {k: v for k, v in plain.items() if not k.startswith("mask")}


@pytest.mark.parametrize("segmenter_uri", ["models:/leukolab@champion", "models:/no-such-segmenter@champion", None])
def test_demo_of_a_classifier_shows_a_mask_when_a_segmenter_loads(model_env, classifier_uri, segmenter_uri):
    app = demo.build_demo(classifier_uri, examples=[("smear", model_env["example_image"])], segmenter_uri=segmenter_uri)
    parts(app, widgets.Dropdown)[0].value = model_env["example_image"]
    message = click_predict(app)
    assert "confidence" in message and "Could not" not in message
    assert ("mask covers" in message) == (segmenter_uri == "models:/leukolab@champion")


def test_an_explained_result_shows_the_heatmap_between_mask_and_chart(smear_model, model_env, api_url):
    result = demo.predict_for_demo(model_env["example_image"], model=smear_model, explain=True)
    assert result["heatmap_png"] == demo.predict_for_demo(model_env["example_image"], api_url=api_url, explain=True)["heatmap_png"]
    image_axes, heatmap_axes, chart_axes = demo.render_result(model_env["example_image"], result).axes
    assert len(image_axes.images) == 2 and len(heatmap_axes.images) == 2  # each: the smear and its overlay
    assert heatmap_axes.get_title() == "where the model looked" and len(chart_axes.patches) == len(model_env["class_names"])
    assert demo.predict_for_demo(model_env["example_image"], model=smear_model)["heatmap_png"] is None


def test_the_demo_toggle_redraws_the_result_with_the_heatmap(model_env):
    app = demo.build_demo(model_env["uri"], examples=[("smear", model_env["example_image"])])
    parts(app, widgets.Dropdown)[0].value = model_env["example_image"]
    assert "Grad-CAM" not in click_predict(app)
    plain = bytes(parts(app, widgets.Image)[0].value)
    toggle = parts(app, widgets.ToggleButton)[0]
    assert toggle.description == "Show where the model looked"
    toggle.value = True
    assert "Grad-CAM" in parts(app, widgets.HTML)[1].value
    assert bytes(parts(app, widgets.Image)[0].value) != plain


def test_a_referred_answer_is_shown_as_a_referral_not_as_a_class(referring_model, model_env):
    app = demo.build_demo(referring_model["uri"], examples=[("smear", model_env["example_image"])], segmenter_uri=None)
    parts(app, widgets.Dropdown)[0].value = model_env["example_image"]
    message = click_predict(app)
    assert "<b>Refer to a haematologist</b>: confidence" in message and "under the referral threshold 100.0%" in message
    assert not any(f"<b>{name}</b>" in message for name in model_env["class_names"])
    result = demo.predict_for_demo(model_env["example_image"], model=load_model(referring_model["uri"])[0],
                                   referral_threshold=referring_model["referral_threshold"])
    figure = demo.render_result(model_env["example_image"], result)
    assert result["decision"] == "refer" and figure.axes[0].get_title().startswith("refer to a haematologist")
    assert {bar.get_facecolor() for bar in figure.axes[1].patches} == {figure.axes[1].patches[0].get_facecolor()}  # no red


def test_an_accepted_answer_names_the_threshold(smear_model, model_env):
    result = demo.predict_for_demo(model_env["example_image"], model=smear_model, referral_threshold=0.0)
    assert result["decision"] == "accept" and "accepted at the referral threshold 0.0%" in demo._summary(result)
