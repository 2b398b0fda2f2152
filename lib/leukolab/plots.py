"""Figures the notebooks show and MLflow keeps: curves, samples, overlays, confusion matrices."""

from __future__ import annotations

import matplotlib

if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
    matplotlib.use("Agg")  # headless: papermill, servers, CI
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from PIL import Image
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from leukolab.images import image_array


def learning_curves(history: list[dict]):
    """Training loss and every validation metric per epoch."""
    frame = pd.DataFrame(history).set_index("epoch")
    headline = ("val_accuracy", "val_macro_f1", "val_roc_auc_ovr", "val_dice", "val_iou")
    val_columns = [c for c in headline if c in frame.columns]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    frame["train_loss"].plot(ax=left, marker="o", title="training loss")
    frame[val_columns].plot(ax=right, marker="o", title="validation metrics", ylim=(0, 1.02))
    for ax in (left, right):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def class_counts(manifest: dict):
    """Images per class and split (stacked bars)."""
    frame = pd.DataFrame(manifest["counts"]).T[manifest["classes"]]
    ax = frame.plot(kind="bar", stacked=True, figsize=(6, 3.5), title="images per split and class")
    ax.set_ylabel("images")
    ax.figure.tight_layout()
    return ax.figure


def sample_grid(frame: pd.DataFrame, class_names: list[str], per_class: int = 4):
    """A few images per class, with their masks outlined in yellow when present."""
    fig, axes = plt.subplots(len(class_names), per_class, figsize=(2 * per_class, 2 * len(class_names)), squeeze=False)
    for row, name in enumerate(class_names):
        rows = frame[frame["class_name"] == name].head(per_class)
        for col in range(per_class):
            ax = axes[row, col]
            ax.axis("off")
            if col < len(rows):
                record = rows.iloc[col]
                ax.imshow(image_array(record["image"]))
                if record.get("mask") is not None and not (isinstance(record["mask"], float)):
                    ax.contour(image_array(record["mask"]) > 0, levels=[0.5], colors="yellow", linewidths=0.8)
            if col == 0:
                ax.set_title(name, loc="left", fontsize=10)
    fig.tight_layout()
    return fig


def confusion_matrix(labels, predictions, class_names: list[str], title: str = "confusion matrix"):
    """Row-normalised confusion matrix with counts in the cells."""
    counts = sk_confusion_matrix(labels, predictions, labels=list(range(len(class_names))))
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(class_names)):
        for j in range(len(class_names)):
            ax.text(j, i, counts[i, j], ha="center", va="center", color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(class_names)), class_names)
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def failure_cases(images, labels, probabilities: np.ndarray, class_names: list[str], limit: int = 8):
    """The most confident mistakes (uint8 NCHW ``images``), titled true → predicted (confidence)."""
    predictions, confidence = probabilities.argmax(1), probabilities.max(1)
    wrong = np.flatnonzero(predictions != np.asarray(labels))
    wrong = wrong[np.argsort(-confidence[wrong])][:limit]
    fig, axes = plt.subplots(1, max(len(wrong), 1), figsize=(2.2 * max(len(wrong), 1), 2.6), squeeze=False)
    for ax, index in zip(axes[0], wrong):
        ax.imshow(np.asarray(images[index]).transpose(1, 2, 0))
        ax.set_title(f"{class_names[labels[index]]} → {class_names[predictions[index]]}\n({confidence[index]:.2f})", fontsize=9)
    for ax in axes[0]:
        ax.axis("off")
    if not len(wrong):
        axes[0, 0].set_title("no misclassified images")
    fig.tight_layout()
    return fig


def heatmap_grid(images: list[np.ndarray], heatmaps: list[np.ndarray], titles: list[str], columns: int = 4):
    """HxWx3 uint8 ``images`` under their heatmaps (HxW in [0, 1], colour map ``jet``), ``columns`` a row, titled."""
    rows = max(-(-len(images) // columns), 1)
    fig, axes = plt.subplots(rows, columns, figsize=(2.4 * columns, 2.7 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, heatmap, title in zip(axes.ravel(), images, heatmaps, titles):
        ax.imshow(image)
        ax.imshow(heatmap, cmap="jet", vmin=0, vmax=1, alpha=0.5)
        ax.set_title(title, fontsize=9)
    if not len(images):
        axes[0, 0].set_title("no image to explain")
    fig.tight_layout()
    return fig


def mask_predictions(images, true_masks, predicted_masks, limit: int = 6):
    """Images (uint8 NCHW) with their true mask (green) and predicted mask probabilities (magenta) outlined."""
    shown = min(len(images), limit)
    fig, axes = plt.subplots(1, max(shown, 1), figsize=(2.4 * max(shown, 1), 2.6), squeeze=False)
    if not shown:
        axes[0, 0].axis("off")
        axes[0, 0].set_title("no image with a mask", fontsize=9)
        return fig
    for index, ax in enumerate(axes[0]):
        ax.imshow(np.asarray(images[index]).transpose(1, 2, 0))
        ax.contour(np.asarray(true_masks[index][0]) > 0, levels=[0.5], colors="lime", linewidths=0.8)
        ax.contour(np.asarray(predicted_masks[index][0]) >= 0.5, levels=[0.5], colors="magenta", linewidths=0.8)
        ax.axis("off")
    axes[0, 0].set_title("true (green) vs predicted (magenta)", loc="left", fontsize=9)
    fig.tight_layout()
    return fig


def metric_comparison(table: pd.DataFrame, metric: str):
    """Horizontal bars of one metric per run, best on top, with the 95% interval when the table has one."""
    ordered = table.sort_values(metric)
    fig, ax = plt.subplots(figsize=(6.5, 0.5 * len(ordered) + 1.2))
    errors = None
    if f"{metric}_ci_low" in ordered:
        errors = np.vstack([ordered[metric] - ordered[f"{metric}_ci_low"], ordered[f"{metric}_ci_high"] - ordered[metric]])
    ax.barh(ordered["run_name"], ordered[metric], xerr=errors, color="tab:blue", ecolor="black", capsize=3)
    ax.set_xlim(0, 1.05)
    ax.set_xlabel(f"{metric} (95% bootstrap interval)" if errors is not None else metric)
    for y, value in enumerate(ordered[metric]):
        ax.text(0.01, y, f"{value:.3f}", va="center", color="white", fontsize=9)
    fig.tight_layout()
    return fig


def reliability_diagram(labels, probabilities_by_run: dict[str, np.ndarray], bins: int = 10):
    """Accuracy against confidence per run (the diagonal is perfect calibration), with each run's ECE."""
    from leukolab.metrics.scores import expected_calibration_error, reliability_table

    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    for name, probabilities in probabilities_by_run.items():
        table = reliability_table(labels, probabilities, bins).dropna()
        ece = expected_calibration_error(labels, probabilities, bins)
        ax.plot(table["confidence"], table["accuracy"], marker="o", label=f"{name} (ECE {ece:.3f})")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title("reliability")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def domain_shift(rows: pd.DataFrame, metrics=("accuracy", "macro_f1")):
    """Grouped bars of ``metrics`` per dataset (in-domain first, then the external sets) with their 95% intervals."""
    fig, ax = plt.subplots(figsize=(1.6 * len(rows) + 2.5, 3.6))
    width = 0.8 / len(metrics)
    positions = np.arange(len(rows))
    for i, metric in enumerate(metrics):
        values = rows[metric].to_numpy(float)
        errors = None
        if f"{metric}_ci_low" in rows:
            errors = np.vstack([values - rows[f"{metric}_ci_low"], rows[f"{metric}_ci_high"] - values])
        bars = ax.bar(positions + (i - (len(metrics) - 1) / 2) * width, values, width, yerr=errors, capsize=3, label=metric)
        ax.bar_label(bars, fmt="%.3f", fontsize=8, label_type="center", color="white")
    ax.set_xticks(positions, [f"{d}\n({k}, {n} images)" for d, k, n in zip(rows["dataset"], rows["kind"], rows["images"])],
                  fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("value (95% bootstrap interval)")
    ax.set_title("in-domain vs external test sets")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def risk_coverage(curve: pd.DataFrame, referral: dict):
    """The selection split's risk–coverage ``curve`` with the target risk, the chosen threshold's point on it and the
    report split's coverage and risk at that threshold (95% intervals); ``referral`` as ``select_referral`` returns it."""
    fig, ax = plt.subplots(figsize=(5.2, 4.0))
    selection, report = referral["selection_split"], referral["report_split"]
    ax.plot(curve["coverage"], curve["risk"], marker=".", color="tab:blue", label=f"{selection} (selection)")
    ax.axhline(referral["target_risk"], color="tab:red", linestyle="--", linewidth=1, label=f"target risk {referral['target_risk']}")
    chosen = referral["selection"]
    ax.plot(chosen["coverage"], chosen["risk"] or 0.0, "o", color="tab:blue", markersize=8,
            label=f"threshold {referral['threshold']:.3f} on {selection}" if referral["reached"]
            else "no threshold reaches the target: all referred")
    shown = referral["report"]["overall"]
    if shown["risk"] is not None:
        errors = {}
        if shown.get("risk_ci_low") is not None:
            errors = {"xerr": [[shown["coverage"] - shown["coverage_ci_low"]], [shown["coverage_ci_high"] - shown["coverage"]]],
                      "yerr": [[shown["risk"] - shown["risk_ci_low"]], [shown["risk_ci_high"] - shown["risk"]]]}
        ax.errorbar(shown["coverage"], shown["risk"], fmt="s", color="tab:orange", capsize=3, **errors,
                    label=f"same threshold on {report} (95% CI)")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, max(0.05, float(curve["risk"].max()) * 1.1))
    ax.set_xlabel("coverage (fraction accepted)")
    ax.set_ylabel("risk (error rate among accepted)")
    ax.set_title("risk–coverage of the calibrated confidence")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def heatmap_overlay(image: Image.Image, heatmap: np.ndarray, alpha: float = 0.5, max_side: int = 512) -> Image.Image:
    """``image`` (shrunk to at most ``max_side`` px) under ``heatmap`` (HxW in [0, 1], any size; colour map ``jet``)."""
    image = image.convert("RGB")
    image.thumbnail((max_side, max_side))
    scaled = Image.fromarray(np.round(np.clip(heatmap, 0, 1) * 255).astype(np.uint8)).resize(image.size, Image.Resampling.BILINEAR)
    colours = np.round(matplotlib.colormaps["jet"](np.asarray(scaled) / 255)[..., :3] * 255).astype(np.uint8)
    return Image.blend(image, Image.fromarray(colours), alpha)


def contact_sheet(images: list[Image.Image | None], titles: list[str], columns: int = 6):
    """Thumbnails of ``images`` (None: a file that is not an image, shown blank) with their ``titles``."""
    rows = max(-(-len(images) // columns), 1)
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.5 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, title in zip(axes.ravel(), images, titles):
        if image is not None:
            ax.imshow(image)
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return fig
