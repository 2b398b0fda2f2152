"""The data report's acquisition section: the blocks drawn in acquisition order, the embargo list, the probes."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import Patch

from leukolab.data.etl.acquisition_splits import EMBARGO

_COLOURS = {"train": "#9ecae1", "val": "#fd8d3c", "test": "#d62728", EMBARGO: "#bdbdbd"}
_HOLDOUT_COLOURS = ("#756bb1", "#31a354", "#8c6d31", "#e377c2")


def acquisition_blocks_plot(table: pd.DataFrame, classes: list[str]):
    """One strip per class in acquisition order, each image coloured by its acquisition split (embargo grey)."""
    rows = table[table["acquisition_split"].notna()]
    names = sorted(rows["acquisition_split"].unique(), key=lambda s: (list(_COLOURS).index(s) if s in _COLOURS else 2.5, s))
    holdouts = iter(_HOLDOUT_COLOURS)
    colours = {name: _COLOURS.get(name) or next(holdouts, "#000000") for name in names}
    fig, ax = plt.subplots(figsize=(10, 0.5 + 0.45 * len(classes)))
    for position, name in enumerate(classes):
        members = rows[rows["class_name"] == name].sort_values("acquisition_rank")
        ax.scatter(members["acquisition_rank"], np.full(len(members), position), marker="|", s=180, linewidths=1.5,
                   c=[colours[s] for s in members["acquisition_split"]])
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("place in acquisition order (per class)")
    ax.set_title("acquisition-aware splits: evaluation blocks with an embargo (grey) withheld from train", fontsize=9)
    ax.legend(handles=[Patch(color=colours[n], label=n) for n in names], fontsize=8, ncols=len(names),
              loc="upper center", bbox_to_anchor=(0.5, -0.35 if len(classes) > 2 else -0.6))
    ax.invert_yaxis()
    fig.tight_layout()
    return fig


def embargo_table(table: pd.DataFrame) -> pd.DataFrame:
    """The images withheld from training because they neighbour an evaluation block."""
    rows = table[table["acquisition_split"] == EMBARGO].sort_values(["class_name", "acquisition_rank"])
    return rows[["source_path", "class_name", "acquisition_rank", "acquisition_block", "split"]].reset_index(drop=True)


def acquisition_counts_table(manifest: dict) -> pd.DataFrame:
    """Images per acquisition split (rows) and class, with totals; empty without acquisition-aware splits."""
    section = manifest.get("acquisition", {})
    if not section.get("available"):
        return pd.DataFrame()
    frame = pd.DataFrame(section["counts"]).T.loc[:, manifest["classes"]]
    frame["total"] = frame.sum(1)
    return frame
