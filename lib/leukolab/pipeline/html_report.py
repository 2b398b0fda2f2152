"""``leukolab report RUN_ID``: one self-contained HTML page for a pipeline run, read from its folder: its stages,
the parameters each task ran with, the evaluated models' metrics, every figure the run wrote, and each executed
notebook converted by nbconvert. The page is attached to the run's MLflow parent run (``report/report.html``) and
the parent run's tag ``leukolab.report`` names it, so the run in the MLflow UI leads to it."""

from __future__ import annotations

import base64
import html
import json
import logging
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from leukolab.metrics import HEADLINE
from leukolab.pipeline.lineage import read_lineage
from leukolab.pipeline.report import run_record
from leukolab.stages.records import EvaluationRecord
from leukolab.tracking import log_file_to_run

STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .5em;
text-align:left}th{background:#f3f3f3}figure{display:inline-block;margin:.5em;vertical-align:top}
figure img{max-width:560px}figcaption{font-size:.85em;color:#555}details{margin:.5em 0}
iframe{width:100%;height:80vh;border:1px solid #ccc}.failed{color:#b00}"""


def write_run_report(run_id: str, out: str | Path | None = None) -> Path:
    """Write run ``run_id``'s page (default ``runs/RUN_ID/report.html``), attach it to the MLflow parent run; its path."""
    lineage = read_lineage(run_id)
    run_dir = Path(lineage["run_dir"])
    path = Path(out) if out else run_dir / "report.html"
    sections = [_stages(run_id), _parameters(lineage), _metrics(run_dir), _figures(run_dir), _notebooks(lineage)]
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>leukolab run {html.escape(run_id)}"
            f"</title><style>{STYLE}</style></head><body><h1>Pipeline run {html.escape(run_id)}</h1>"
            + "".join(sections) + "</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    parent = lineage.get("mlflow_parent_run_id")
    if parent:
        log_file_to_run(parent, path, "report")
        MlflowClient().set_tag(parent, "leukolab.report", f"report/{path.name}")
    return path


def _section(title: str, body: str) -> str:
    return f"<section id='{title.lower().replace(' ', '-')}'><h2>{html.escape(title)}</h2>{body}</section>"


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, na_rep="", border=0) if len(frame) else "<p>(none)</p>"


def _stages(run_id: str) -> str:
    run = run_record(run_id)
    header = pd.DataFrame([{k: run[k] for k in ("profile", "status", "started", "seconds", "git_commit", "git_dirty",
                                                 "mlflow_parent_run_id", "folder")}])
    tasks = pd.DataFrame(run["tasks"]).assign(key=lambda frame: frame["key"].str[:12])
    errors = "".join(f"<p class='failed'>{html.escape(t['task'])}: {html.escape(t['error'])}</p>"
                     for t in run["tasks"] if t["error"])
    return _section("Stages", _table(header) + _table(tasks.drop(columns=["error"])) + errors)


def _parameters(lineage: dict) -> str:
    rows = [{"task": name, "parameter": key, "value": json.dumps(value, default=str)}
            for name, record in lineage["tasks"].items() for key, value in sorted(record.get("parameters", {}).items())]
    overrides = f"<p>overrides: <code>{html.escape(json.dumps(lineage.get('overrides') or {}))}</code></p>"
    return _section("Parameters", overrides + _table(pd.DataFrame(rows)))


def _metrics(run_dir: Path) -> str:
    if not (run_dir / f"{EvaluationRecord.stage}.json").is_file():
        return _section("Metrics", "<p>This run has no evaluation.</p>")
    result = EvaluationRecord.read(run_dir)
    table = pd.DataFrame(result.table)
    columns = [c for c in ("run_name", "task", "split", *HEADLINE) if c in table]
    note = (f"<p>Champion <b>{html.escape(result.champion['experiment'])}</b>, chosen on "
            f"<b>{html.escape(result.selection_split)}</b>; {html.escape(result.report_split)} "
            "reports it and chose nothing.</p>")
    return _section("Metrics", note + _table(table[columns].round(4) if columns else table))


def _figures(run_dir: Path) -> str:
    figures = []
    for png in sorted(run_dir.rglob("*.png")):
        data = base64.b64encode(png.read_bytes()).decode()
        caption = html.escape(str(png.relative_to(run_dir)))
        figures.append(f"<figure><img src='data:image/png;base64,{data}' alt='{caption}'><figcaption>{caption}"
                       "</figcaption></figure>")
    return _section("Figures", "".join(figures) or "<p>(none)</p>")


def _notebooks(lineage: dict) -> str:
    """Each task's executed notebook (a cached task's is the one of the run that computed it), as nbconvert's HTML."""
    from nbconvert import HTMLExporter

    exporter = HTMLExporter()
    exporter.log.setLevel(logging.ERROR)  # not a warning per figure without alternative text
    parts = []
    for name, record in lineage["tasks"].items():
        notebook = Path(record.get("outputs", {}).get("notebook", ""))
        if not notebook.is_file():
            parts.append(f"<p>{html.escape(name)}: no executed notebook</p>")
            continue
        body, _ = exporter.from_filename(str(notebook))
        cached = f", cached from run {html.escape(record['cached_from'])}" if record.get("cached_from") else ""
        parts.append(f"<details><summary>{html.escape(name)} ({html.escape(record['status'])}{cached}): "
                     f"{html.escape(notebook.name)}</summary><iframe title='{html.escape(name)}' "
                     f"srcdoc=\"{html.escape(body, quote=True)}\"></iframe></details>")
    return _section("Notebooks", "".join(parts))
