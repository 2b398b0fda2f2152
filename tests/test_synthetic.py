"""The synthetic smear generator: layout, determinism, exact masks, and classes that need shape and texture to tell apart."""

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from leukolab import CLASS_NAMES
from leukolab.data.synthetic.folder import generate_dataset
from leukolab.data.synthetic.smears import image_rng, render_smear

SIZE = 96
PER_CLASS = 3


def tree_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("smears"), PER_CLASS, image_size=SIZE, seed=0)


def test_layout_names_and_formats(dataset):
    for name in CLASS_NAMES:
        stems = [f"{name}_{i:04d}" for i in range(PER_CLASS)]
        assert sorted(p.name for p in (dataset / "Original" / name).iterdir()) == [f"{s}.jpg" for s in stems]
        assert sorted(p.name for p in (dataset / "Segmented" / name).iterdir()) == [f"{s}.png" for s in stems]
        with Image.open(dataset / "Original" / name / f"{stems[0]}.jpg") as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (SIZE, SIZE))
        with Image.open(dataset / "Segmented" / name / f"{stems[0]}.png") as mask:
            assert (mask.format, mask.mode, mask.size) == ("PNG", "L", (SIZE, SIZE))
            assert set(np.unique(np.asarray(mask))) <= {0, 255}


def test_same_seed_gives_identical_bytes_and_other_seeds_differ(dataset, tmp_path):
    again = generate_dataset(tmp_path / "again", PER_CLASS, image_size=SIZE, seed=0)
    other = generate_dataset(tmp_path / "other", PER_CLASS, image_size=SIZE, seed=1)
    assert tree_bytes(again) == tree_bytes(dataset)
    originals = [k for k in tree_bytes(dataset) if k.startswith("Original/")]
    assert all(tree_bytes(other)[k] != tree_bytes(dataset)[k] for k in originals)


def test_rerun_keeps_files_and_a_new_seed_rewrites_them(tmp_path):
    root = generate_dataset(tmp_path, 2, image_size=SIZE, seed=0, classes=("Pro",))
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*.jpg")}
    assert generate_dataset(tmp_path, 2, image_size=SIZE, seed=0, classes=("Pro",)) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.jpg")} == before
    seed_0 = tree_bytes(root)
    generate_dataset(tmp_path, 2, image_size=SIZE, seed=5, classes=("Pro",))
    assert tree_bytes(root)["Original/Pro/Pro_0001.jpg"] != seed_0["Original/Pro/Pro_0001.jpg"]


def test_any_image_regenerates_alone(dataset):
    image, mask = render_smear(image_rng(0, "Pre", 2), "Pre", SIZE)
    stored_mask = np.asarray(Image.open(dataset / "Segmented" / "Pre" / "Pre_0002.png"))
    stored_image = np.asarray(Image.open(dataset / "Original" / "Pre" / "Pre_0002.jpg"), dtype=float)
    assert np.array_equal(stored_mask, mask * 255)
    assert np.abs(stored_image - image).mean() < 3  # only the quality-95 JPEG stands between them


def test_unknown_class_is_refused():
    with pytest.raises(ValueError, match="unknown class"):
        render_smear(np.random.default_rng(0), "Mature", SIZE)


@pytest.mark.parametrize("class_name", CLASS_NAMES)
def test_mask_is_binary_and_covers_the_dark_white_cells(class_name):
    for i in range(5):
        image, mask = render_smear(image_rng(7, class_name, i), class_name, SIZE)
        grey = image.mean(axis=2)
        assert image.shape == (SIZE, SIZE, 3) and mask.shape == (SIZE, SIZE)
        assert image.dtype == mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
        assert 0.01 < mask.mean() < 0.35
        assert 1 <= ndimage.label(mask)[1] <= 3
        assert grey[mask == 1].mean() < grey[mask == 0].mean() - 20
        assert grey[mask == 1].min() < np.percentile(grey[mask == 0], 1)  # the nucleus is darker than almost all else


# --- the classes are learnable from cell shape and texture, but not from one global colour ---

LEARN_SIZE = 128
LEARN_PER_CLASS = 40
GLOBAL_COLOUR_FEATURES = ("mean R", "mean G", "mean B", "mean grey", "dark fraction")


def global_colour_features(image):
    grey = image.mean(axis=2)
    return [*image.reshape(-1, 3).mean(axis=0), grey.mean(), (grey < 100).mean()]


def otsu_threshold(values):
    counts, edges = np.histogram(values, bins=64)
    centres, weight = (edges[:-1] + edges[1:]) / 2, np.cumsum(counts) / counts.sum()
    cumulative_mean = np.cumsum(counts * centres) / counts.sum()
    between = (cumulative_mean[-1] * weight - cumulative_mean) ** 2 / (weight * (1 - weight) + 1e-12)
    return centres[np.argmax(between)]


def cell_features(image, mask):
    """Mean cell area, nucleus optical density, nucleus fraction of the cell, and relative local chromatin variation."""
    grey, cells = image.astype(float).mean(axis=2), mask.astype(bool)
    density = -np.log(np.clip(grey / np.median(grey[~cells]), 1e-3, 1))
    nucleus = cells & (grey < otsu_threshold(grey[cells]))
    core = ndimage.binary_erosion(nucleus)
    core = core if core.sum() > 5 else nucleus
    local_sd = np.sqrt(np.maximum(ndimage.uniform_filter(density**2, 3) - ndimage.uniform_filter(density, 3) ** 2, 0))
    return [
        cells.sum() / ndimage.label(cells)[1] / cells.size,
        density[nucleus].mean(),
        nucleus.sum() / cells.sum(),
        local_sd[core].mean() / density[core].mean(),
    ]


def feature_table(seed):
    colour, cell, labels = [], [], []
    for label, name in enumerate(CLASS_NAMES):
        for i in range(LEARN_PER_CLASS):
            image, mask = render_smear(image_rng(seed, name, i), name, LEARN_SIZE)
            colour.append(global_colour_features(image))
            cell.append(cell_features(image, mask))
            labels.append(label)
    return np.array(colour), np.array(cell), np.array(labels)


@pytest.fixture(scope="module")
def train_and_test():
    return feature_table(seed=100), feature_table(seed=101)


def test_no_single_global_colour_feature_gives_the_class_away(train_and_test):
    (colour_train, _, y_train), (colour_test, _, y_test) = train_and_test
    for column, feature in enumerate(GLOBAL_COLOUR_FEATURES):
        thresholds = DecisionTreeClassifier(max_leaf_nodes=4, random_state=0)  # the best 3 cuts on one feature
        thresholds.fit(colour_train[:, [column]], y_train)
        accuracy = thresholds.score(colour_test[:, [column]], y_test)
        assert accuracy < 0.6, f"{feature} alone scores {accuracy:.2f}"


def test_cell_shape_and_texture_features_are_learnable(train_and_test):
    (_, cell_train, y_train), (_, cell_test, y_test) = train_and_test
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(cell_train, y_train)
    assert model.score(cell_test, y_test) >= 0.8
