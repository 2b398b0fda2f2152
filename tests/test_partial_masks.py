"""Splits where some images have no (plausible) mask: the dataset, the loss, training and Dice on masked rows only."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from leukolab import CLASS_NAMES
from leukolab.config.experiment import Experiment, load_experiment
from leukolab.data.reading.dataset import SmearDataset, load_datasets
from leukolab.data.synthetic.smears import smear_table
from leukolab.models.factory import build_model
from leukolab.training.loop import evaluate, fit
from leukolab.training.losses import TaskLoss

MEAN, STD = [0.75, 0.65, 0.68], [0.15, 0.17, 0.15]


@pytest.fixture(scope="module")
def frame():
    """8 smears of 32 px, the masks of every Pro image dropped (as the audit drops failed segmentations)."""
    table = smear_table(2, 32, seed=5)
    table.loc[table["class_name"] == "Pro", "mask"] = None
    return table


def test_dataset_accepts_missing_masks(frame):
    dataset = SmearDataset(frame, with_masks=True)
    assert dataset.has_mask.tolist() == [True] * 6 + [False] * 2 and dataset.mask_images == 6
    assert dataset.masks.shape == (8, 1, 32, 32) and dataset.masks[6:].sum() == 0 and dataset.masks[:6].sum() > 0
    image, label, mask, has_mask = dataset[7]
    assert image.shape == (3, 32, 32) and label == 3 and not has_mask
    assert SmearDataset(frame.iloc[6:], with_masks=True).masks.shape == (2, 1, 1, 1)
    assert not SmearDataset(frame).has_mask.any()


def test_load_datasets_gives_segmentation_only_the_masked_rows(frame, tmp_path):
    (tmp_path / "data").mkdir()
    table = frame.assign(split=["train", "val"] * 4)
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False), tmp_path / "data" / "part-0.parquet")
    segmentation = load_datasets(tmp_path, ("train", "val"), "segmentation")
    joint = load_datasets(tmp_path, ("train", "val"), "joint")
    assert [len(segmentation[s]) for s in ("train", "val")] == [3, 3] and segmentation["val"].has_mask.all()
    assert [(len(joint[s]), joint[s].mask_images) for s in ("train", "val")] == [(4, 3), (4, 3)]
    assert load_datasets(tmp_path, ("train",), "classification")["train"].mask_images == 0
    pq.write_table(pa.Table.from_pandas(table.assign(mask=None), preserve_index=False), tmp_path / "data" / "part-0.parquet")
    with pytest.raises(ValueError, match="no plausible masks"):
        load_datasets(tmp_path, ("train",), "segmentation")


def test_task_loss_uses_only_the_samples_with_a_mask():
    loss = TaskLoss(Experiment.model_validate({"task": "joint", "model": {"architecture": "Unet"}, "loss": {"segmentation": {"name": "bce"}}}))
    torch.manual_seed(0)
    out = {"logits": torch.randn(4, 4), "mask": torch.randn(4, 1, 8, 8, requires_grad=True)}
    labels, masks = torch.tensor([0, 1, 2, 3]), (torch.rand(4, 1, 8, 8) > 0.5).float()
    has_mask = torch.tensor([True, True, False, False])
    classification = torch.nn.functional.cross_entropy(out["logits"], labels)
    expected = classification + torch.nn.functional.binary_cross_entropy_with_logits(out["mask"][:2], masks[:2])
    partial = loss(out, labels, masks, has_mask)
    assert torch.isclose(partial, expected)
    assert torch.isclose(loss(out, labels, masks, torch.ones(4, dtype=torch.bool)), loss(out, labels, masks))
    partial.backward()
    assert out["mask"].grad[2:].abs().sum() == 0 and out["mask"].grad[:2].abs().sum() > 0
    out["mask"].grad = None
    none = loss(out, labels, masks, torch.zeros(4, dtype=torch.bool))
    assert torch.isclose(none, classification)
    none.backward()
    assert out["mask"].grad is not None and out["mask"].grad.abs().sum() == 0


def test_joint_training_and_dice_on_the_masked_rows_only(frame):
    dataset = SmearDataset(frame, with_masks=True)
    experiment = load_experiment("joint-unet-resnet18", {"training": {"epochs": 1, "batch_size": 4}})
    model = build_model(experiment, 4)
    result = fit(model, dataset, dataset, experiment, MEAN, STD, CLASS_NAMES)
    assert np.isfinite(result.history[0]["train_loss"]) and result.history[0]["val_mask_images"] == 6
    metrics = evaluate(model, dataset, MEAN, STD, CLASS_NAMES, "joint")
    masked = evaluate(model, SmearDataset(frame.iloc[:6], with_masks=True), MEAN, STD, CLASS_NAMES, "joint")
    assert metrics["mask_images"] == 6 and metrics["dice"] == pytest.approx(masked["dice"])
    assert metrics["iou"] == pytest.approx(masked["iou"])


def test_evaluate_model_scores_masks_on_the_masked_rows_only(frame):
    from leukolab.evaluation.compare import evaluate_model
    from leukolab.predictor.smear_model import SmearModel

    experiment = load_experiment("unet-mobilenet")
    model = SmearModel(build_model(experiment, 4).eval(), {"experiment": experiment, "class_names": CLASS_NAMES,
                                                          "mean": MEAN, "std": STD, "image_size": 32})
    metrics, outputs = evaluate_model(model, SmearDataset(frame, with_masks=True), bootstrap_samples=0)
    masked, _ = evaluate_model(model, SmearDataset(frame.iloc[:6], with_masks=True), bootstrap_samples=0)
    assert metrics["images"] == 8 and outputs["mask"].shape == (8, 32, 32)
    assert metrics["mask_images"] == masked["mask_images"] == 6 and metrics["dice"] == pytest.approx(masked["dice"])
    unmasked, _ = evaluate_model(model, SmearDataset(frame.iloc[6:], with_masks=True), bootstrap_samples=0)
    assert "dice" not in unmasked and unmasked["mask_images"] == 0
