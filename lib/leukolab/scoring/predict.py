"""Score files and folders with a registered model: one row per file, on this machine or as a Spark job.

:func:`predict_paths` is what ``leukolab predict`` calls and what a notebook can call; :func:`write_csv` and
:func:`write_contact_sheet` write its rows out.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from tqdm.auto import tqdm

from leukolab.images import ANY_SIZE, ImageRejected, decode_image
from leukolab.plots import contact_sheet
from leukolab.predictor import DEFAULT_MODEL_URI
from leukolab.predictor.uri import load_model, resolve_model
from leukolab.scoring.input_files import collect
from leukolab.scoring.rows import columns, score_batch
from leukolab.tracking import configure

log = logging.getLogger(__name__)


def predict_paths(paths: list[str | Path], model_uri: str = DEFAULT_MODEL_URI, batch_size: int = 32,
                  explain_dir: str | Path | None = None, spark_master: str | None = None,
                  progress: bool = True) -> pd.DataFrame:
    """One row per file of ``paths`` (files, and folders walked recursively: :func:`~leukolab.scoring.input_files.collect`)
    scored in batches of ``batch_size`` by the model behind ``model_uri``, with the columns of
    :func:`~leukolab.scoring.rows.columns`; with ``explain_dir``, a heatmap overlay per usable image written there;
    with ``spark_master`` (``local[2]``, ``spark://host:7077``), the batches run as a Spark job."""
    if batch_size < 1:
        raise ValueError(f"the batch size must be at least 1, got {batch_size}")
    items = collect(paths)
    batches = [items[start:start + batch_size] for start in range(0, len(items), batch_size)]
    explain = None if explain_dir is None else str(explain_dir)
    if spark_master:
        from leukolab.scoring.spark_job import packed_model, score_on_spark

        configure()
        pinned_uri, info = resolve_model(model_uri)
        packed, model = packed_model(pinned_uri)
        _check_explain(model, explain)
        started = time.perf_counter()
        scored = score_on_spark(packed, batches, info.referral_threshold, spark_master, explain)
    else:
        model, info = load_model(model_uri)
        _check_explain(model, explain)
        started = time.perf_counter()
        scored = (row for batch in batches for row in score_batch(model, batch, info.referral_threshold, explain))
    rows = list(tqdm(scored, total=len(items), desc=f"scoring with {info.label}", unit="file", disable=not progress,
                     mininterval=1))
    frame = pd.DataFrame(rows, columns=columns(model, explain is not None))
    frame.attrs.update(model_name=info.name, model_version=info.version or info.run_id)
    seconds = time.perf_counter() - started
    usable = int(frame["decision"].notna().sum())
    log.info("%d files scored (%d usable) in %.1f s after the model loaded: %.1f images/s", len(frame), usable, seconds,
             usable / seconds if seconds else 0.0)
    return frame


def _check_explain(model, explain_dir: str | None) -> None:
    if explain_dir is not None and model.task == "segmentation":
        raise ValueError("--explain needs a model that classifies; this one only segments")


def write_csv(frame: pd.DataFrame, out: str | Path | None = None) -> None:
    """``frame`` as CSV (numbers to 6 decimals, empty fields for what a refused file lacks) to ``out``, or stdout."""
    frame.to_csv(sys.stdout if out is None else out, index=False, float_format="%.6f")


def write_contact_sheet(frame: pd.DataFrame, path: str | Path, limit: int = 24) -> Path:
    """A PNG of the first ``limit`` rows: each image titled with its class, confidence, decision (and the reason of a
    referral), or the reason it was not used."""
    images, titles = [], []
    for row in frame.head(limit).to_dict("records"):
        try:
            images.append(decode_image(Path(row["path"]).read_bytes(), ANY_SIZE))
        except (ImageRejected, OSError):
            images.append(None)
        if not isinstance(row["decision"], str):
            verdict = row["reason"]
        else:
            verdict = f"{row.get('predicted_class', '')} {row.get('confidence', float('nan')):.2f} {row['decision']}"
            verdict += f" ({row['reason']})" if isinstance(row["reason"], str) else ""
        titles.append(f"{Path(row['path']).name}\n{verdict}")
    figure = contact_sheet(images, titles)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)
