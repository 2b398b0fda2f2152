"""The out-of-distribution detectors, their combination and threshold, the referral reason, and the shifted sets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from leukolab.data.synthetic.shift import SHIFTS, generate_shifted_set, shifted_images
from leukolab.data.synthetic.smears import image_rng, render_smear
from leukolab.ood import Inputs, OodDetector, fit_detector, in_distribution_threshold
from leukolab.ood.detectors import ColourCheck, Energy, KindCheck, Mahalanobis, NearestNeighbours
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


def test_the_threshold_keeps_the_share_of_val_in_distribution():
    rng = np.random.default_rng(0)
    large = rng.normal(0, 1, 5000)
    threshold = in_distribution_threshold(large, 0.99)
    assert (large <= threshold).mean() >= 0.99 and threshold == pytest.approx(2.33, abs=0.1)
    small = rng.normal(0, 1, 6)  # too few to show a 99% quantile: the normal fit extends the tail beyond the maximum
    assert in_distribution_threshold(small, 0.99) > small.max()
    with pytest.raises(ValueError, match="share"):
        in_distribution_threshold(large, 1.0)


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
    assert int(knn.state["k"]) == 10 and NearestNeighbours.fit(Inputs(train.features[:30], None, train.images), labels).state["k"] == 1


def test_energy_is_lower_for_confident_logits():
    confident, flat = np.array([[9.0, 0.0, 0.0]]), np.array([[0.1, 0.0, 0.0]])
    energy = Energy()
    assert energy.score(Inputs(None, confident, confident)) < energy.score(Inputs(None, flat, flat))


def test_the_input_checks_tell_other_kinds_of_image_from_smear_fields():
    fields = np.stack([render_smear(image_rng(0, "Pre", i), "Pre", 48)[0] for i in range(40)])
    train, held_out = Inputs(None, None, fields[:30]), Inputs(None, None, fields[30:])
    colour, kind = ColourCheck.fit(train, np.zeros(30)), KindCheck.fit(train, np.zeros(30))
    for check, shifts in ((colour, ("greyscale", "cell_on_black")), (kind, ("single_cell",))):
        for shift in shifts:
            shifted = Inputs(None, None, np.stack(list(shifted_images(shift, 5, 48))))
            assert check.score(shifted).min() > check.score(held_out).max(), (check.name, shift)


def test_the_combined_detector_saves_loads_and_refers_what_is_far(tmp_path):
    rng = np.random.default_rng(2)
    train, labels = gaussian_inputs(rng, 300)
    val, _ = gaussian_inputs(rng, 200)
    far, _ = gaussian_inputs(rng, 50, shift=4.0)
    detector = fit_detector(train, labels, val, share=0.95, used=["mahalanobis", "knn"])
    assert set(detector.detectors) == {"mahalanobis", "energy", "knn", "colour", "kind"}
    assert detector.used == ["mahalanobis", "knn"]
    assert (~detector.out_of_distribution(detector.scores(val)["combined"])).mean() >= 0.95
    assert detector.out_of_distribution(detector.scores(far)["combined"]).all()
    loaded = OodDetector.load(detector.save(tmp_path / "ood.npz"))
    assert loaded.summary() == detector.summary()
    for name, scores in detector.scores(far).items():
        assert np.allclose(loaded.scores(far)[name], scores), name
    with pytest.raises(ValueError, match="unknown OOD detectors"):
        fit_detector(train, labels, val, used=["entropy"])


def test_without_features_only_the_input_checks_and_energy_are_fitted():
    rng = np.random.default_rng(3)
    train, labels = gaussian_inputs(rng, 50)
    no_features = Inputs(None, train.logits, train.images)
    detector = fit_detector(no_features, labels, no_features, used=["mahalanobis", "colour"])
    assert set(detector.detectors) == {"energy", "colour", "kind"} and detector.used == ["colour"]


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
    assert not network[-1]._forward_hooks


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
