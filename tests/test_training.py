"""Training: models by name, augmentation, determinism, and learning beyond a trivial baseline."""

import copy

import numpy as np
import pytest
import torch

from leukolab import CLASS_NAMES
from leukolab.config import available
from leukolab.config.experiment import load_experiment
from leukolab.config.experiment import AugmentationSpec, Experiment, InferenceSpec
from leukolab.data.reading.dataset import SmearDataset
from leukolab.data.synthetic.smears import smear_table
from leukolab.models.factory import build_model
from leukolab.training.augment import augment_batch, label_mixer
from leukolab.training.loop import evaluate, fit


@pytest.fixture(scope="module")
def splits():
    return {name: SmearDataset(smear_table(n, 64, seed), with_masks=True)
            for name, n, seed in (("train", 40, 1), ("val", 10, 2), ("test", 20, 3))}


@pytest.fixture(scope="module")
def tiny():
    return SmearDataset(smear_table(2, 64, 4), with_masks=True)


MEAN, STD = [0.75, 0.65, 0.68], [0.15, 0.17, 0.15]


@pytest.mark.parametrize("architecture", ["Unet", "UnetPlusPlus", "FPN", "DeepLabV3Plus", "MAnet"])
def test_factory_builds_smp_architectures(architecture):
    model = build_model(Experiment.model_validate({"task": "joint", "model": {"architecture": architecture, "encoder": "resnet18"}}), 4)
    out = model(torch.zeros(2, 3, 64, 64))
    assert out["mask"].shape == (2, 1, 64, 64) and out["logits"].shape == (2, 4)


@pytest.mark.parametrize("encoder", ["resnet34", "densenet121", "efficientnet-b0", "mobilenet_v2"])
def test_factory_builds_encoder_classifiers(encoder):
    model = build_model(Experiment.model_validate({"task": "classification", "model": {"architecture": "EncoderClassifier", "encoder": encoder}}), 4)
    assert model(torch.zeros(2, 3, 64, 64))["logits"].shape == (2, 4)


@pytest.mark.parametrize("name", available("experiments"))
def test_every_experiment_builds_and_trains_an_epoch(name, tiny):
    experiment = load_experiment(name, {"training": {"epochs": 1, "batch_size": 8}})
    result = fit(build_model(experiment, 4), tiny, tiny, experiment, MEAN, STD, CLASS_NAMES)
    assert np.isfinite(result.history[0]["train_loss"]) and result.monitor in result.history[0]


def test_mixup_and_cutmix_mix_pairs_into_soft_targets():
    np.random.seed(0)
    images, labels = torch.rand(8, 3, 16, 16), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    assert label_mixer(AugmentationSpec(), 4) is None
    for config in (AugmentationSpec(mixup=0.4), AugmentationSpec(cutmix=1.0)):
        mixed, targets = label_mixer(config, 4)(images.clone(), labels)
        assert targets.shape == (8, 4) and torch.allclose(targets.sum(1), torch.ones(8))
        assert (targets.max(1).values < 1).any() and not torch.equal(mixed, images)


def test_label_mixing_is_refused_where_labels_cannot_be_mixed(tiny):
    experiment = load_experiment("unet-mobilenet", {"training": {"epochs": 1}, "augmentation": {"mixup": 0.2}})
    with pytest.raises(ValueError, match="mixup and cutmix"):
        fit(build_model(experiment, 4), tiny, tiny, experiment, MEAN, STD, CLASS_NAMES)


def test_imagenet_weights_offline_fail_with_a_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="encoder_weights: null"):
        build_model(Experiment.model_validate({"task": "segmentation", "model": {"architecture": "Unet", "encoder": "resnet18",
                                                        "encoder_weights": "imagenet"}}), 4)


def test_augmentation_moves_image_and_mask_together():
    images = torch.zeros(8, 3, 16, 16, dtype=torch.uint8)
    images[:, :, :4, :4] = 255
    masks = (images[:, :1] > 0).to(torch.uint8)
    config = AugmentationSpec(brightness=0, contrast=0, saturation=0, stain=0)
    out_images, out_masks = augment_batch(images, masks, config, torch.Generator().manual_seed(0))
    assert torch.equal(out_images[:, :1] > 0.5, out_masks.bool())
    assert not torch.equal(out_masks, masks)  # something moved


def test_same_seed_same_metrics(splits):
    experiment = load_experiment("simple-cnn", {"training": {"epochs": 2}, "model": {"width": 8}})
    results = []
    for _ in range(2):
        model = build_model(experiment, 4)
        fit(model, splits["train"], splits["val"], experiment, MEAN, STD, CLASS_NAMES)
        results.append(evaluate(model, splits["test"], MEAN, STD, CLASS_NAMES, "classification"))
    assert results[0] == results[1]


def test_checkpoint_resumes_an_interrupted_run(splits, tmp_path):
    experiment = load_experiment("simple-cnn", {"training": {"epochs": 2}, "model": {"width": 8}})
    first = fit(build_model(experiment, 4), splits["train"], splits["val"], experiment, MEAN, STD, CLASS_NAMES, tmp_path)
    epochs_seen = []
    resumed = fit(build_model(experiment, 4), splits["train"], splits["val"], experiment, MEAN, STD, CLASS_NAMES, tmp_path,
                  on_epoch_end=lambda epoch, metrics: epochs_seen.append(epoch))
    assert epochs_seen == [] and resumed.history == first.history


def colour_baseline_accuracy(train: SmearDataset, test: SmearDataset) -> float:
    """Nearest class mean on the mean colour of the image: the trivial baseline."""
    feature = lambda d: d.images.float().mean(dim=(2, 3)).numpy()
    centroids = np.stack([feature(train)[train.labels.numpy() == k].mean(0) for k in range(4)])
    predictions = np.linalg.norm(feature(test)[:, None] - centroids[None], axis=2).argmin(1)
    return float((predictions == test.labels.numpy()).mean())


def test_trained_model_beats_the_trivial_colour_baseline(splits):
    experiment = load_experiment("simple-cnn", {"training": {"epochs": 25}, "early_stopping": {"patience": 25}})
    model = build_model(experiment, 4)
    fit(model, splits["train"], splits["val"], experiment, MEAN, STD, CLASS_NAMES)
    trained = evaluate(model, splits["test"], MEAN, STD, CLASS_NAMES, "classification")["accuracy"]
    baseline = colour_baseline_accuracy(splits["train"], splits["test"])
    assert baseline < 0.45
    assert trained >= baseline + 0.3, (trained, baseline)


def test_segmentation_learns_the_white_cells(splits):
    experiment = load_experiment("unet-mobilenet", {"training": {"epochs": 6}})
    model = build_model(experiment, 4)
    fit(model, splits["train"], splits["val"], experiment, MEAN, STD, CLASS_NAMES)
    assert evaluate(model, splits["test"], MEAN, STD, CLASS_NAMES, "segmentation")["dice"] > 0.6


def test_test_time_augmentation_is_invariant_to_rotation_and_maps_masks_back():
    experiment = Experiment.model_validate({"task": "joint", "model": {"architecture": "Unet", "encoder": "mobilenet_v2",
                                            "encoder_weights": None}, "inference": {"tta": True}})
    model = build_model(experiment, 4).eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out, turned = model(images), model(torch.rot90(images, 1, (-2, -1)))
        plain = build_model(experiment.model_copy(update={"inference": InferenceSpec()}), 4).eval()(images)
    assert torch.allclose(out["logits"], turned["logits"], atol=1e-4)
    assert torch.allclose(torch.rot90(out["mask"], 1, (-2, -1)), turned["mask"], atol=1e-4)
    assert not torch.allclose(out["mask"], plain["mask"], atol=1e-4)


def test_epoch_validation_sees_each_image_once_and_the_model_keeps_its_tta(splits):
    experiment = load_experiment("simple-cnn", {"training": {"epochs": 1, "ema_decay": 0}, "model": {"width": 8},
                                                "inference": {"tta": True}})
    model = build_model(experiment, 4)
    seen = []
    model.network.register_forward_hook(lambda module, inputs, output: seen.append((module.training, len(inputs[0]))))
    fit(model, splits["train"], splits["val"], experiment, MEAN, STD, CLASS_NAMES)
    assert sum(n for training, n in seen if not training) == len(splits["val"])
    assert model.tta
    seen.clear()
    evaluate(model, splits["val"], MEAN, STD, CLASS_NAMES, "classification")
    assert sum(n for _, n in seen) == 8 * len(splits["val"])


def test_without_a_validation_set_the_full_schedule_runs_and_the_final_weights_stay(splits):
    experiment = load_experiment("simple-cnn", {"training": {"epochs": 3, "ema_decay": 0}, "model": {"width": 8},
                                                "early_stopping": {"patience": 1}})
    model = build_model(experiment, 4)
    weights = []
    result = fit(model, splits["train"], None, experiment, MEAN, STD, CLASS_NAMES,
                 on_epoch_end=lambda epoch, metrics: weights.append(copy.deepcopy(model.state_dict())))
    assert [h["epoch"] for h in result.history] == [1, 2, 3] and result.best_epoch == 3 and not result.stopped_early
    assert not any(key.startswith("val_") for key in result.history[-1])
    final = model.state_dict()
    assert all(torch.equal(final[k], weights[-1][k]) for k in final)
    assert not all(torch.equal(final[k], weights[0][k]) for k in final)
