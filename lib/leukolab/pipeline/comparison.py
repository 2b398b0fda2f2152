"""``leukolab compare RUN_A RUN_B``: what changed between two pipeline runs, read from their lineage, as
``dvc exp diff`` shows it.

:func:`compare_runs` returns a :class:`RunComparison` of four tables: the runs' provenance (profile, git commit,
library digest, dataset fingerprint, champion, referral threshold, MLflow parent run), only the parameters that
differ (per task), every task's status in each run (run or reused, and whether its key changed), and the headline
metrics of the evaluated champion and segmenter on each split, with their 95% intervals and the difference B - A.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from leukolab.metrics import HEADLINE
from leukolab.pipeline.lineage import read_lineage
from leukolab.pipeline.parameters import notebook_parameters
from leukolab.stages.records import EtlRecord, EvaluationRecord, PublishRecord, StageRecord

MISSING = "—"
"""What a table shows for a value one run does not have."""


@dataclass(frozen=True)
class RunComparison:
    """The tables of :func:`compare_runs`; ``a`` and ``b`` are the run ids."""

    a: str
    b: str
    provenance: pd.DataFrame  # field, a, b, changed
    parameters: pd.DataFrame  # task, parameter, a, b
    stages: pd.DataFrame  # task, a, b, key, mlflow_run_a, mlflow_run_b
    metrics: pd.DataFrame  # model, split, metric, a, a_ci_low, a_ci_high, b, b_ci_low, b_ci_high, difference

    def text(self) -> str:
        """The four tables for a terminal."""
        return "\n\n".join(f"{title}\n{_shown(frame, self).to_string(index=False) if len(frame) else '  (none)'}"
                           for title, frame in self._sections())

    def markdown(self) -> str:
        """The four tables as Markdown, for a paper's notes."""
        return "\n\n".join(f"### {title}\n\n{markdown_table(_shown(frame, self)) if len(frame) else '(none)'}"
                           for title, frame in self._sections())

    def records(self) -> dict:
        """The four tables as lists of records, for ``--json``."""
        frames = {"provenance": self.provenance, "parameters": self.parameters, "stages": self.stages,
                  "metrics": self.metrics}
        return {"a": self.a, "b": self.b, **{name: json.loads(frame.to_json(orient="records"))
                                              for name, frame in frames.items()}}

    def _sections(self) -> list[tuple[str, pd.DataFrame]]:
        return [(f"runs {self.a} (A) and {self.b} (B)", self.provenance), ("parameters that differ", self.parameters),
                ("stages", self.stages), ("metrics (95% intervals; difference B - A)", self.metrics)]


def compare_runs(run_a: str, run_b: str) -> RunComparison:
    """The :class:`RunComparison` of pipeline runs ``run_a`` and ``run_b`` of the workspace (``runs/<id>/lineage.json``)."""
    a, b = read_lineage(run_a), read_lineage(run_b)
    return RunComparison(run_a, run_b, _provenance(a, b), _parameters(a, b), _stages(a, b), _metrics(a, b))


def _provenance(a: dict, b: dict) -> pd.DataFrame:
    rows = [{"field": field, "a": value(a), "b": value(b)} for field, value in PROVENANCE.items()]
    frame = pd.DataFrame(rows, columns=["field", "a", "b"])
    frame["changed"] = frame["a"] != frame["b"]
    return frame


def _record(run: dict, task: str, record: type[StageRecord]):
    """The task's output in the run's lineage, read as ``record``; None when the task has none."""
    return record.from_output(run.get("tasks", {}).get(task, {}).get("result"))


def _champion(run: dict) -> str:
    evaluation, publish = _record(run, "evaluate", EvaluationRecord), _record(run, "publish", PublishRecord)
    chosen = evaluation.champion["experiment"] if evaluation else None
    if publish:
        return f"{chosen or '?'} -> {publish.model_name} version {publish.version}"
    return chosen or MISSING


def _fingerprint(run: dict) -> str:
    etl = _record(run, "etl", EtlRecord)
    return etl.fingerprint if etl else MISSING


def _referral_threshold(run: dict) -> str:
    evaluation = _record(run, "evaluate", EvaluationRecord)
    return _threshold(evaluation.referral["threshold"] if evaluation and evaluation.referral else None)


PROVENANCE = {
    "profile": lambda run: run.get("profile", MISSING),
    "status": lambda run: run.get("status", MISSING),
    "started": lambda run: run.get("started", MISSING)[:19],
    "git commit": lambda run: str(run.get("git_commit", MISSING))[:12],
    "git dirty": lambda run: str(run.get("git_dirty", MISSING)),
    "library digest": lambda run: str(run.get("library_digest", MISSING))[:16],
    "leukolab version": lambda run: run.get("leukolab_version", MISSING),
    "dataset fingerprint": _fingerprint,
    "reviews in train": lambda run: _reviews(_record(run, "etl", EtlRecord)),
    "champion": _champion,
    "referral threshold": _referral_threshold,
    "MLflow parent run": lambda run: run.get("mlflow_parent_run_id") or MISSING,
}
"""The rows of the provenance table: a field and how to read it from a run's lineage."""


def _reviews(etl: EtlRecord | None) -> str:
    """The reviewed cases the run's dataset took into train (its ETL's extra sources): how many, and their ids."""
    ids = sorted(i for extra in (etl.extra_sources if etl else []) for i in extra["reviews"])
    if not ids:
        return "none"
    shown = ", ".join(map(str, ids[:20])) + (", ..." if len(ids) > 20 else "")
    return f"{len(ids)} (review ids {shown})"


def _threshold(value) -> str:
    return MISSING if value is None else f"{value:.4f}"


def flatten(mapping: dict, prefix: str = "") -> dict[str, object]:
    """Nested mappings as one level of dotted keys (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``)."""
    flat = {}
    for key, value in mapping.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _task_names(a: dict, b: dict) -> list[str]:
    names = list(a.get("tasks", {}))
    return names + [name for name in b.get("tasks", {}) if name not in names]


def _parameters(a: dict, b: dict) -> pd.DataFrame:
    """The parameters a task was given in one run and not the same in the other; a parameter one run left at the
    notebook's default shows that default (as the notebook declares it now)."""
    rows = []
    for task in _task_names(a, b):
        records = [run.get("tasks", {}).get(task, {}) for run in (a, b)]
        left, right = (flatten(record.get("parameters") or {}) for record in records)
        defaults = _notebook_defaults(*records)
        for key in [*left, *(k for k in right if k not in left)]:
            one, two = (values[key] if key in values else defaults.get(key, MISSING) for values in (left, right))
            if one != two:
                rows.append({"task": task, "parameter": key, "a": _text(one, key in left), "b": _text(two, key in right)})
    return pd.DataFrame(rows, columns=["task", "parameter", "a", "b"])


def _notebook_defaults(*records: dict) -> dict[str, object]:
    """The values a task's notebook assigns in its ``parameters`` cell (those Python can read as literals)."""
    notebook = next((Path(r["notebook"]) for r in records if Path(r.get("notebook", "")).is_file()), None)
    defaults = {}
    for name, declared in (notebook_parameters(notebook) if notebook else {}).items():
        try:
            defaults[name] = ast.literal_eval(declared.value)
        except (ValueError, SyntaxError):
            continue
    return defaults


def _text(value, given: bool = True) -> str:
    shown = value if isinstance(value, str) else repr(value)
    return shown if given or value is MISSING else f"{shown} (default)"


def _stages(a: dict, b: dict) -> pd.DataFrame:
    rows = []
    for task in _task_names(a, b):
        left, right = (run.get("tasks", {}).get(task, {}) for run in (a, b))
        same_key = left.get("key") and left.get("key") == right.get("key")
        rows.append({"task": task, "a": _status(left), "b": _status(right),
                     "key": "same" if same_key else "changed" if left and right else MISSING,
                     "mlflow_run_a": (left.get("mlflow_run_id") or MISSING)[:12],
                     "mlflow_run_b": (right.get("mlflow_run_id") or MISSING)[:12]})
    return pd.DataFrame(rows, columns=["task", "a", "b", "key", "mlflow_run_a", "mlflow_run_b"])


def _status(record: dict) -> str:
    """``ran`` (a task run in this run), ``cached from <run>``, or the status of a task that did not finish."""
    status = record.get("status", MISSING)
    if status == "done":
        return "ran"
    if status == "cached":
        return f"cached from {record.get('cached_from', '?')}"
    return status


def _metrics(a: dict, b: dict) -> pd.DataFrame:
    rows = []
    left, right = (_evaluated(run) for run in (a, b))
    for place in [*left, *(p for p in right if p not in left)]:
        one, two = left.get(place, {}), right.get(place, {})
        for metric in HEADLINE:
            if _number(one.get(metric)) is None and _number(two.get(metric)) is None:
                continue
            row = {"model": place[0], "split": place[1], "metric": metric}
            for side, values in (("a", one), ("b", two)):
                row.update({side: _number(values.get(metric)), f"{side}_ci_low": _number(values.get(f"{metric}_ci_low")),
                            f"{side}_ci_high": _number(values.get(f"{metric}_ci_high"))})
            row["difference"] = None if row["a"] is None or row["b"] is None else row["b"] - row["a"]
            rows.append(row)
    return pd.DataFrame(rows, columns=["model", "split", "metric", "a", "a_ci_low", "a_ci_high", "b", "b_ci_low",
                                       "b_ci_high", "difference"])


def _evaluated(run: dict) -> dict[tuple[str, str], dict]:
    """(model, split) -> metrics of the evaluation's champion and segmenter on each split it evaluated: the
    selection split first, then the report split, then the others."""
    evaluation = _record(run, "evaluate", EvaluationRecord)
    if evaluation is None:
        return {}
    first = [evaluation.selection_split, evaluation.report_split]
    evaluated = {}
    for role, candidate in (("champion", evaluation.champion), ("segmenter", evaluation.segmenter)):
        by_split = (candidate or {}).get("metrics_by_split", {})
        for split in sorted(by_split, key=lambda s: (first.index(s) if s in first else len(first), s)):
            evaluated[(role, split)] = by_split[split]
    return evaluated


def _number(value) -> float | None:
    """A finite number, else None (lineage JSON holds NaN for a metric a model does not have)."""
    return float(value) if isinstance(value, (int, float)) and value == value else None


def _shown(frame: pd.DataFrame, comparison: RunComparison) -> pd.DataFrame:
    """A table as printed: run ids for the ``a``/``b`` headers, metric values with their intervals."""
    if "difference" in frame:
        frame = pd.DataFrame({"model": frame["model"], "split": frame["split"], "metric": frame["metric"],
                              "a": [_with_interval(*v) for v in frame[["a", "a_ci_low", "a_ci_high"]].to_numpy()],
                              "b": [_with_interval(*v) for v in frame[["b", "b_ci_low", "b_ci_high"]].to_numpy()],
                              "difference": frame["difference"].map(lambda d: MISSING if pd.isna(d) else f"{d:+.3f}")})
    elif "changed" in frame:
        frame = frame.assign(changed=frame["changed"].map({True: "yes", False: ""}))
    names = {"a": f"A {comparison.a}", "b": f"B {comparison.b}", "mlflow_run_a": "MLflow run A",
             "mlflow_run_b": "MLflow run B"}
    return frame.rename(columns=names)


def _with_interval(value, low, high) -> str:
    if pd.isna(value):
        return MISSING
    return f"{value:.3f}" + ("" if pd.isna(low) or pd.isna(high) else f" [{low:.3f}, {high:.3f}]")


def markdown_table(frame: pd.DataFrame) -> str:
    """``frame`` as a GitHub Markdown table (``|`` in cells escaped)."""
    def cells(values) -> str:
        return "| " + " | ".join(str(v).replace("|", "\\|") for v in values) + " |"

    return "\n".join([cells(frame.columns), cells(["---"] * len(frame.columns)),
                      *(cells(row) for row in frame.itertuples(index=False))])
