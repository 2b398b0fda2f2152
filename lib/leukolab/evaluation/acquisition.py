"""Both figures side by side: image-level (grouped split) and acquisition-aware (whole blocks, embargo).

The acquisition-aware figures come from each classifier's child run on the acquisition-aware splits
(:mod:`leukolab.experiments.acquisition`), handed on in its stage output. When every classifier has one, the
champion is chosen on the acquisition-aware ``val`` split (sessions it never saw); the image-level val split
chooses otherwise. Test figures of either kind never choose.
"""

from __future__ import annotations

import pandas as pd

from leukolab.evaluation.compare import with_interval
from leukolab.stages.records import ExperimentRecord

FIGURES = ("accuracy", "balanced_accuracy", "macro_f1")
"""The metrics shown side by side."""
IMAGE_LEVEL, ACQUISITION_AWARE = "image-level (grouped split)", "acquisition-aware (blocks + embargo)"


def acquisition_figures(records: dict[str, ExperimentRecord]) -> dict[str, dict]:
    """Run id -> the acquisition-aware result of each experiment record that has one available."""
    return {out.mlflow_run_id: out.acquisition_aware for out in records.values()
            if (out.acquisition_aware or {}).get("available")}


def selection_strategy(table: pd.DataFrame, figures: dict[str, dict], requested: str = "auto") -> str:
    """``acquisition`` when requested (or ``auto``) and every classifier run has an acquisition-aware figure, else
    ``grouped``; ``acquisition`` requested without the figures is an error."""
    classifiers = set(table.loc[table["task"].isin(["classification", "joint"]), "run_id"])
    complete = bool(classifiers) and classifiers <= set(figures)
    if requested == "acquisition" and not complete:
        missing = sorted(classifiers - set(figures))
        raise ValueError(f"selection_strategy='acquisition' but runs {missing} have no acquisition-aware figure: set "
                         "acquisition_aware on their experiments and give the dataset an acquisition key")
    if requested not in ("auto", "acquisition", "grouped"):
        raise ValueError(f"selection_strategy must be auto, acquisition or grouped, got {requested!r}")
    return "acquisition" if complete and requested != "grouped" else "grouped"


def selection_rows(table: pd.DataFrame, figures: dict[str, dict], split: str, strategy: str) -> pd.DataFrame:
    """The rows the champion is chosen from: the selection split's, with the acquisition-aware val figures in place
    of the image-level ones under the ``acquisition`` strategy (latency and the other columns kept)."""
    rows = table[table["split"] == split].copy()
    if strategy == "acquisition":
        for index, run_id in rows["run_id"].items():
            if run_id in figures:
                for metric, value in figures[run_id]["metrics"]["val"].items():
                    rows.loc[index, metric] = value
    return rows


def side_by_side(table: pd.DataFrame, figures: dict[str, dict], run_id: str, report_split: str = "test") -> pd.DataFrame:
    """The run's image-level and acquisition-aware figures on test, each ``value [low, high]``."""
    image_level = table[(table["run_id"] == run_id) & (table["split"] == report_split)].iloc[0]
    rows = [{"figure": IMAGE_LEVEL, "images": int(image_level["images"]),
             **{m: with_interval(image_level, m) for m in FIGURES}}]
    if run_id in figures:
        test = pd.Series(figures[run_id]["metrics"]["test"])
        rows.append({"figure": ACQUISITION_AWARE, "images": figures[run_id]["images"]["test"],
                     **{m: with_interval(test, m) for m in FIGURES}})
    return pd.DataFrame(rows).set_index("figure")


def acquisition_summary(figures: dict[str, dict], run_id: str, selected_on_it: bool) -> dict | None:
    """``evaluate.json``'s ``acquisition_aware`` for the champion: ``{split_strategy, embargo, blocks, selection,
    metrics}`` (test: accuracy, balanced_accuracy, macro_f1 with ``_ci_low``/``_ci_high``), or None without one."""
    if run_id not in figures:
        return None
    entry = figures[run_id]
    keep = [f"{m}{end}" for m in FIGURES for end in ("", "_ci_low", "_ci_high")]
    return {"split_strategy": entry["split_strategy"], "embargo": entry["embargo"], "blocks": entry["blocks"],
            "selection": selected_on_it, "images": entry["images"],
            "metrics": {k: entry["metrics"]["test"][k] for k in keep if k in entry["metrics"]["test"]},
            "val_metrics": {k: entry["metrics"]["val"][k] for k in keep if k in entry["metrics"]["val"]}}


def probes_beside(probes: list[dict], table: pd.DataFrame, figures: dict[str, dict], run_id: str, name: str,
                  report_split: str = "test") -> pd.DataFrame:
    """Balanced accuracy on test per split strategy: each shortcut probe, then the champion."""
    rows = [{"model": f"probe: {p['name']}", "split_strategy": p["split_strategy"],
             "balanced_accuracy": f"{p['balanced_accuracy']:.3f} [{p['ci_low']:.3f}, {p['ci_high']:.3f}]"} for p in probes]
    champion = side_by_side(table, figures, run_id, report_split)["balanced_accuracy"]
    rows += [{"model": f"champion: {name}", "split_strategy": "grouped" if figure == IMAGE_LEVEL else "acquisition",
              "balanced_accuracy": value} for figure, value in champion.items()]
    frame = pd.DataFrame(rows)
    return frame.pivot(index="model", columns="split_strategy", values="balanced_accuracy").reindex(
        list(dict.fromkeys(frame["model"])))
