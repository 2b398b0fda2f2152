"""The out-of-distribution detectors, their combination and threshold, the referral reason, and the shifted sets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from leukolab.data.synthetic.shift import SHIFTS, generate_shifted_set, shifted_images
from leukolab.data.synthetic.smears import image_rng, render_smear
from leukolab.ood import Inputs, OodDetector, fit_detector, in_distribution_threshold
from leukolab.ood.descriptors import size_distributions
from leukolab.ood.detector import kept_share, out_of_fold_scores
from leukolab.ood.detectors import ColourCheck, Energy, KindCheck, Mahalanobis, NearestNeighbours, SizeCheck
from leukolab.ood.features import captured_features, features_per_image
from leukolab.predictor.decision import decide_answer


def gaussian_inputs(rng, n: int, shift: float = 0.0, dim: int = 16) -> tuple[Inputs, np.ndarray]:
    """Positive features (as after a ReLU) of two classes (means apart on the first axis), ``shift`` added on the
    second half of the axes (a change of direction, which normalised features still see)."""
    labels = rng.integers(0, 2, n)
    features = rng.normal(3, 1, (n, dim))
    features[:, dim // 2:] += shift
    features[:, 0] += 6 * labels
    images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    return Inputs(features, np.column_stack([features[:, 0], -features[:, 0]]), images), labels


def test_the_threshold_is_the_conformal_quantile_of_the_calibration_scores():
    rng = np.random.default_rng(0)
    large = rng.normal(0, 1, 5000)
    threshold = in_distribution_threshold(large, 0.99)
    assert (large <= threshold).mean() >= 0.99 and threshold == pytest.approx(2.33, abs=0.1)
    assert kept_share(5000, 0.99) == pytest.approx(0.99, abs=1e-3)
    assert in_distribution_threshold(np.arange(1.0, 200), 0.99) == 198  # rank ceil(0.99 * 200) of 199
    small = rng.normal(0, 1, 6)  # too few to show a 99% quantile: the largest, keeping 6 in 7 of new images
    assert in_distribution_threshold(small, 0.99) == small.max() and kept_share(6, 0.99) == pytest.approx(6 / 7)
    with pytest.raises(ValueError, match="share"):
        in_distribution_threshold(large, 1.0)


def test_new_in_distribution_images_are_kept_as_often_as_promised():
    """Over many draws, the share of new in-distribution images over the threshold is about 1 - share at most: with
    the training images scored out of fold as well as with val alone."""
    missed = {5: [], 1: []}
    for seed in range(20):
        rng = np.random.default_rng(seed)
        train, labels = gaussian_inputs(rng, 200)
        val, _ = gaussian_inputs(rng, 60)
        new, _ = gaussian_inputs(rng, 500)
        for folds in missed:
            detector = fit_detector(train, labels, val, share=0.95, used=["mahalanobis", "knn"], folds=folds)
            missed[folds].append(detector.out_of_distribution(detector.scores(new)["combined"]).mean())
            assert detector.calibration_images == (260 if folds > 1 else 60)
    assert np.mean(missed[5]) <= 0.05 + 0.01 and np.mean(missed[1]) <= 0.05 + 0.01, {k: np.mean(v) for k, v in missed.items()}
    assert np.std(missed[5]) < np.std(missed[1])  # four times the calibration images: a steadier threshold


def test_out_of_fold_scores_come_from_detectors_fitted_without_the_image():
    rng = np.random.default_rng(4)
    train, labels = gaussian_inputs(rng, 30)  # k = 1
    embedded = {"knn": NearestNeighbours.embed(train)}
    out_of_fold = out_of_fold_scores(["knn"], embedded, labels, folds=5)["knn"]
    assert len(out_of_fold) == 30 and (out_of_fold > 1e-6).all()  # in-sample, an image is its own nearest neighbour
    assert np.allclose(NearestNeighbours.fit(train, labels).score(train), 0, atol=1e-6)
    assert len(out_of_fold_scores(["knn"], embedded, np.r_[labels[:-1], 7], folds=5)["knn"]) == 0  # a class of one


def test_mahalanobis_and_knn_rank_shifted_features_above_held_out_ones():
    rng = np.random.default_rng(1)
    train, labels = gaussian_inputs(rng, 400)
    held_out, _ = gaussian_inputs(rng, 200)
    shifted, _ = gaussian_inputs(rng, 200, shift=4.0)
    for detector in (Mahalanobis.fit(train, labels), NearestNeighbours.fit(train, labels)):
        scores = np.concatenate([detector.score(held_out), detector.score(shifted)])
        assert roc_auc_score([0] * 200 + [1] * 200, scores) > 0.9, detector.name
    mahalanobis = Mahalanobis.fit(train, labels)
    at_means = Inputs(mahalanobis.state["means"], None, train.images[:2])
    assert np.allclose(mahalanobis.score(at_means), 0)
    knn = NearestNeighbours.fit(train, labels)
    assert int(knn.state["k"]) == 10 and NearestNeighbours.fit(train.subset(np.arange(30)), labels[:30]).state["k"] == 1


def test_energy_is_lower_for_confident_logits():
    confident, flat = np.array([[9.0, 0.0, 0.0]]), np.array([[0.1, 0.0, 0.0]])
    energy = Energy()
    assert energy.score(Inputs(None, confident, confident)) < energy.score(Inputs(None, flat, flat))


def test_the_input_checks_tell_other_kinds_of_image_from_smear_fields():
    fields = np.stack([render_smear(image_rng(0, "Pre", i), "Pre", 48)[0] for i in range(40)])
    train, held_out = Inputs(None, None, fields[:30]), Inputs(None, None, fields[30:])
    colour, kind, size = (check.fit(train, np.zeros(30)) for check in (ColourCheck, KindCheck, SizeCheck))
    for check, shifts in ((colour, ("greyscale", "cell_on_black")), (kind, ("single_cell",)),
                          (size, ("magnification", "single_cell", "cell_on_black"))):
        for shift in shifts:
            shifted = Inputs(None, None, np.stack(list(shifted_images(shift, 5, 48))))
            assert check.score(shifted).min() > check.score(held_out).max(), (check.name, shift)


def test_the_size_distribution_follows_the_objects_size():
    image = np.full((1, 64, 64, 3), 255, np.uint8)
    small, large = image.copy(), image.copy()
    small[0, 10:13, 10:13] = large[0, 10:25, 10:25] = 0  # a dark 3 px square, a dark 15 px one (sides 2 ... 19 px)
    shares = size_distributions(np.concatenate([small, large])) ** 2
    assert shares.shape == (2, 6) and np.allclose(shares.sum(1), 1)  # every object narrower than the largest square
    assert shares[0].argmax() == 2 and shares[1].argmax() == 5  # removed by the first opening it no longer fits


def test_the_combined_detector_saves_loads_and_refers_what_is_far(tmp_path):
    rng = np.random.default_rng(2)
    train, labels = gaussian_inputs(rng, 300)
    val, _ = gaussian_inputs(rng, 200)
    far, _ = gaussian_inputs(rng, 50, shift=4.0)
    detector = fit_detector(train, labels, val, share=0.95, used=["mahalanobis", "knn"])
    assert set(detector.detectors) == {"mahalanobis", "energy", "knn", "colour", "kind", "size"}
    assert detector.used == ["mahalanobis", "knn"]
    assert (~detector.out_of_distribution(detector.scores(val)["combined"])).mean() >= 0.95
    assert detector.out_of_distribution(detector.scores(far)["combined"]).all()
    loaded = OodDetector.load(detector.save(tmp_path / "ood.npz"))
    assert loaded.summary() == detector.summary()
    for name, scores in detector.scores(far).items():
        assert np.allclose(loaded.scores(far)[name], scores), name
    with pytest.raises(ValueError, match="unknown OOD detectors"):
        fit_detector(train, labels, val, used=["entropy"])


def test_a_check_saved_before_cross_fitting_still_loads_and_decides_as_it_did(tmp_path):
    """``ood.npz`` as models published with the first version of the check (4ab1284) carry it: no
    ``calibration_images`` and no ``size`` detector; its standardisation and threshold are used as saved."""
    rng = np.random.default_rng(5)
    train, labels = gaussian_inputs(rng, 100)
    image = (rng.random((2, 8, 8, 3)) * 255).astype(np.uint8)
    detectors = {"mahalanobis": Mahalanobis.fit(train, labels), "energy": Energy(), "knn": NearestNeighbours.fit(train, labels),
                 "colour": ColourCheck.fit(train, labels), "kind": KindCheck.fit(train, labels)}
    config = {"detectors": list(detectors), "used": ["mahalanobis", "knn", "colour", "kind"],
              "location": {name: 0.5 for name in detectors}, "spread": {name: 2.0 for name in detectors},
              "threshold": 1.5, "share": 0.99, "val_images": 8}
    arrays = {f"{name}.{key}": value for name, detector in detectors.items() for key, value in detector.state.items()}
    np.savez(tmp_path / "ood.npz", config=np.array(json.dumps(config)), **arrays)
    loaded = OodDetector.load(tmp_path / "ood.npz")
    assert loaded.summary()["calibration_images"] == 8 and loaded.summary()["kept_share"] == pytest.approx(8 / 9)
    inputs = Inputs(train.features[:2], train.logits[:2], image)
    raw = {name: detector.score(inputs) for name, detector in detectors.items()}
    expected = np.mean([(raw[name] - 0.5) / 2.0 for name in config["used"]], axis=0)
    assert np.allclose(loaded.scores(inputs)["combined"], expected)
    assert list(loaded.out_of_distribution(expected)) == list(expected > 1.5)


def test_without_features_only_the_input_checks_and_energy_are_fitted():
    rng = np.random.default_rng(3)
    train, labels = gaussian_inputs(rng, 50)
    no_features = Inputs(None, train.logits, train.images)
    detector = fit_detector(no_features, labels, no_features, used=["mahalanobis", "colour"])
    assert set(detector.detectors) == {"energy", "colour", "kind", "size"} and detector.used == ["colour"]


def test_penultimate_features_are_captured_and_tta_views_averaged():
    from torch import nn

    network = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 3))
    batch = torch.randn(4, 12)
    with captured_features(network) as captured:
        network(batch)
    expected = torch.relu(network[1](batch)).detach().numpy()
    assert np.allclose(features_per_image(captured, 4), expected, atol=1e-6)
    with captured_features(network) as captured:
        network(torch.cat([batch] * 8))
    assert np.allclose(features_per_image(captured, 4), expected, atol=1e-6)
    network(batch)  # after the block: recorded nowhere
    assert len(captured) == 1


def test_out_of_distribution_is_referred_whatever_the_confidence():
    assert decide_answer({"confidence": 0.99, "out_of_distribution": True}, 0.5) == ("refer", "out_of_distribution")
    assert decide_answer({"confidence": 0.4, "out_of_distribution": False}, 0.5) == ("refer", "low_confidence")
    assert decide_answer({"confidence": 0.9}, 0.5) == ("accept", None)
    assert decide_answer({"confidence": 0.1}, None) == ("accept", None)  # a model without a threshold or a check


def test_the_shifted_sets_are_deterministic_and_written_as_a_flat_folder(tmp_path):
    for kind in SHIFTS:
        first, again = (list(shifted_images(kind, 2, 40, seed=5)) for _ in range(2))
        assert all(a.shape == (40, 40, 3) and a.dtype == np.uint8 and np.array_equal(a, b) for a, b in zip(first, again))
    folder = generate_shifted_set(tmp_path / "black", "cell_on_black", 3, 40)
    assert sorted(p.name for p in folder.iterdir()) == [f"cell_on_black_{i:04d}.png" for i in range(3)]
    with pytest.raises(ValueError, match="unknown shifted set"):
        list(shifted_images("sepia", 1, 40))
