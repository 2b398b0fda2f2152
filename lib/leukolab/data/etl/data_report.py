"""The data report of ``00_etl``: what went in, what came out, what was left out and why.

Figures and tables are built from the dataset folder the ETL wrote (its
``manifest.json`` and Parquet); pixels are read only for the few images the
sample grid and the colour histograms use. :func:`log_report` puts all of it
into the active MLflow run under ``report/``, and the mask shortcut warning
(when the manifest has one) into a tag; :func:`track_etl` logs that and the
dataset's tags, counts (:func:`etl_metrics`) and manifest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from matplotlib.ticker import MaxNLocator

from leukolab import plots
from leukolab.data.etl.acquisition_report import acquisition_blocks_plot, acquisition_counts_table, embargo_table
from leukolab.data.etl.probes import DEFAULT_WARN_ABOVE, probe_table, shortcut_probes, shortcut_warning
from leukolab.data.reading.dataset import load_manifest
from leukolab.images import image_array

METADATA_COLUMNS = ["source_path", "class_name", "split", "content_hash", "patient_id", "original_width",
                    "original_height", "group_id", "mask_fraction", "mask_raw_fraction", "mask_status",
                    "acquisition_split", "acquisition_block", "acquisition_rank"]
log = logging.getLogger(__name__)


@dataclass
class DataReport:
    """The report's figures and tables by name (``counts``, ``samples``, ``sizes``, ``colours``, ``mask_coverage``,
    ``acquisition_blocks``; ``counts``, ``quarantine``, ``quarantine_reasons``, ``duplicates``, ``leakage``,
    ``mask_coverage``, ``masks_implausible``, ``acquisition_counts``, ``embargo``, ``shortcut_probes``), the shortcut
    probes (:mod:`leukolab.data.etl.probes`) and their warning."""

    manifest: dict
    figures: dict = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    probes: list[dict] = field(default_factory=list)
    probe_warning: str | None = None


def build_report(dataset_dir: str | Path, samples_per_class: int = 4, colour_images_per_class: int = 64,
                 probe_samples: int = 1000, probe_warn_above: float = DEFAULT_WARN_ABOVE) -> DataReport:
    """Every figure and table of the data report of one ETL output; ``probe_samples`` bootstrap resamples behind
    each probe's interval (0: no probes)."""
    manifest = load_manifest(dataset_dir)
    table = pq.read_table(Path(dataset_dir) / "data", columns=METADATA_COLUMNS).to_pandas()
    classes = manifest["classes"]
    report = DataReport(manifest)
    report.tables["counts"] = counts_table(manifest)
    report.figures["counts"] = counts_chart(report.tables["counts"])
    report.figures["samples"] = plots.sample_grid(
        read_images(dataset_dir, pick(table[table["split"] == "train"], samples_per_class, ordered=True)), classes, samples_per_class)
    report.figures["sizes"] = size_histograms(table, classes)
    report.figures["colours"] = colour_histograms(read_images(dataset_dir, pick(table, colour_images_per_class)), classes)
    report.tables["quarantine"] = quarantine_table(manifest)
    report.tables["quarantine_reasons"] = pd.DataFrame(list(manifest["quarantine_reasons"].items()), columns=["reason", "files"])
    report.tables["duplicates"] = duplicate_table(manifest, table)
    report.tables["leakage"] = leakage_table(manifest["leakage"])
    report.tables["mask_coverage"] = mask_coverage_table(manifest)
    report.tables["masks_implausible"] = pd.DataFrame(manifest["masks"]["implausible"],
                                                      columns=["source_path", "mask_path", "reason", "message"])
    report.figures["mask_coverage"] = mask_coverage_plot(table, classes)
    if manifest.get("acquisition", {}).get("available"):
        report.figures["acquisition_blocks"] = acquisition_blocks_plot(table, classes)
        report.tables["acquisition_counts"] = acquisition_counts_table(manifest)
        report.tables["embargo"] = embargo_table(table)
    if probe_samples:
        report.probes = shortcut_probes(dataset_dir, probe_samples)
        report.tables["shortcut_probes"] = probe_table(report.probes)
        report.probe_warning = shortcut_warning(report.probes, probe_warn_above)
    for figure in report.figures.values():
        plt.close(figure)  # shown where the notebook displays them, not all at once
    return report


def counts_table(manifest: dict) -> pd.DataFrame:
    """Images per split (rows, in split order) and class (columns), with totals."""
    order = {"train": 0, "val": 1, "test": 2}
    splits = sorted(manifest["counts"], key=lambda s: (order.get(s, 3), s))
    frame = pd.DataFrame(manifest["counts"]).T.loc[splits, manifest["classes"]]
    frame["total"] = frame.sum(1)
    frame.loc["total"] = frame.sum(0)
    return frame


def pick(table: pd.DataFrame, per_class: int, ordered: bool = False, seed: int = 0) -> pd.DataFrame:
    """Up to ``per_class`` rows of each class: the first by path, or a seeded sample."""
    table = table.sort_values("source_path")
    if ordered:
        return table.groupby("class_name", sort=True).head(per_class)
    rng = np.random.default_rng(seed)
    return pd.concat([rows if len(rows) <= per_class else rows.iloc[np.sort(rng.choice(len(rows), per_class, replace=False))]
                      for _, rows in table.groupby("class_name", sort=True)])


def read_images(dataset_dir: str | Path, rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with their ``image`` and ``mask`` bytes, read from the Parquet for just these paths."""
    if rows.empty:
        return rows.assign(image=[], mask=[])
    pixels = pq.read_table(Path(dataset_dir) / "data", columns=["source_path", "image", "mask"],
                           filters=[("source_path", "in", list(rows["source_path"]))]).to_pandas()
    return rows.merge(pixels, on="source_path").sort_values("source_path").reset_index(drop=True)


def counts_chart(counts: pd.DataFrame):
    """Grouped bars: images per split (in split order), one bar per class, from :func:`counts_table`."""
    frame = counts.drop(index="total", columns="total")
    ax = frame.plot(kind="bar", figsize=(7, 3.5), rot=0, width=0.8, title="images per split and class")
    for container in ax.containers:
        ax.bar_label(container, fontsize=7)
    ax.set_ylabel("images")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(top=ax.get_ylim()[1] * 1.2)  # room for the legend above the bars
    ax.legend(fontsize=8, ncols=min(4, len(frame.columns)), loc="upper right")
    ax.figure.tight_layout()
    return ax.figure


def size_histograms(table: pd.DataFrame, classes: list[str]):
    """Original sizes (before resizing) by class: a bar per size when there are few, else width and height histograms."""
    sizes = table["original_width"].astype(str) + " x " + table["original_height"].astype(str)
    if sizes.nunique() <= 12:
        frame = pd.crosstab(sizes, table["class_name"]).reindex(columns=classes, fill_value=0)
        ax = frame.plot(kind="barh", stacked=True, figsize=(7, 0.6 + 0.35 * len(frame) + 1), title="original image sizes (px)")
        ax.set_xlabel("images")
        ax.set_ylabel("")
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1, 0.5))
        ax.figure.tight_layout()
        return ax.figure
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, column in zip(axes, ("original_width", "original_height")):
        values = [table.loc[table["class_name"] == name, column].to_numpy() for name in classes]
        ax.hist(values, bins=30, stacked=True, label=classes)
        ax.set_xlabel(f"{column.split('_')[1]} (px)")
        ax.set_ylabel("images")
    axes[1].legend(fontsize=8)
    fig.suptitle("original image sizes")
    fig.tight_layout()
    return fig


def colour_histograms(images: pd.DataFrame, classes: list[str]):
    """Red, green and blue intensity distributions of the processed images, one panel per class."""
    fig, axes = plt.subplots(1, len(classes), figsize=(3 * len(classes), 2.8), sharey=True, squeeze=False)
    for ax, name in zip(axes[0], classes):
        arrays = [image_array(b).reshape(-1, 3) for b in images.loc[images["class_name"] == name, "image"]]
        if arrays:
            pixels = np.concatenate(arrays)
            for channel, colour in enumerate(("red", "green", "blue")):
                counts = np.bincount(pixels[:, channel], minlength=256)
                ax.plot(counts / counts.sum(), color=colour, linewidth=1)
        ax.set_title(f"{name} ({len(arrays)} images)", fontsize=9)
        ax.set_xlim(0, 255)
        ax.set_xlabel("intensity")
    axes[0, 0].set_ylabel("share of pixels")
    fig.tight_layout()
    return fig


def quarantine_table(manifest: dict) -> pd.DataFrame:
    """Every file left out, with its reason and message."""
    return pd.DataFrame(manifest["quarantine"], columns=["source_path", "reason", "message"])


def duplicate_table(manifest: dict, table: pd.DataFrame) -> pd.DataFrame:
    """One row per duplicate group: its size, kind (``exact``, ``near`` or ``exact+near``), classes, split and paths."""
    by_path = table.set_index("source_path")
    rows = []
    for number, paths in enumerate(manifest["duplicate_groups"]):
        members = by_path.loc[paths]
        distinct = members["content_hash"].nunique()
        kind = "exact" if distinct == 1 else "near" if distinct == len(paths) else "exact+near"
        rows.append({"group": number, "images": len(paths), "kind": kind,
                     "classes": ", ".join(sorted(members["class_name"].unique())),
                     "split": ", ".join(sorted(members["split"].unique())), "paths": "\n".join(paths)})
    return pd.DataFrame(rows, columns=["group", "images", "kind", "classes", "split", "paths"])


def leakage_table(leakage: dict) -> pd.DataFrame:
    """Test images with a copy (or their patient) in train: a naive random split beside the grouped split used."""
    kinds = {"test_images": "test images", "exact": "with a byte-identical copy in train",
             "near": "with a near duplicate in train", "patient": "with an image of their patient in train"}
    shown = {kind: [leakage[f"{split}_{kind}"] for split in ("naive", "grouped")] for kind in kinds}
    rows = [[label, *("no patient ids" if n is None else n for n in shown[kind])] for kind, label in kinds.items()]
    return pd.DataFrame(rows, columns=["count", "naive split", "grouped split"], dtype=object)


def log_report(report: DataReport, artifact_dir: str = "report") -> None:
    """Log every figure (PNG) and table (CSV) of the report to the active MLflow run."""
    import mlflow

    for name, figure in report.figures.items():
        mlflow.log_figure(figure, f"{artifact_dir}/{name}.png")
    for name, frame in report.tables.items():
        mlflow.log_text(frame.to_csv(index=name in ("counts", "mask_coverage", "acquisition_counts", "shortcut_probes")),
                        f"{artifact_dir}/{name}.csv")
    for tag, warning in (("mask_shortcut_warning", report.manifest["masks"]["shortcut_warning"]),
                         ("shortcut_warning", report.probe_warning)):
        if warning:
            mlflow.set_tag(tag, warning[:5000])
            mlflow.log_text(warning, f"{artifact_dir}/{tag}.txt")


def etl_metrics(manifest: dict) -> dict[str, int]:
    """The ETL's counts as MLflow metrics: files by outcome, duplicate groups, near-duplicate pairs, masks by status."""
    return {**{f"files_{k}": v for k, v in manifest["files"].items()},
            "duplicate_groups": len(manifest["duplicate_groups"]),
            "near_duplicate_pairs": len(manifest["near_duplicate_pairs"]),
            **{f"masks_{status}": sum(c[status] for c in manifest["masks"]["classes"].values())
               for status in ("ok", "implausible", "without_mask")}}


def track_etl(report: DataReport, raw_folder: str | Path) -> None:
    """The ETL in the active MLflow run: the dataset's tags, :func:`etl_metrics`, the manifest and the report."""
    import mlflow

    manifest = report.manifest
    mlflow.set_tags({"dataset_fingerprint": manifest["fingerprint"], "dataset": manifest["dataset"],
                     "layout": manifest["layout"], "raw_folder": str(raw_folder)})
    mlflow.log_metrics(etl_metrics(manifest))
    mlflow.log_dict(manifest, "manifest.json")
    log_report(report)


def mask_coverage_table(manifest: dict) -> pd.DataFrame:
    """Per class: images, plausible, implausible and missing masks, the reasons, and the quartiles of mask coverage
    (cleaned cell fraction of every mask file)."""
    frame = pd.DataFrame(manifest["masks"]["classes"]).T
    frame["reasons"] = frame["reasons"].map(lambda reasons: ", ".join(f"{r}: {n}" for r, n in reasons.items()))
    return frame[["images", "ok", "implausible", "without_mask", "reasons", "fraction_q1", "fraction_median", "fraction_q3"]]


def mask_coverage_plot(table: pd.DataFrame, classes: list[str]):
    """Mask coverage per class (box and points, implausible masks in red) and the clean-up change per class."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    rng, labelled = np.random.default_rng(0), set()
    for position, name in enumerate(classes, start=1):
        rows = table[(table["class_name"] == name) & table["mask_status"].notna()]
        if rows.empty:
            continue
        axes[0].boxplot(rows["mask_fraction"], positions=[position], widths=0.5, showfliers=False)
        axes[1].boxplot(rows["mask_fraction"] - rows["mask_raw_fraction"], positions=[position], widths=0.5, showfliers=False)
        for status, colour in (("ok", "tab:blue"), ("implausible", "tab:red")):
            chosen = rows[rows["mask_status"] == status]
            axes[0].scatter(position + rng.uniform(-0.18, 0.18, len(chosen)), chosen["mask_fraction"], s=6, alpha=0.6,
                            color=colour, label=None if status in labelled or chosen.empty else status)
            labelled |= {status} if len(chosen) else set()
    for ax, title in zip(axes, ("mask coverage (share of the field that is cell)", "clean-up change (cleaned - raw)")):
        ax.set_xticks(range(1, len(classes) + 1), classes)
        ax.set_title(title, fontsize=9)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=8)
    else:
        axes[0].text(0.5, 0.5, "no masks", ha="center", transform=axes[0].transAxes)
    fig.tight_layout()
    return fig


def shortcut_banner(manifest: dict) -> str | None:
    """The manifest's mask shortcut warning framed to be seen (also logged as a warning), or ``None``."""
    return warning_banner(manifest["masks"]["shortcut_warning"])


def warning_banner(warning: str | None) -> str | None:
    """``warning`` framed to be seen (also logged as a warning), or ``None`` when there is none."""
    if not warning:
        return None
    log.warning(warning)
    rule = "!" * 100
    return f"{rule}\n{warning}\n{rule}"
