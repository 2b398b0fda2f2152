"""The API's response bodies; every field is described in the OpenAPI document."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from leukolab.predictor.decision import decide_answer


class ErrorBody(BaseModel):
    detail: str = Field(description="What was wrong, in words")
    reason: str = Field(description="Machine-readable cause, e.g. not_an_image, file_too_large, loading")


class Health(BaseModel):
    status: str = Field(description='Always "ok": the process answers')
    model_uri: str = Field(description="The model URI the server was started with")
    model_ready: bool = Field(description="Whether the model is loaded (see /ready)")
    leukolab_version: str = Field(description="Version of the leukolab package")


class Readiness(BaseModel):
    status: str = Field(description='"ready" once the model is loaded')


class VersionInfo(BaseModel):
    model_uri: str = Field(description="The model URI the server was started with")
    name: str | None = Field(description="Registered model name; null for runs:/ URIs")
    version: str | None = Field(description="Registered model version the alias pointed to at start-up")
    run_id: str | None = Field(description="MLflow run that logged the model")
    dataset_fingerprint: str | None = Field(description="The run's dataset_fingerprint tag, when set")
    referral_threshold: float | None = Field(description="The version's referral threshold; null: every prediction is accepted")
    ood_check: dict | None = Field(description=(
        "The model's out-of-distribution check (detectors, threshold, share, calibration images, kept_share: the "
        "share of new in-distribution images it keeps at least); null: the model was "
        "published without one, and out-of-distribution images are not referred"))
    task: str = Field(description="classification, segmentation or joint")
    class_names: list[str] = Field(description="Classes, in the model's output order")
    image_size: int = Field(description="Side in pixels images are resized to before inference")
    leukolab_version: str = Field(description="Version of the leukolab package")


class Prediction(BaseModel):
    predicted_class: str | None = Field(description="Most probable class; null for segmentation-only models")
    probabilities: dict[str, float] | None = Field(description=(
        "Probability per class (temperature-scaled softmax); not to be trusted when reason is out_of_distribution"))
    confidence: float | None = Field(description="Probability of the predicted class")
    mask: str | None = Field(description="Base64 PNG of the cell mask (0/255) at model resolution; null without segmentation")
    mask_fraction: float | None = Field(description="Fraction of the image the mask covers")
    model_version: str | None = Field(description="Model that answered: name/version, else run id; null when unknown")
    latency_ms: float = Field(description="Server time for this request: reading, decoding and inference")
    decision: Literal["accept", "refer"] = Field(
        description="accept: in distribution and confidence >= referral_threshold (or no threshold); refer: refer to a "
                    "haematologist, do not act on predicted_class")
    reason: Literal["out_of_distribution", "low_confidence"] | None = Field(
        default=None, description="Why it is referred: out_of_distribution (the image is unlike the training data: "
                                  "another lab, stain or kind of image) or low_confidence; null when accepted")
    ood_score: float | None = Field(default=None, description=(
        "Out-of-distribution score (higher: further from the training data; over the model's ood_check threshold: "
        "referred); null when the model carries no out-of-distribution check"))
    referral_threshold: float | None = Field(
        description="The served version's referral threshold (chosen on val for a target risk); null: none, all accepted")
    heatmap_png: str | None = Field(default=None, description=(
        "With explain=true: base64 PNG (8-bit grey, 0-255) of where the model looked, the Grad-CAM heatmap of the "
        "predicted class at model resolution; null without explain"))

    @classmethod
    def from_answer(cls, answer: dict, class_names: list[str], model_version: str | None, latency_ms: float,
                    referral_threshold: float | None = None) -> Prediction:
        """From one :meth:`SmearModel.predict_images` answer, decided at ``referral_threshold``."""
        probabilities = {name: answer[f"prob_{name}"] for name in class_names if f"prob_{name}" in answer}
        decision, reason = decide_answer(answer, referral_threshold)
        return cls(predicted_class=answer.get("predicted_class"), probabilities=probabilities or None,
                   confidence=answer.get("confidence"), mask=answer.get("mask_png"),
                   mask_fraction=answer.get("mask_fraction"), model_version=model_version, latency_ms=latency_ms,
                   decision=decision, reason=reason, ood_score=answer.get("ood_score"), referral_threshold=referral_threshold,
                   heatmap_png=answer.get("heatmap_png"))


class BatchPrediction(BaseModel):
    predictions: list[Prediction] = Field(description="One prediction per uploaded file, in upload order")
    model_version: str | None = Field(description="Model that answered: name/version, else run id; null when unknown")
    latency_ms: float = Field(description="Server time for the whole request: reading, decoding and inference")
