"""Grad-CAM heatmaps: shape, range and determinism, the target layer per architecture, the model-randomisation check
(Adebayo et al. 2018) on a tiny trained CNN, the published model's explain path and the evaluation report's figure."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from leukolab import plots
from leukolab.config.experiment import Experiment
from leukolab.data.reading.dataset import SmearDataset
from leukolab.data.synthetic.smears import smear_table
from leukolab.evaluation.explanations import explained_examples, heatmap_examples
from leukolab.images import image_array
from leukolab.models.factory import build_model
from leukolab.models.heatmaps import HeatmapExplainer, class_heatmaps, target_layer
from leukolab.predictor.uri import load_model

SIZE = 32
CNN = Experiment.model_validate({"task": "classification", "model": {"architecture": "SimpleCNN", "width": 8}})


@pytest.fixture(scope="module")
def smears() -> dict:
    """16 synthetic smears per class at 32 px, standardised, with labels and white-cell masks."""
    table = smear_table(16, SIZE, seed=3)
    images = torch.from_numpy(np.stack([image_array(data) for data in table["image"]])).permute(0, 3, 1, 2).float() / 255
    images = (images - images.mean((0, 2, 3), keepdim=True)) / images.std((0, 2, 3), keepdim=True)
    return {"images": images, "labels": torch.tensor(table["label"].to_numpy()),
            "masks": np.stack([image_array(data) > 0 for data in table["mask"]])}


@pytest.fixture(scope="module")
def trained(smears):
    """The 4-block CNN (width 8) trained to fit the smears: 15 epochs of Adam, a few seconds."""
    network = build_model(CNN, 4)
    optimizer = torch.optim.Adam(network.parameters(), 3e-3)
    network.train()
    for epoch in range(15):
        for batch in torch.randperm(len(smears["labels"]), generator=torch.Generator().manual_seed(epoch)).split(16):
            loss = torch.nn.functional.cross_entropy(network(smears["images"][batch])["logits"], smears["labels"][batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    network.eval().zero_grad(set_to_none=True)
    with torch.no_grad():
        accuracy = (network(smears["images"])["logits"].argmax(1) == smears["labels"]).float().mean().item()
    assert accuracy > 0.9, f"the tiny CNN did not learn the smears (accuracy {accuracy:.2f})"
    return network


def correlation(first: np.ndarray, second: np.ndarray) -> float:
    """Mean per-image Pearson correlation of two stacks of heatmaps (0 for a flat one)."""
    return float(np.mean([np.corrcoef(a.ravel(), b.ravel())[0, 1] if a.std() > 0 and b.std() > 0 else 0.0
                          for a, b in zip(first, second)]))


def test_heatmaps_have_the_input_size_stay_in_0_1_and_repeat_exactly(trained, smears):
    explainer = HeatmapExplainer(trained, SIZE)
    heatmaps = explainer(smears["images"])
    assert heatmaps.shape == (64, SIZE, SIZE) and heatmaps.dtype == np.float32
    assert heatmaps.min() >= 0 and heatmaps.max() <= 1 and np.allclose(heatmaps.reshape(64, -1).max(1), 1, atol=1e-3)
    np.testing.assert_array_equal(heatmaps, explainer(smears["images"]))
    np.testing.assert_array_equal(heatmaps, class_heatmaps(trained, smears["images"]))
    predicted = trained(smears["images"])["logits"].argmax(1).tolist()
    np.testing.assert_array_equal(heatmaps, explainer(smears["images"], predicted))


def test_the_class_explained_matters(trained, smears):
    explainer = HeatmapExplainer(trained, SIZE)
    labels = smears["labels"].tolist()
    other = [(label + 2) % 4 for label in labels]
    assert correlation(explainer(smears["images"], labels), explainer(smears["images"], other)) < 0.9
    with pytest.raises(ValueError, match="one class per image"):
        explainer(smears["images"][:2], [0])


def test_randomised_weights_change_the_heatmap(trained, smears):
    """Adebayo et al.'s model-randomisation check: a map that survives randomising the weights explains nothing."""
    labels = smears["labels"].tolist()
    explained = HeatmapExplainer(trained, SIZE)(smears["images"], labels)
    for seed in (7, 8, 9):
        randomised = build_model(CNN.model_copy(update={"seed": seed}), 4).eval()
        assert correlation(explained, HeatmapExplainer(randomised, SIZE)(smears["images"], labels)) < 0.3, seed


def test_the_trained_model_looks_at_the_white_cells(trained, smears):
    heatmaps = HeatmapExplainer(trained, SIZE)(smears["images"], smears["labels"].tolist())
    contrast = np.mean([heatmap[mask].mean() - heatmap[~mask].mean() for heatmap, mask in zip(heatmaps, smears["masks"])])
    assert contrast > 0.05, contrast


ARCHITECTURES = {
    "SimpleCNN": ({"task": "classification", "model": {"architecture": "SimpleCNN", "width": 8}}, "features.3"),
    "EncoderClassifier resnet18": ({"task": "classification", "model": {"architecture": "EncoderClassifier", "encoder": "resnet18"}},
                                   "encoder.layer4"),
    "EncoderClassifier timm resnet10t": ({"task": "classification", "model": {"architecture": "EncoderClassifier",
                                                                              "encoder": "tu-resnet10t"}}, "encoder.model.layer4"),
    "joint Unet mobilenet_v2": ({"task": "joint", "model": {"architecture": "Unet", "encoder": "mobilenet_v2"}},
                                "encoder.features.18"),
}


@pytest.mark.parametrize("architecture", ARCHITECTURES, ids=str)
def test_the_target_layer_is_the_last_stage_of_each_architecture(architecture):
    spec, expected = ARCHITECTURES[architecture]
    network = build_model(Experiment.model_validate(spec), 4).eval()
    names = {module: name for name, module in network.network.named_modules()}
    assert names[target_layer(network)] == expected
    assert HeatmapExplainer(network)(torch.randn(2, 3, 64, 64)).shape == (2, 64, 64)


def test_a_segmentation_only_model_has_nothing_to_explain():
    network = build_model(Experiment.model_validate({"task": "segmentation", "model": {"architecture": "Unet",
                                                                                       "encoder": "mobilenet_v2"}}), 4)
    with pytest.raises(ValueError, match="segmentation-only model has no class to explain"):
        HeatmapExplainer(network)


def test_explaining_leaves_the_network_alone_and_is_thread_safe(trained, smears):
    trained.tta = True
    try:
        with torch.no_grad():
            before = trained(smears["images"])["logits"]
        explainer = HeatmapExplainer(trained, SIZE)
        expected = explainer(smears["images"][:8])
        with ThreadPoolExecutor(4) as pool:  # explanations beside plain forward passes of the original network
            explained = [pool.submit(explainer, smears["images"][:8]) for _ in range(4)]
            forwards = [pool.submit(trained, smears["images"]) for _ in range(4)]
            for future in explained:
                np.testing.assert_array_equal(future.result(), expected)
            for future in forwards:
                torch.testing.assert_close(future.result()["logits"].detach(), before)
        assert trained.tta and all(parameter.requires_grad and parameter.grad is None for parameter in trained.parameters())
        assert not any(module._forward_hooks for module in trained.modules())
    finally:
        trained.tta = False


def test_the_published_model_explains_through_pyfunc_and_from_bytes(model_env, monkeypatch):
    from leukolab import tracking

    monkeypatch.setenv("LEUKOLAB_WORKSPACE", str(model_env["workspace"]))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", model_env["tracking_uri"])
    tracking.configure()  # this store, whatever an earlier test left as MLflow's tracking URI
    frame = pd.DataFrame({"image": [model_env["example_image"]] * 2})
    pyfunc = mlflow.pyfunc.load_model(model_env["uri"])
    assert "heatmap_png" not in pyfunc.predict(frame).columns
    answers = pyfunc.predict(frame, params={"explain": True})
    heatmap = np.asarray(Image.open(io.BytesIO(base64.b64decode(answers["heatmap_png"][0]))))
    assert heatmap.shape == (64, 64) and heatmap.dtype == np.uint8
    model = load_model(model_env["uri"])[0]
    from_bytes = model.explain_image(model_env["example_image"])
    assert from_bytes.shape == (64, 64) and 0 <= from_bytes.min() <= from_bytes.max() <= 1
    np.testing.assert_array_equal(heatmap, np.round(from_bytes * 255).astype(np.uint8))
    assert model.explain_image(model_env["example_image"], "Pro").shape == (64, 64)
    with pytest.raises(ValueError, match="unknown class 'Blast'"):
        model.explain_image(model_env["example_image"], "Blast")


def test_report_examples_are_the_most_confident_mistakes_and_one_correct_image_per_class():
    labels = [0, 0, 1, 1, 2, 2, 0]
    probabilities = np.array([[0.9, 0.1, 0.0], [0.6, 0.4, 0.0], [0.2, 0.8, 0.0], [0.95, 0.05, 0.0],
                              [0.1, 0.7, 0.2], [0.3, 0.6, 0.1], [0.97, 0.03, 0.0]])
    # mistakes: 3 (0.95), 4 (0.7), 5 (0.6); correct: class 0 -> 6 (0.97), class 1 -> 2, class 2 -> none
    assert heatmap_examples(labels, probabilities, mistakes=2) == [3, 4, 6, 2]
    assert heatmap_examples(labels, probabilities) == [3, 4, 5, 6, 2]


def test_report_figure_of_the_published_model(model_env):
    model = load_model(model_env["uri"])[0]
    dataset = SmearDataset(smear_table(2, 64, seed=4))
    probabilities = model.forward(dataset.images)["probabilities"]
    labels = dataset.labels.numpy()
    images, heatmaps, titles = explained_examples(model, dataset.images, labels, probabilities, mistakes=2)
    chosen = heatmap_examples(labels, probabilities, mistakes=2)
    assert len(images) == len(heatmaps) == len(titles) == len(chosen) > 0
    assert images[0].shape == (64, 64, 3) and heatmaps[0].shape == (64, 64)
    np.testing.assert_array_equal(heatmaps[0], model.explain_prepared([images[0]])[0])
    first = chosen[0]
    assert titles[0].startswith(("mistake" if probabilities[first].argmax() != labels[first] else "correct") + ": ")
    figure = plots.heatmap_grid(images, heatmaps, titles)
    assert sum(len(ax.images) for ax in figure.axes) == 2 * len(images)
    assert titles[-1] in [ax.get_title() for ax in figure.axes]


def test_a_published_segmenter_says_it_cannot_explain(model_env, segmentation_model_uri):
    model = load_model(segmentation_model_uri)[0]
    with pytest.raises(ValueError, match="segmentation-only model has no class to explain"):
        model.explain_image(model_env["example_image"])
    with pytest.raises(ValueError, match="segmentation-only model"):
        model.predict_images([Image.open(io.BytesIO(model_env["example_image"]))], explain=True)
