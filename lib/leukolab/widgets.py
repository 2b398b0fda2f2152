"""The interactive demo of ``notebooks/demo.ipynb`` (and Voila): upload a smear, see class, confidence and mask, and
with "Show where the model looked" the Grad-CAM heatmap beside the mask.

It predicts through the API when given its URL, else in this process with the
registered model and its version's referral threshold. An answer whose
decision is ``refer`` is shown as "refer to a haematologist" with its
confidence and the threshold, never as a class; one referred as out of distribution says so in words (the image is
unlike the training images, its probabilities are not to be trusted). When that model only classifies, the mask comes from the
published segmenter (``leukolab-segmenter@champion``) in this process, if there
is one. :func:`predict_for_demo` and :func:`render_result` hold the logic;
:func:`build_demo` only wires widgets to them.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import time

import httpx
import ipywidgets as widgets
import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from leukolab.images import ANY_SIZE, decode_image
from leukolab.predictor import DEFAULT_MODEL_URI
from leukolab.predictor.decision import OUT_OF_DISTRIBUTION, REFER
from leukolab.predictor.smear_model import SmearModel
from leukolab.predictor.uri import load_model
from leukolab.serving.auth import client_headers
from leukolab.serving.schemas import Prediction

log = logging.getLogger(__name__)
DEFAULT_SEGMENTER_URI = "models:/leukolab-segmenter@champion"
MASK_COLOUR = (1.0, 0.15, 0.1, 0.4)
"""RGBA of the mask overlay."""
HEATMAP_ALPHA = 0.5
"""Opacity of the heatmap (colour map ``jet``) over the smear."""


class DemoError(RuntimeError):
    """A failure the demo shows to its user as a message."""


def predict_for_demo(image_bytes: bytes, model: SmearModel | None = None, api_url: str | None = None,
                     explain: bool = False, referral_threshold: float | None = None) -> dict:
    """Predict one image, through the API at ``api_url`` or with ``model`` (deciding at ``referral_threshold``); a dict
    shaped like ``POST /predict``'s JSON (with ``explain``, its ``heatmap_png`` too).

    Raises :class:`~leukolab.images.ImageRejected` or :class:`DemoError` with a message fit for the user.
    """
    if api_url:
        return _predict_remote(image_bytes, api_url, explain)
    if model is None:
        raise ValueError("give a model or an api_url")
    started = time.perf_counter()
    answer = model.predict_images([decode_image(image_bytes, model.image_rules)], explain=explain)[0]
    latency_ms = (time.perf_counter() - started) * 1000
    return Prediction.from_answer(answer, model.class_names, model_version=None, latency_ms=latency_ms,
                                  referral_threshold=referral_threshold).model_dump()


def with_mask(result: dict, image_bytes: bytes, segmenter: SmearModel) -> dict:
    """``result`` with the ``segmenter``'s ``mask`` and ``mask_fraction`` for the image (for a model that only classifies)."""
    answer = segmenter.predict_images([decode_image(image_bytes, segmenter.image_rules)])[0]
    return {**result, "mask": answer.get("mask_png"), "mask_fraction": answer.get("mask_fraction")}


def _predict_remote(image_bytes: bytes, api_url: str, explain: bool) -> dict:
    url = f"{api_url.rstrip('/')}/predict" + ("?explain=true" if explain else "")
    try:
        response = httpx.post(url, files={"file": ("image", image_bytes)}, headers=client_headers(), timeout=60.0)
    except httpx.HTTPError as error:
        raise DemoError(f"the API at {api_url} is not reachable ({type(error).__name__}: {error})") from None
    if response.is_error:
        try:
            detail = response.json()["detail"]
        except (ValueError, KeyError, TypeError):
            detail = response.text[:200] or response.reason_phrase
        raise DemoError(f"the API refused the image ({response.status_code}): {detail}")
    return response.json()


def render_result(image_bytes: bytes, result: dict) -> Figure:
    """The image with its mask overlaid and titled with class and confidence (or "refer to a haematologist"), then
    (with ``heatmap_png``) the image under its heatmap, then a bar chart of probabilities (the predicted class in
    red, none when referred)."""
    image = decode_image(image_bytes, ANY_SIZE)  # accepted already by the model (or the API) that answered
    probabilities = result.get("probabilities") or {}
    panels = 1 + bool(result.get("heatmap_png")) + bool(probabilities)
    figure = Figure(figsize=(5 * panels, 4.5), layout="constrained")
    axes = list(figure.subplots(1, panels, squeeze=False)[0])
    if result.get("heatmap_png"):
        _show_heatmap(axes.pop(1), image, result["heatmap_png"])
    axes[0].imshow(image)
    axes[0].axis("off")
    if result.get("mask"):
        mask = Image.open(io.BytesIO(base64.b64decode(result["mask"]))).convert("L").resize(image.size, Image.Resampling.NEAREST)
        overlay = np.zeros((image.height, image.width, 4))
        overlay[np.asarray(mask) > 127] = MASK_COLOUR
        axes[0].imshow(overlay)
    referred = result.get("decision") == REFER
    if result.get("reason") == OUT_OF_DISTRIBUTION:
        axes[0].set_title("refer to a haematologist (unlike the training images)")
    elif referred:
        axes[0].set_title(f"refer to a haematologist ({result['confidence']:.0%} < {result['referral_threshold']:.0%})")
    elif result.get("predicted_class"):
        axes[0].set_title(f"{result['predicted_class']} ({result['confidence']:.0%})")
    if probabilities:
        names = list(probabilities)
        colours = ["tab:red" if name == result.get("predicted_class") and not referred else "tab:grey" for name in names]
        bars = axes[1].barh(names, [probabilities[name] for name in names], color=colours)
        axes[1].bar_label(bars, fmt="%.2f", padding=3)
        axes[1].set_xlim(0, 1.1)
        axes[1].invert_yaxis()
        axes[1].set_xlabel("probability")
    return figure


def _show_heatmap(axes, image: Image.Image, heatmap_png: str) -> None:
    heatmap = Image.open(io.BytesIO(base64.b64decode(heatmap_png))).convert("L").resize(image.size, Image.Resampling.BILINEAR)
    axes.imshow(image)
    axes.imshow(np.asarray(heatmap) / 255, cmap="jet", vmin=0, vmax=1, alpha=HEATMAP_ALPHA)
    axes.set_title("where the model looked")
    axes.axis("off")


def build_demo(model_uri: str = DEFAULT_MODEL_URI, api_url: str | None = None,
               examples: list[tuple[str, bytes]] | None = None,
               segmenter_uri: str | None = DEFAULT_SEGMENTER_URI) -> widgets.Widget:
    """Upload (or pick an example), press Predict, see the result; through ``api_url`` or ``model_uri`` loaded here.

    ``segmenter_uri``: masks for a model without any, loaded here on the first such answer; ``None`` turns it off,
    and one that cannot be loaded leaves the demo without masks (and says so in the log).
    """
    upload = widgets.FileUpload(accept="image/*", multiple=False, description="Upload image",
                                layout=widgets.Layout(width="auto"))
    picker = widgets.Dropdown(options=[("(uploaded image)", None), *examples], description="Example") if examples else None
    button = widgets.Button(description="Predict", button_style="primary", icon="search")
    explain = widgets.ToggleButton(description="Show where the model looked", icon="eye",
                                   tooltip="Overlay the Grad-CAM heatmap of the predicted class", layout=widgets.Layout(width="auto"))
    message = widgets.HTML()
    picture = widgets.Image(format="png", layout=widgets.Layout(display="none", max_width="900px"))
    loaded: dict[str, SmearModel | float | None] = {}

    def chosen_image() -> bytes | None:
        if picker is not None and picker.value is not None:
            return picker.value
        return bytes(upload.value[-1]["content"]) if upload.value else None

    def model() -> SmearModel:
        if "model" not in loaded:
            try:
                loaded["model"], info = load_model(model_uri)
                loaded["threshold"] = info.referral_threshold
            except Exception as error:
                raise DemoError(f"could not load the model {model_uri}: {error}") from None
        return loaded["model"]

    def segmenter() -> SmearModel | None:
        if "segmenter" not in loaded:
            try:
                loaded["segmenter"] = load_model(segmenter_uri)[0] if segmenter_uri else None
            except Exception as error:
                log.warning("no masks in the demo: could not load the segmenter %s: %s", segmenter_uri, error)
                loaded["segmenter"] = None
        return loaded["segmenter"]

    def on_upload(_change) -> None:
        if picker is not None:
            picker.value = None

    def on_predict(_clicked) -> None:
        image_bytes = chosen_image()
        if image_bytes is None:
            message.value = "<b>Upload an image or choose an example first.</b>"
            return
        button.disabled, message.value = True, "Predicting..."
        try:
            if api_url:
                result = predict_for_demo(image_bytes, api_url=api_url, explain=explain.value)
            else:
                result = predict_for_demo(image_bytes, model=model(), explain=explain.value,
                                          referral_threshold=loaded["threshold"])
            if not result.get("mask") and segmenter() is not None:
                result = with_mask(result, image_bytes, segmenter())
            picture.value = _png(render_result(image_bytes, result))
            picture.layout.display, message.value = None, _summary(result)
        except Exception as error:  # the widget shows every failure as a message, never a traceback
            picture.layout.display = "none"
            message.value = f"<b style='color:#b00'>Could not predict:</b> {html.escape(str(error) or type(error).__name__)}"
        finally:
            button.disabled = False

    def on_explain(_change) -> None:  # redraw a shown result with or without its heatmap
        if picture.layout.display != "none":
            on_predict(None)

    upload.observe(on_upload, "value")
    button.on_click(on_predict)
    explain.observe(on_explain, "value")
    controls = [upload, picker, button, explain] if picker else [upload, button, explain]
    source = f"the API at {api_url}" if api_url else model_uri
    return widgets.VBox([
        widgets.HTML(f"<h3>Blood smear classifier</h3><i>Research demo, not for diagnosis. Model: {html.escape(source)}</i>"),
        widgets.HBox(controls), message, picture,
    ])


def _summary(result: dict) -> str:
    parts = []
    if result.get("reason") == OUT_OF_DISTRIBUTION:
        parts.append("<b>Refer to a haematologist</b>: out of distribution, this image is unlike the images the model "
                     "was trained on (another lab, stain, magnification or kind of image); its probabilities are not "
                     "to be trusted")
    elif result.get("decision") == REFER:
        parts.append(f"<b>Refer to a haematologist</b>: confidence {result['confidence']:.1%} is under the referral "
                     f"threshold {result['referral_threshold']:.1%}")
    elif result.get("predicted_class"):
        parts.append(f"<b>{html.escape(result['predicted_class'])}</b>, confidence {result['confidence']:.1%}")
        if result.get("referral_threshold") is not None:
            parts.append(f"accepted at the referral threshold {result['referral_threshold']:.1%}")
    if result.get("mask_fraction") is not None:
        parts.append(f"mask covers {result['mask_fraction']:.0%} of the image")
    if result.get("heatmap_png"):
        parts.append("heatmap: Grad-CAM of the predicted class")
    if result.get("model_version"):
        parts.append(f"model {html.escape(result['model_version'])}")
    parts.append(f"{result['latency_ms']:.0f} ms")
    return " &middot; ".join(parts)


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()
