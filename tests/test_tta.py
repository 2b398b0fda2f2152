"""Gated test-time augmentation: the gate chosen on a split answers every image of it as full TTA does, the served
model applies it, and only the images under it pay for the eight views."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from leukolab.config.experiment import Experiment
from leukolab.models.factory import build_model, without_tta
from leukolab.predictor.gated_tta import gate_from_tags
from leukolab.predictor.smear_model import SmearModel
from leukolab.publishing.tta import answers, choose_tta_gate, measure_gate

CLASS_NAMES = ["Benign", "Early", "Pre", "Pro"]


def test_the_gate_is_the_highest_plain_confidence_tta_changed_plus_the_margin():
    plain = np.array([[0.9, 0.1], [0.55, 0.45], [0.4, 0.6], [0.7, 0.3]])
    augmented = np.array([[0.85, 0.15], [0.45, 0.55], [0.38, 0.62], [0.62, 0.38]])
    # row 1 changes class; row 3 keeps its class but falls under the threshold 0.65 (accept -> refer)
    chosen = choose_tta_gate(plain, augmented, threshold=0.65, margin=0.01)
    assert chosen["gate"] == pytest.approx(0.71) and chosen["changed"] == 2
    assert chosen["tta_share"] == 0.75  # rows 1, 2 and 3 are under the gate; row 0 is answered from the plain pass
    assert choose_tta_gate(plain, plain, threshold=0.65)["gate"] == 0.0  # TTA changed nothing: no image needs it
    assert answers(plain, None) == [(0, True), (0, True), (1, True), (0, True)]
    assert gate_from_tags({"tta_gate": "0.71"}) == 0.71 and gate_from_tags({}) is None
    with pytest.raises(ValueError, match="not a number"):
        gate_from_tags({"tta_gate": "high"}, "leukolab/3")


@pytest.fixture(scope="module")
def model_and_images():
    experiment = Experiment.model_validate({"task": "classification", "model": {"architecture": "SimpleCNN", "width": 8},
                                            "inference": {"tta": True}})
    meta = {"experiment": experiment, "class_names": CLASS_NAMES, "image_size": 32, "mean": [0.5] * 3,
            "std": [0.25] * 3, "temperature": 0.05}  # spreads the random network's confidences
    model = SmearModel(build_model(experiment, len(CLASS_NAMES)).eval(), meta)
    y, x = np.mgrid[0:32, 0:32] / 31
    ramps = []
    for angle in np.linspace(0, 2 * np.pi, 48, endpoint=False):  # colour ramps in every direction: TTA matters
        ramp = np.cos(angle) * x + np.sin(angle) * y
        ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min())
        ramps.append(np.stack([ramp, ramp ** 2, 1 - ramp]) * 255)
    return model, torch.from_numpy(np.stack(ramps).astype(np.uint8))


def gated(model: SmearModel, images: torch.Tensor, gate: float) -> np.ndarray:
    model.tta_gate = gate
    try:
        return model.forward(images)["probabilities"]
    finally:
        model.tta_gate = None


def test_a_gated_model_answers_the_split_it_was_chosen_on_as_full_tta(model_and_images):
    model, images = model_and_images
    full = model.forward(images)["probabilities"]
    with without_tta(model.network):
        plain = model.forward(images)["probabilities"]
    threshold = float(np.median(full.max(1)))  # many decisions near the threshold: TTA changes some of them
    measured = measure_gate(model, images, threshold, batch_size=16)
    assert measured["changed"] > 0 and measured["images"] == len(images)
    assert answers(gated(model, images, measured["gate"]), threshold) == answers(full, threshold)
    # Any gate: the images under it are answered by the eight views, the others by the plain pass.
    middle = float(np.median(plain.max(1)))
    under = plain.max(1) < middle
    assert 0 < under.sum() < len(images)
    np.testing.assert_allclose(gated(model, images, middle)[under], full[under], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gated(model, images, middle)[~under], plain[~under], rtol=1e-5, atol=1e-6)


def test_only_the_images_under_the_gate_go_through_the_eight_views(model_and_images):
    model, images = model_and_images
    seen: list[int] = []
    hook = model.network.network.register_forward_hook(lambda module, inputs, output: seen.append(len(inputs[0])))
    try:
        for gate, expected in ((0.0, [48]), (1.01, [48, 8 * 48])):
            model.tta_gate, seen[:] = gate, []
            model.forward(images)
            assert seen == expected, gate
        model.tta_gate = None
        seen[:] = []
        model.forward(images)
        assert seen == [8 * 48]  # without a gate: every image, as before
    finally:
        hook.remove()
        model.tta_gate = None


def test_threads_sharing_a_gated_model_each_get_their_own_answers_and_features(model_and_images):
    """The API's inference workers share one model: each pass is gated, augmented and featured on its own."""
    model, images = model_and_images
    model.tta_gate = float(np.median(gated(model, images, 0.0).max(1)))  # half the images take the eight views
    try:
        batches = [images[first:first + size] for first, size in ((0, 5), (5, 11), (16, 1), (17, 31))]
        expected = [model.forward(batch) for batch in batches]
        assert "features" in expected[0]
        with ThreadPoolExecutor(4) as pool:
            for _ in range(10):
                for got, want in zip(pool.map(model.forward, batches), expected):
                    assert got.keys() == want.keys()
                    for key in want:
                        np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-5, err_msg=key)
    finally:
        model.tta_gate = None
    assert model.network.tta  # as it was
