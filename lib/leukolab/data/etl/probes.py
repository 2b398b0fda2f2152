"""Shortcut probes: how well cheap models predict the class from what is not the white cell.

A probe that scores far above chance shows a shortcut a network can take
instead of learning the cells: a background tint that follows the class
(acquisition sessions), corner marks (scale bars, labels), the number or area
of cells in a field, the overall colour. Each probe is a standardised
multinomial logistic regression (scikit-learn) on a few features per image,
fitted on ``train`` and scored on ``test`` of every split strategy the dataset
has; its balanced accuracy gets a 95% interval by a cluster bootstrap over
the strategy's clusters (duplicate/patient groups; acquisition blocks).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from PIL import Image
from scipy import ndimage

from leukolab.data.etl.masks import nucleus_estimate
from leukolab.data.reading.dataset import SPLIT_STRATEGIES, load_manifest
from leukolab.images import image_array
from leukolab.metrics.intervals import cluster_intervals, confusion_scores

PROBES = {
    "background_colour": "median colour of the brightest fifth of the pixels outside the white cells",
    "corner_patches": "mean and spread of the colour of the four corner patches (scale bars, labels)",
    "cell_count_area": "white cells per field and their share of it (masks, or stained nuclei by colour)",
    "colour_histogram": "the whole field's 8-bin histogram per channel",
}
"""Probe name -> what its features describe."""
CLUSTERS = {"grouped": "group_id", "acquisition": "acquisition_block"}
"""Split strategy -> the column whose values are the clusters of its bootstrap."""
DEFAULT_WARN_ABOVE = 0.25
"""A probe whose balanced accuracy's interval lies more than this above chance raises the shortcut warning."""


def probe_features(image: np.ndarray, mask: np.ndarray | None) -> dict[str, np.ndarray]:
    """Each probe's features of one RGB uint8 image; ``mask`` (bool, the white cells) where the dataset has one."""
    cells = mask if mask is not None else nucleus_estimate(Image.fromarray(image), 0.001)
    pixels = image.reshape(-1, 3).astype(np.float32)
    outside = pixels[~cells.reshape(-1)] if (~cells).any() else pixels
    grey = outside.mean(1)
    bright = outside[grey >= np.quantile(grey, 0.8)]
    side = max(2, image.shape[0] // 8)
    corners = [image[:side, :side], image[:side, -side:], image[-side:, :side], image[-side:, -side:]]
    histogram = np.concatenate([np.bincount(image[..., c].reshape(-1) // 32, minlength=8) for c in range(3)])
    return {
        "background_colour": np.median(bright, 0),
        "corner_patches": np.concatenate([np.r_[c.reshape(-1, 3).mean(0), c.reshape(-1, 3).std(0)] for c in corners]),
        "cell_count_area": np.array([ndimage.label(cells)[1], cells.mean()], np.float32),
        "colour_histogram": histogram / histogram.sum(),
    }


def dataset_features(dataset_dir: str | Path) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The dataset's split columns (every row) and each probe's feature matrix, in the same row order."""
    table = pq.read_table(Path(dataset_dir) / "data").to_pandas().sort_values("source_path", ignore_index=True)
    rows = [probe_features(image_array(image), image_array(mask) > 0 if mask is not None else None)
            for image, mask in zip(table["image"], table["mask"])]
    features = {name: np.stack([row[name] for row in rows]) for name in PROBES}
    return table.drop(columns=["image", "mask"]), features


def shortcut_probes(dataset_dir: str | Path, bootstrap_samples: int = 1000, seed: int = 0) -> list[dict]:
    """``{name, split_strategy, balanced_accuracy, ci_low, ci_high, chance, test_images}`` per probe and split
    strategy the dataset has (``acquisition`` only when its manifest says so)."""
    manifest = load_manifest(dataset_dir)
    table, features = dataset_features(dataset_dir)
    strategies = ["grouped"] + (["acquisition"] if manifest.get("acquisition", {}).get("available") else [])
    classes = len(manifest["classes"])
    results = []
    for strategy in strategies:
        split = table[SPLIT_STRATEGIES[strategy]]
        train, test = (split == "train").to_numpy(), (split == "test").to_numpy()
        labels = table["label"].to_numpy()
        for name in PROBES:
            predictions = _fit_predict(features[name][train], labels[train], features[name][test], seed)
            matrix = np.zeros((classes, classes))
            np.add.at(matrix, (labels[test], predictions), 1)
            low, high = cluster_intervals(labels[test], predictions, table.loc[test, CLUSTERS[strategy]].to_numpy(),
                                          classes, bootstrap_samples, seed)["balanced_accuracy"]
            results.append({"name": name, "split_strategy": strategy,
                            "balanced_accuracy": float(confusion_scores(matrix)["balanced_accuracy"]),
                            "ci_low": low, "ci_high": high, "chance": 1 / classes, "test_images": int(test.sum())})
    return results


def _fit_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, seed: int) -> np.ndarray:
    """A standardised logistic regression fitted on train, its class predictions on test."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(train_y)) < 2:
        return np.full(len(test_x), train_y[0] if len(train_y) else 0)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    return model.fit(train_x, train_y).predict(test_x)


def probe_table(probes: list[dict]) -> pd.DataFrame:
    """Probes as rows, split strategies as columns, each cell ``value [low, high]``."""
    if not probes:
        return pd.DataFrame()
    frame = pd.DataFrame(probes)
    frame["cell"] = [f"{r.balanced_accuracy:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]" for r in frame.itertuples()]
    shown = frame.pivot(index="name", columns="split_strategy", values="cell").reindex(list(PROBES))
    shown.columns = [f"balanced accuracy ({column})" for column in shown.columns]
    shown["what it sees"] = [PROBES[name] for name in shown.index]
    return shown


def shortcut_warning(probes: list[dict], warn_above: float = DEFAULT_WARN_ABOVE) -> str | None:
    """A warning naming every probe whose interval's low end lies more than ``warn_above`` above chance, or None."""
    loud = [p for p in probes if p["ci_low"] > p["chance"] + warn_above]
    if not loud:
        return None
    named = "; ".join(f"{p['name']} ({p['split_strategy']}): {p['balanced_accuracy']:.2f} "
                      f"[{p['ci_low']:.2f}, {p['ci_high']:.2f}], chance {p['chance']:.2f}" for p in loud)
    return (f"SHORTCUT WARNING: cheap models predict the class from what is not the white cell: {named}. A network "
            "can score by this instead of the cells; trust the acquisition-aware figure, and consider colour/stain "
            "augmentation, stain normalisation or cropping borders.")
