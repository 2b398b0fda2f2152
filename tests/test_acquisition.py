"""Acquisition-aware splits, the cluster bootstrap, the shortcut probes' features and warning, the session stand-in and
the promotion gate's provenance check: unit tests, no Spark or MLflow."""

import numpy as np
import pandas as pd
import pytest

from leukolab.data.etl.acquisition_splits import EMBARGO, acquisition_keys, blocked_folds, blocked_splits, name_keys
from leukolab.data.etl.probes import probe_features, shortcut_warning
from leukolab.data.synthetic.sessions import Sessions
from leukolab.metrics.intervals import classification_intervals, cluster_intervals
from leukolab.publishing.provenance import PromotionRefused, promotion_check, provenance_problems

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def numbered(per_class: int = 100, classes: str = "AB") -> pd.DataFrame:
    """Rows named like the ALL dataset (a running number per class), shuffled, each its own group."""
    rows = pd.DataFrame({"source_path": [f"{c}/WBC-{c}-{i:03d}.jpg" for c in classes for i in range(1, per_class + 1)],
                         "class_name": [c for c in classes for _ in range(per_class)]})
    rows["group"] = range(len(rows))
    return rows.sample(frac=1, random_state=0)


def in_order(rows: pd.DataFrame, split: pd.DataFrame, name: str) -> np.ndarray:
    ranked = split.loc[rows.index[rows["class_name"] == name]].sort_values("acquisition_rank")
    return ranked["acquisition_split"].to_numpy()


def runs_of(labels: np.ndarray) -> list[tuple[str, int]]:
    """(label, length) of each run of equal labels."""
    changes = np.flatnonzero(labels[1:] != labels[:-1]) + 1
    return [(labels[start], end - start) for start, end in zip(np.r_[0, changes], np.r_[changes, len(labels)])]


def test_the_acquisition_key_is_the_last_number_in_the_name_and_absent_keys_are_explained():
    assert list(name_keys(pd.Series(["Pro/WBC-Malignant-Pro-012.jpg", "x/Im006_1.tif", "x/scan-2.v3.png", "x/none.jpg"]))[:3]) == [12, 1, 3]
    assert np.isnan(name_keys(pd.Series(["x/none.jpg"]))[0])
    keys, source = acquisition_keys(numbered(5))
    assert source == "the last number in the file name" and sorted(keys.unique()) == [1, 2, 3, 4, 5]
    unnamed = pd.DataFrame({"source_path": ["A/a.jpg", "A/b.jpg"], "class_name": ["A", "A"]})
    keys, reason = acquisition_keys(unnamed)
    assert keys is None and "carry no number" in reason
    with pytest.raises(ValueError, match="acquisition column 'session' gives no key for 2 images"):
        acquisition_keys(unnamed, column="session")
    keyed = unnamed.assign(acquisition_key=[20.0, 3.0])  # the ETL's numbers from the label files' column
    keys, source = acquisition_keys(keyed, column="session")
    assert source == "column 'session' of the label files" and keys.tolist() == [20.0, 3.0]
    with pytest.raises(ValueError, match="no key for 1 images \(e.g. \['A/b.jpg'\]\)"):
        acquisition_keys(keyed.assign(acquisition_key=[20.0, None]), column="session")


def test_evaluation_splits_are_whole_contiguous_blocks_with_the_embargo_around_them():
    rows = numbered(100)
    keys, _ = acquisition_keys(rows)
    split = blocked_splits(rows, keys, FRACTIONS, blocks=20, embargo=4, seed=3)
    for name in "AB":
        labels = in_order(rows, split, name)
        runs = runs_of(labels)
        held_out = [(label, n) for label, n in runs if label in ("val", "test")]
        assert sorted(held_out) == [("test", 15), ("val", 15)]  # one run each: 3 of 20 blocks of 5
        held = np.flatnonzero(np.isin(labels, ["val", "test"]))
        distance = np.abs(np.arange(len(labels))[:, None] - held[None, :]).min(1)
        assert set(np.flatnonzero(labels == EMBARGO)) == set(np.flatnonzero((distance >= 1) & (distance <= 4)))
    assert split["acquisition_block"].nunique() == 40  # blocks numbered across classes: the bootstrap's clusters
    assert blocked_splits(rows, keys, FRACTIONS, 20, 4, seed=3).equals(split)
    assert not blocked_splits(rows, keys, FRACTIONS, 20, 4, seed=4).equals(split)


def test_groups_never_straddle_train_and_an_evaluation_split():
    rows = numbered(60)
    keys, _ = acquisition_keys(rows)
    plain = blocked_splits(rows, keys, FRACTIONS, 10, 2, seed=1)
    test_row = plain.index[plain["acquisition_split"] == "test"][0]
    train_rows = plain.index[plain["acquisition_split"] == "train"][:3]
    rows.loc[[test_row, *train_rows], "group"] = -1  # a patient (or duplicates) across the order
    split = blocked_splits(rows, keys, FRACTIONS, 10, 2, seed=1)
    assert split.loc[test_row, "acquisition_split"] == "test"
    assert set(split.loc[train_rows, "acquisition_split"]) == {EMBARGO}
    evaluated = split["acquisition_split"].isin(["val", "test"])
    assert not set(rows.loc[evaluated, "group"]) & set(rows.loc[split["acquisition_split"] == "train", "group"])


def test_holdouts_get_blocks_and_tiny_classes_keep_half_their_train_images():
    rows = numbered(12)
    keys, _ = acquisition_keys(rows)
    split = blocked_splits(rows, keys, {**FRACTIONS, "holdout_1": 0.1}, 20, 4, seed=0)
    for name in "AB":
        labels = in_order(rows, split, name)
        assert {"val", "test", "holdout_1"} <= set(labels) and (labels == "train").sum() >= (labels == EMBARGO).sum()
    with pytest.raises(ValueError, match="use more blocks"):
        blocked_splits(rows, keys, FRACTIONS, 2, 0, seed=0)


def fold_pool() -> pd.DataFrame:
    """A blocked-CV pool as the acquisition-aware train+val+embargo: per class ranks 0-19 and 30-49 (the test block
    20-29 is not in it), each row its own group except A's ranks 5 and 45 (duplicates), and one reviewed case (rank -1)."""
    rows = pd.DataFrame([{"class_name": c, "acquisition_rank": r, "group_id": f"{c}{r}"}
                         for c in "AB" for r in [*range(20), *range(30, 50)]])
    rows.loc[(rows["class_name"] == "A") & (rows["acquisition_rank"] == 45), "group_id"] = "A5"
    reviewed = pd.DataFrame([{"class_name": "B", "acquisition_rank": -1, "group_id": "reviewed"}])
    return pd.concat([rows, reviewed], ignore_index=True).sample(frac=1, random_state=1).reset_index(drop=True)


def test_blocked_folds_are_contiguous_cover_the_pool_and_withhold_the_embargo_and_groups():
    rows = fold_pool()
    fold, withheld = blocked_folds(rows, folds=4, embargo=2)
    reviewed = (rows["acquisition_rank"] == -1).to_numpy()
    assert (fold[reviewed] == -1).all() and not withheld[:, reviewed].any()  # trains in every fold
    assert set(fold[~reviewed]) == {0, 1, 2, 3}  # complete coverage: every other row held out by exactly one fold
    for name in "AB":
        ordered = rows.assign(fold=fold)[(rows["class_name"] == name) & ~reviewed].sort_values("acquisition_rank")
        assert list(ordered["fold"]) == sorted(ordered["fold"]) and (ordered["fold"].value_counts() == 10).all()
    rank, group, cls = rows["acquisition_rank"].to_numpy(), rows["group_id"].to_numpy(), rows["class_name"].to_numpy()
    for f in range(4):
        train, held = (fold != f) & ~withheld[f], fold == f
        assert not (train & held).any() and not set(group[train]) & set(group[held])
        for name in "AB":
            gap = np.abs(rank[train & (cls == name) & ~reviewed][:, None] - rank[held & (cls == name)][None, :]).min()
            assert gap > 2  # no training image within the embargo of a held-out one
    # Embargo by acquisition rank: fold 1 (ranks 10-19) withholds 8, 9 but not 30, 31 (ten places away across the
    # test block); 2 per class and fold, plus A's duplicate of a held-out image in folds 0 and 3.
    per_fold = [sorted(zip(cls[withheld[f]], rank[withheld[f]])) for f in range(4)]
    assert per_fold[0] == [("A", 10), ("A", 11), ("A", 45), ("B", 10), ("B", 11)]
    assert per_fold[1] == [("A", 8), ("A", 9), ("B", 8), ("B", 9)]
    assert per_fold[2] == [("A", 40), ("A", 41), ("B", 40), ("B", 41)]
    assert per_fold[3] == [("A", 5), ("A", 38), ("A", 39), ("B", 38), ("B", 39)]
    assert not blocked_folds(rows, 4, 0)[1][1].any()  # no embargo, no shared group: nothing withheld from fold 2
    with pytest.raises(ValueError, match="leaves no training image of"):
        blocked_folds(rows, 2, 40)
    with pytest.raises(ValueError, match="class 'A' has only 40 images to fold"):
        blocked_folds(rows, 41, 0)


def test_the_cluster_bootstrap_is_wider_than_the_image_bootstrap_when_clusters_share_their_outcome():
    rng = np.random.default_rng(0)
    clusters = np.repeat(np.arange(20), 10)
    labels = np.tile([0, 1], 100)
    correct = np.repeat(rng.random(20) < 0.7, 10)  # whole sessions right or wrong
    predictions = np.where(correct, labels, 1 - labels)
    clustered = cluster_intervals(labels, predictions, clusters, 2, samples=500, seed=1)
    probabilities = np.eye(2)[predictions]
    per_image = classification_intervals(labels, probabilities, ["a", "b"], samples=500, seed=1)
    width = {name: high - low for name, (low, high) in clustered.items()}
    assert width["accuracy"] > 2 * (per_image["accuracy"][1] - per_image["accuracy"][0])
    assert clustered["balanced_accuracy"][0] < correct.mean() < clustered["balanced_accuracy"][1]
    assert cluster_intervals(labels, predictions, clusters, 2, samples=500, seed=1) == clustered
    perfect = cluster_intervals(labels, labels, clusters, 2, samples=100)
    assert perfect == {"accuracy": (1.0, 1.0), "balanced_accuracy": (1.0, 1.0), "macro_f1": (1.0, 1.0)}


def test_probe_features_see_the_background_and_the_corners_not_the_cell():
    image = np.full((32, 32, 3), 230, np.uint8)
    image[12:20, 12:20] = (90, 40, 130)  # a stained nucleus
    mask = np.zeros((32, 32), bool)
    mask[12:20, 12:20] = True
    plain = probe_features(image, mask)
    image[:4, :4] = 0  # a scale bar in a corner
    marked = probe_features(image, mask)
    assert list(plain["background_colour"]) == [230, 230, 230]
    assert not np.allclose(plain["corner_patches"], marked["corner_patches"])
    assert plain["cell_count_area"][0] == 1 and plain["cell_count_area"][1] == pytest.approx(64 / 1024)
    assert plain["colour_histogram"].sum() == pytest.approx(1)
    estimated = probe_features(image, None)  # no mask: the stained nuclei by colour
    assert estimated["cell_count_area"][0] == 1


def test_the_warning_names_only_probes_far_above_chance():
    probes = [{"name": "background_colour", "split_strategy": "acquisition", "balanced_accuracy": 0.82, "ci_low": 0.7,
               "ci_high": 0.9, "chance": 0.25},
              {"name": "corner_patches", "split_strategy": "grouped", "balanced_accuracy": 0.4, "ci_low": 0.3,
               "ci_high": 0.5, "chance": 0.25}]
    warning = shortcut_warning(probes)
    assert "SHORTCUT WARNING" in warning and "background_colour (acquisition): 0.82" in warning
    assert "corner_patches" not in warning and shortcut_warning(probes[1:]) is None
    assert shortcut_warning(probes, warn_above=0.5) is None


def test_sessions_share_a_look_that_follows_the_class():
    sessions = Sessions(size=5)
    look = lambda index: np.r_[sessions.look(0, "Pro", index)]  # noqa: E731
    assert np.array_equal(look(0), look(4)) and not np.array_equal(look(0), look(5))
    gains = {name: np.mean([np.log(sessions.look(0, name, 5 * s)[0]) for s in range(40)], 0)
             for name in ("Benign", "Pro")}
    spread = np.std([np.log(sessions.look(0, "Pro", 5 * s)[0]) for s in range(40)], 0)
    assert np.abs(gains["Benign"] - gains["Pro"]).max() > spread.min() / 2  # class centres apart
    unbiased = Sessions(size=5, class_bias=0.0)
    assert unbiased.look(0, "Pro", 0)[1] == pytest.approx(np.exp(np.random.default_rng([0, 3, 8, 0]).normal(0, 1, 5)[3] * 0.08))
    image = np.full((8, 8, 3), 200, np.uint8)
    assert not np.array_equal(sessions.apply(image, 0, "Pro", 0), sessions.apply(image, 0, "Pro", 5))
    with pytest.raises(ValueError, match="size >= 1"):
        Sessions(size=0)


EVIDENCE = {"split_strategy": "grouped", "shortcut_probes": [{"name": "background_colour"}],
            "acquisition_aware": {"metrics": {"balanced_accuracy": 0.9}}}
MANIFEST = {"fingerprint": "abc", "leakage": {"grouped_exact": 0, "grouped_near": 0, "grouped_patient": None,
                                              "grouped_test_images": 10},
            "acquisition": {"available": True, "straddling_images": 0}}


def test_promotion_needs_provenance_or_a_recorded_override():
    assert provenance_problems(EVIDENCE, MANIFEST, "abc") == [] and promotion_check([], None) is None
    bare = provenance_problems({}, MANIFEST, "other")
    assert len(bare) == 4 and any("trained on dataset other" in p for p in bare)
    assert any("acquisition-aware figure" in p for p in bare) and any("shortcut-probe" in p for p in bare)
    leaky = {**MANIFEST, "leakage": {**MANIFEST["leakage"], "grouped_near": 2}}
    assert "near" in provenance_problems(EVIDENCE, leaky, "abc")[0]
    no_key = {**MANIFEST, "acquisition": {"available": False}}
    assert provenance_problems({**EVIDENCE, "acquisition_aware": None}, no_key, "abc") == []
    with pytest.raises(PromotionRefused, match="promotion_override"):
        promotion_check(bare, None)
    with pytest.raises(PromotionRefused):
        promotion_check(bare, "   ")
    assert promotion_check(bare, " reviewed by the lab ") == {"reason": "reviewed by the lab", "problems": bare}


def test_the_probe_finds_the_planted_session_shortcut_and_the_image_level_split_flatters_it():
    """Smears rendered in memory (no files): with sessions that follow the class, background colour predicts the class
    on sessions never seen (blocked split), and better still under a random split that shares sessions; without the
    class bias it is near chance."""
    from leukolab import CLASS_NAMES
    from leukolab.data.etl.probes import _fit_predict
    from leukolab.data.synthetic.smears import image_rng, render_smear
    from sklearn.metrics import balanced_accuracy_score

    per_class, size = 60, 48
    smears = [(name, i, *render_smear(image_rng(5, name, i), name, size)) for name in CLASS_NAMES for i in range(per_class)]
    rows = pd.DataFrame({"source_path": [f"{n}/{n}_{i:04d}.jpg" for n, i, *_ in smears],
                         "class_name": [n for n, *_ in smears]}).assign(group=lambda r: range(len(r)))
    labels = rows["class_name"].map(CLASS_NAMES.index).to_numpy()
    keys, _ = acquisition_keys(rows)
    blocked = blocked_splits(rows, keys, FRACTIONS, 20, 4, seed=7)["acquisition_split"].to_numpy()
    shuffled = np.random.default_rng(0).permutation(len(rows))
    image_level = np.where(np.isin(np.arange(len(rows)), shuffled[:len(rows) * 15 // 100]), "test", "train")

    def background_probe(sessions: Sessions, split: np.ndarray) -> float:
        features = np.stack([probe_features(sessions.apply(image, 5, name, i), mask.astype(bool))["background_colour"]
                             for name, i, image, mask in smears])
        train, test = split == "train", split == "test"
        return balanced_accuracy_score(labels[test], _fit_predict(features[train], labels[train], features[test], 0))

    planted = Sessions(size=8)
    unseen_sessions, seen_sessions = background_probe(planted, blocked), background_probe(planted, image_level)
    assert unseen_sessions > 0.25 + 0.25 and seen_sessions > unseen_sessions
    assert background_probe(Sessions(size=8, class_bias=0.0), blocked) < unseen_sessions - 0.2


def test_the_cell_count_probe_finds_pre_crowded_as_in_the_real_data():
    """Pre fields hold about 3x the white cells of the others in the session stand-in (as in the ALL dataset), and the
    cell-count probe, fitted on train and scored on unseen sessions, finds it: above chance, and Pre recalled."""
    from leukolab import CLASS_NAMES
    from leukolab.data.etl.probes import _fit_predict
    from leukolab.data.synthetic.smears import image_rng, render_smear
    from sklearn.metrics import balanced_accuracy_score, recall_score

    per_class, size = 40, 64
    sessions = Sessions(size=8)
    assert sessions.cells("Pre") == (3, 9) and sessions.cells("Benign") == (1, 3)
    rows = pd.DataFrame({"source_path": [f"{n}/{n}_{i:04d}.jpg" for n in CLASS_NAMES for i in range(per_class)],
                         "class_name": [n for n in CLASS_NAMES for _ in range(per_class)]}).assign(group=lambda r: range(len(r)))
    labels = rows["class_name"].map(CLASS_NAMES.index).to_numpy()
    split = blocked_splits(rows, acquisition_keys(rows)[0], FRACTIONS, 10, 2, seed=7)["acquisition_split"].to_numpy()
    train, test = split == "train", split == "test"

    def counts(cells) -> np.ndarray:
        """The probe's white cells per field of every row, rendered with ``cells(class_name)`` white cells."""
        return np.array([probe_features(*render_smear(image_rng(5, n, i), n, size, cells(n)))["cell_count_area"][0]
                         for n, i in zip(rows["class_name"], rows["source_path"].str[-8:-4].astype(int))])

    def count_probe(count: np.ndarray) -> tuple[float, float]:
        """Balanced accuracy and Pre's recall of the probe on the white cells per field alone (the cells' area share,
        the probe's other feature, follows the classes' cell sizes with any count)."""
        count = count[:, None]
        predicted = _fit_predict(count[train], labels[train], count[test], 0)
        pre = CLASS_NAMES.index("Pre")
        return balanced_accuracy_score(labels[test], predicted), recall_score(labels[test] == pre, predicted == pre)

    pre = labels == CLASS_NAMES.index("Pre")
    realistic = counts(sessions.cells)
    assert realistic[pre].mean() > 2.5 * realistic[~pre].mean()
    found, uniform = count_probe(realistic), count_probe(counts(lambda name: (1, 3)))
    assert found[0] > 0.25 + 0.15 and found[1] >= 0.8
    assert uniform[0] < found[0] - 0.1 and uniform[1] < 0.5
    with pytest.raises(ValueError, match="white_cells"):
        Sessions(white_cells={"Pre": [0, 3]})
