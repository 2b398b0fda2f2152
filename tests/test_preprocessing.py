"""Border crop and Reinhard stain normalisation (leukolab.models.preprocessing): the image math, the experiment keys,
the published model's metadata, and the same pixels at training and at serving."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.special import softmax

from leukolab import CLASS_NAMES
from leukolab.config.errors import ConfigError
from leukolab.config.experiment import Experiment, parse_experiment
from leukolab.data.reading.dataset import SmearDataset
from leukolab.data.synthetic.smears import smear_table
from leukolab.models.factory import build_model
from leukolab.models.inputs import normalize
from leukolab.models.preprocessing import Preprocessing, StainTarget, crop_border, fit_stain_target, lab_statistics, normalize_stain
from leukolab.predictor.meta import ModelMeta
from leukolab.predictor.smear_model import SmearModel
from leukolab.training.inputs import colour_statistics, prepare_inputs
from leukolab.training.loop import predict

SIZE = 40
CLASSIFIER = {"task": "classification", "model": {"architecture": "SimpleCNN", "width": 8}}


@pytest.fixture(scope="module")
def smears() -> pd.DataFrame:
    return smear_table(4, SIZE, seed=3)


def as_batch(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)[None].contiguous()


def cast(image: np.ndarray, gains=(1.15, 0.85, 0.75), offset: float = -20) -> np.ndarray:
    """A planted colour cast: per-channel gains and a darker exposure."""
    return np.clip(image.astype(float) * gains + offset, 0, 255).astype(np.uint8)


def test_normalisation_maps_a_colour_cast_back_to_the_target(smears):
    images = SmearDataset(smears).images
    target = fit_stain_target(images)
    original = images[0].permute(1, 2, 0).numpy()
    tinted = cast(original)
    assert np.abs(lab_statistics(tinted)[0] - target.mean).max() > 8  # the cast moves the colour well away

    normalised = normalize_stain(as_batch(tinted), target)[0].permute(1, 2, 0).numpy()
    mean, std = lab_statistics(normalised)
    assert np.abs(mean - target.mean).max() < 2.0
    assert np.abs(std - target.std).max() < 2.0
    # and the tinted image lands near the normalised original: the cast is gone, the picture is not
    reference = normalize_stain(as_batch(original), target)[0].permute(1, 2, 0).numpy()
    assert np.abs(normalised.astype(int) - reference.astype(int)).mean() < 6


def test_an_image_with_the_target_statistics_is_left_as_it_is(smears):
    image = SmearDataset(smears).images[5].permute(1, 2, 0).numpy()
    mean, std = lab_statistics(image)
    target = StainTarget(tuple(map(float, mean)), tuple(map(float, std)))
    out = normalize_stain(as_batch(image), target)[0].permute(1, 2, 0).numpy()
    assert np.abs(out.astype(int) - image.astype(int)).max() <= 1


def test_the_target_is_the_median_of_the_training_images_statistics(smears):
    images = SmearDataset(smears).images
    odd = torch.from_numpy(cast(images[0].permute(1, 2, 0).numpy(), offset=-80)).permute(2, 0, 1)[None]
    with_outlier = torch.cat([images, odd])
    assert np.allclose(fit_stain_target(with_outlier).mean, fit_stain_target(images).mean, atol=1.5)


def test_the_border_crop_keeps_the_centre_and_the_size():
    framed = np.zeros((SIZE, SIZE, 3), np.uint8)
    framed[:] = (250, 20, 20)  # a red frame 4 px wide (10% of 40) around a green centre
    framed[4:-4, 4:-4] = (20, 200, 40)
    out = crop_border(as_batch(framed), 0.1)
    assert out.shape == (1, 3, SIZE, SIZE) and out.dtype == torch.uint8
    assert (out[0].permute(1, 2, 0).numpy() == (20, 200, 40)).all()
    wide = np.zeros((20, 60, 3), np.uint8)
    wide[:, :, 0] = np.arange(60)  # a ramp: the crop takes 6 px off the left and right, 2 off the top and bottom
    cropped = crop_border(as_batch(wide), 0.1)[0, 0].numpy()
    assert cropped.shape == (20, 60) and 5 <= cropped.min() <= 7 and 52 <= cropped.max() <= 54
    assert torch.equal(crop_border(as_batch(framed), 0.01), as_batch(framed))  # rounds to no pixel: untouched


def test_preprocessing_is_off_by_default_and_the_crop_is_for_classifiers():
    experiment = Experiment.model_validate(CLASSIFIER)
    assert experiment.preprocessing.stain_normalization == "none" and experiment.preprocessing.border_crop == 0
    assert not Preprocessing().active
    with pytest.raises(ConfigError, match="border_crop"):
        parse_experiment({"task": "segmentation", "model": {"architecture": "Unet", "encoder": "resnet18"},
                          "preprocessing": {"border_crop": 0.1}})
    with pytest.raises(ConfigError, match="border_crop"):
        parse_experiment({**CLASSIFIER, "preprocessing": {"border_crop": 0.4}})


def fitted(smears: pd.DataFrame, preprocessing: dict):
    """A tiny classifier's experiment, network, training inputs (train: the first two smears of each class) and meta."""
    experiment = Experiment.model_validate({**CLASSIFIER, "preprocessing": preprocessing})
    torch.manual_seed(0)
    network = build_model(experiment, len(CLASS_NAMES)).eval()
    data = {"train": SmearDataset(smears[smears.index % 4 < 2]), "test": SmearDataset(smears[smears.index % 4 >= 2])}
    inputs = prepare_inputs(experiment, data, **colour_statistics(data["train"]))
    meta = ModelMeta(experiment=experiment, class_names=list(CLASS_NAMES), image_size=SIZE, mean=inputs.mean,
                     std=inputs.std, stain_target=inputs.preprocessing.stain_target)
    return network, inputs, meta


def test_the_published_model_sees_what_training_saw(smears):
    network, inputs, meta = fitted(smears, {"stain_normalization": "reinhard", "border_crop": 0.1})
    assert inputs.preprocessing == meta.preprocessing and inputs.preprocessing.stain_target is not None
    test_frame = smears[smears.index % 4 >= 2]
    trained = softmax(predict(network, inputs.splits["test"].images, inputs.mean, inputs.std)["logits"], axis=1)

    served = SmearModel(network, meta).predict(None, pd.DataFrame({"image": list(test_frame["image"])}))  # the files' bytes
    assert np.allclose(served[[f"prob_{c}" for c in CLASS_NAMES]].to_numpy(), trained, atol=1e-5)
    assert not torch.equal(inputs.splits["test"].images, SmearDataset(test_frame).images)  # it did change the pixels


def test_the_meta_round_trip_carries_the_target_and_old_metas_load_unchanged(smears):
    network, inputs, meta = fitted(smears, {"stain_normalization": "reinhard"})
    again = ModelMeta.from_json(meta.to_json())
    assert again == meta and again.preprocessing.stain_target == inputs.preprocessing.stain_target

    old = meta.model_dump(mode="json")
    del old["stain_target"], old["experiment"]["preprocessing"]  # as meta.json was written before these keys
    before = ModelMeta.read(old)
    assert not before.preprocessing.active
    images = SmearDataset(smears).images
    expected = softmax(network(normalize(images, before.mean, before.std))["logits"].detach().numpy(), axis=1)
    assert np.allclose(SmearModel(network, before).forward(images)["probabilities"], expected, atol=1e-6)
    with pytest.raises(ValueError, match="stain_target"):
        ModelMeta.read({**meta.model_dump(mode="json"), "stain_target": None})
