"""The model card of a published version: what it is for, what it was trained and tested on, how well it does.

Rendered as Markdown from the evaluation (metrics with intervals per split and
class, calibration, external test sets), the dataset manifest, the source run,
the split that chose the model and the gate's decision. ``40_publish`` logs it
with its figures under ``model_card/`` in the model's source run and keeps it
as the registered version's description.
"""

from __future__ import annotations

import datetime as dt

import numpy as np

from leukolab.config.experiment import Experiment

INTENDED_USE = (
    "Research on automated detection and subtyping of Acute Lymphoblastic Leukemia in peripheral blood smear "
    "images: comparing methods, studying failure modes, teaching. **Not a medical device.** It has not been "
    "clinically validated and must not be used to diagnose, screen or treat anyone; any clinical decision needs a "
    "qualified haematologist and confirmatory tests (flow cytometry, bone marrow examination)."
)


def card_figures(figures: dict[str, str], selection_split: str, report_split: str) -> dict[str, str]:
    """The champion's card figures: a caption for each of ``30_evaluate``'s figure files (``figures``: name -> PNG)
    that the card shows, in the card's order."""
    captions = {
        "confusion_matrix": f"Confusion matrix ({report_split})", "reliability": f"Reliability ({report_split})",
        "failure_cases": f"Most confident mistakes ({report_split})",
        "roc": f"ROC, one class vs rest ({report_split})",
        "precision_recall": f"Precision-recall, one class vs rest ({report_split})",
        "heatmaps": f"Where the model looked: Grad-CAM heatmaps of mistakes and correct images ({report_split})",
        "domain_shift": "In-domain vs external test sets",
        "risk_coverage": f"Risk–coverage ({selection_split} chose the threshold; {report_split} at it)",
        "out_of_distribution": f"Out-of-distribution score: {report_split} against the shifted and external sets",
    }
    return {caption: figures[name] for name, caption in captions.items() if name in figures}


def segmenter_card_figures(figures: dict[str, str], selection_split: str) -> dict[str, str]:
    """The segmenter's card figure: the segmentation models compared on the selection split."""
    return {f"Segmentation models ({selection_split}, the selection split)": figures["segmentation"]}


def render_model_card(*, model_name: str, version: str, alias: str, candidate: dict, experiment: Experiment, manifest: dict,
                      gate: dict, temperature: float | None, lineage: dict, figures: dict[str, str],
                      external: list[dict] | None = None, referral: dict | None = None, evaluation: dict | None = None,
                      override: dict | None = None, ood: dict | None = None) -> str:
    """The card as Markdown; ``figures`` maps a caption to an image path relative to the card, ``external`` are the
    domain-shift rows (in-domain first) of :mod:`leukolab.evaluation.external`, ``referral`` the threshold of
    :func:`leukolab.evaluation.selective.select_referral` with its coverage and risk, ``evaluation`` the output of
    ``30_evaluate`` (both figures, probes), ``override`` a promotion override's record and ``ood`` the
    out-of-distribution report of :func:`leukolab.evaluation.ood.ood_report`."""
    model = experiment.model
    selection, report = candidate["selection_split"], candidate["report_split"]
    lines = [
        f"# Model card: {model_name} version {version} (@{alias})",
        "",
        f"*{experiment.name or candidate['experiment']}*: {experiment.description}  ",
        f"Published {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}.",
        "",
        "## Intended use",
        "",
        INTENDED_USE,
        "",
        "## Model",
        "",
        _table(["", ""], [
            ["task", experiment.task],
            ["architecture", " / ".join(str(v) for v in (model.architecture, model.encoder) if v)],
            ["encoder weights", str(model.encoder_weights or "none (trained from scratch)")],
            ["input", f"RGB, resized to {manifest.get('image_size')} px, normalised with the training split's mean/std"],
            ["outputs", ", ".join(["class probabilities"] * (experiment.task != "segmentation")
                                  + ["white-cell mask"] * (experiment.task != "classification"))],
            ["temperature (calibration)", "" if temperature is None else f"{temperature:.3f}"],
            *[[key.replace("_", " "), f"`{value}`"] for key, value in lineage.items()],
        ]),
        "",
        "## Data",
        "",
        f"Dataset **{manifest.get('dataset')}** (fingerprint `{manifest.get('fingerprint')}`, layout "
        f"`{manifest.get('layout')}`), split by the ETL with seed {manifest.get('parameters', {}).get('seed')}; "
        f"{len(manifest.get('quarantine', []))} files quarantined, {len(manifest.get('duplicate_groups', []))} "
        "duplicate groups kept together.",
        "",
        _split_counts(manifest),
        "",
        "## Performance",
        "",
        "Point estimates with seeded bootstrap 95% intervals (percentile method, 1,000 resamples of the images). "
        f"The model was chosen on **{selection}**; the other splits are reported for it alone and chose nothing.",
    ]
    for split, metrics in candidate.get("metrics_by_split", {report: candidate["metrics"]}).items():
        role = "selection" if split == selection else "reported, not used for selection"
        lines += ["", f"### {split}: {role} ({int(metrics.get('images', 0))} images)", "", _headline(metrics)]
        per_class = _per_class(metrics, manifest.get("classes", []))
        if per_class:
            lines += ["", per_class]
    lines += ["", "## Calibration", ""]
    ece = candidate["metrics"].get("ece")
    if ece is not None:
        lines.append(f"Expected calibration error on {report}: **{ece:.3f}** (10 equal-width bins; 0 is perfect), after "
                     "temperature scaling fitted on the validation split.")
    else:
        lines.append("Not applicable (segmentation only).")
    if referral:
        lines += ["", "## Referral (abstain and refer)", "", _referral(referral)]
    lines += ["", "## Out of distribution", "", _out_of_distribution(ood)]
    if external:
        lines += ["", "## External test sets (domain shift)", "",
                  "The model on other datasets it never saw, beside its in-domain figures (never used for selection):",
                  "", _external(external)]
    lines += provenance_sections(candidate, evaluation, override)
    lines += ["", "## Selection", "",
              f"Chosen by {gate.get('metric', '')} on the **{selection}** split among the pipeline run's experiments; "
              f"{report} and holdout figures are reported for the chosen model only. Gate against the registered "
              f"champion, on {selection}: {gate.get('reason', '')}."]
    lines += ["", "## Known limitations and failure cases", ""] + [f"- {item}" for item in _limitations(manifest, candidate)]
    for caption, path in figures.items():
        lines += ["", f"**{caption}**", "", f"![{caption}]({path})"]
    return "\n".join(lines) + "\n"


def _table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def _value(metrics: dict, name: str) -> str:
    value = metrics.get(name)
    if value is None or np.isnan(value):
        return "n/a"
    low, high = metrics.get(f"{name}_ci_low"), metrics.get(f"{name}_ci_high")
    return f"{value:.3f}" + ("" if low is None else f" [{low:.3f}, {high:.3f}]")


def _headline(metrics: dict) -> str:
    names = [n for n in ("accuracy", "macro_f1", "roc_auc_ovr", "ece", "dice", "iou") if n in metrics]
    rows = [[n, _value(metrics, n)] for n in names]
    rows.append(["latency per image (ms, this machine)", f"{metrics.get('latency_ms_per_image', float('nan')):.1f}"])
    return _table(["metric", "value [95% CI]"], rows)


def _external(rows: list[dict]) -> str:
    return _table(["dataset", "kind", "split", "images", "accuracy", "macro-F1", "ECE"],
                  [[r["dataset"], r["kind"], r["split"], r["images"], *(_value(r, m) for m in ("accuracy", "macro_f1", "ece"))]
                   for r in rows])


def _per_class(metrics: dict, classes: list[str]) -> str:
    if not any(f"f1_{c}" in metrics for c in classes):
        return ""
    return _table(["class", "precision", "recall", "F1"],
                  [[c, _value(metrics, f"precision_{c}"), _value(metrics, f"recall_{c}"), _value(metrics, f"f1_{c}")]
                   for c in classes])


def _referral(referral: dict) -> str:
    selection, report, chosen = referral["selection_split"], referral["report_split"], referral["selection"]
    rule = (f"A prediction is accepted when its calibrated confidence (the top-class probability) is at least "
            f"**{referral['threshold']:.4f}**; the others are answered `refer`: refer to a haematologist."
            if referral["reached"] else "**Every prediction is referred** (answered `refer`: refer to a haematologist): "
            f"the threshold, {referral['threshold']!r}, is above every probability.")
    text = (f"{rule} The threshold was chosen on "
            f"**{selection}** as the one with the largest coverage (fraction accepted) whose risk (error rate among the "
            f"accepted) is at most {referral['target_risk']}: "
            + (f"coverage {chosen['coverage']:.3f}, risk {chosen['risk']:.3f} there." if referral["reached"] else
               f"{referral['note']} there ({chosen['images']} images).")
            + f" At that threshold on **{report}** (reported, not used for selection), with 95% bootstrap intervals, "
              "by true class:")
    rows = [("all classes", referral["report"]["overall"]), *referral["report"]["per_class"].items()]
    return text + "\n\n" + _table(["class", "images", "referred", "coverage [95% CI]", "risk [95% CI]"],
                                  [[name, r["images"], r["referred"], _value(r, "coverage"), _value(r, "risk")] for name, r in rows])


def _out_of_distribution(ood: dict | None) -> str:
    """The check, its threshold, the in-domain cost and the AUROC of each detector per shifted or external set."""
    if not ood:
        return ("This model carries **no out-of-distribution check**: an image unlike its training data (another lab, "
                "stain or kind of image) is answered like any other.")
    check, cost = ood["check"], ood["cost"]
    calibrated_on = "val" if check["calibration_images"] == check["val_images"] else "train out of fold and val"
    text = (f"Images unlike the training data are answered `refer` with reason `out_of_distribution`. The score is the "
            f"mean standardised score of {', '.join(check['used'])} (fitted on train); the threshold "
            f"**{check['threshold']:.3f}**, for a share of {check['share']:.0%}, is set on the scores of "
            f"{check['calibration_images']} in-distribution images the detectors were not fitted on ({calibrated_on}): "
            f"it keeps at least {check['kept_share']:.1%} of new in-distribution images. On the report split "
            f"({cost['images']} images) it refers {cost['in_domain_referred']:.1%}: "
            f"coverage {_with_ci(cost['before'], 'coverage')} without the check, {_with_ci(cost['after'], 'coverage')} "
            f"with it; risk {_with_ci(cost['before'], 'risk')} and {_with_ci(cost['after'], 'risk')}.")
    if not ood["sets"]:
        return text + " No shifted or external set was given to measure it on."
    detectors = ["auroc_combined", *sorted(k for k in ood["sets"][0] if k.startswith("auroc_") and k != "auroc_combined")]
    rows = [[row["set"], row["images"], f"{row['referred']:.1%}", *(f"{row[d]:.3f}" for d in detectors)] for row in ood["sets"]]
    return text + "\n\n" + _table(["set", "images", "referred", *(f"AUROC {d[6:]}" for d in detectors)], rows)


def _with_ci(values: dict, name: str) -> str:
    if values.get(name) is None:
        return "n/a"
    low, high = values.get(f"{name}_ci_low"), values.get(f"{name}_ci_high")
    return f"{values[name]:.3f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else "")


def _split_counts(manifest: dict) -> str:
    counts = manifest.get("counts", {})
    classes = manifest.get("classes", [])
    return _table(["split", *classes, "total"],
                  [[split, *[per.get(c, 0) for c in classes], sum(per.values())] for split, per in counts.items()])


def _limitations(manifest: dict, candidate: dict) -> list[str]:
    items = []
    if manifest.get("dataset", "").startswith("synthetic"):
        items.append("Trained and tested on **synthetic** smears from the project's generator: these figures say the "
                     "pipeline works, nothing about performance on real microscopy.")
    test = candidate["metrics"]
    width = test.get("macro_f1_ci_high", 0) - test.get("macro_f1_ci_low", 0)
    if width:
        items.append(f"The test split is small ({int(test.get('images', 0))} images): the macro-F1 interval is "
                     f"{width:.2f} wide.")
    recalls = {k.removeprefix("recall_"): v for k, v in test.items() if k.startswith("recall_") and "_ci_" not in k}
    if recalls:
        weakest = min(recalls, key=recalls.get)
        items.append(f"Weakest class on test: **{weakest}** (recall {recalls[weakest]:.3f}); see the confusion matrix "
                     "and the misclassified examples below.")
    items += [
        f"Images are resized to {manifest.get('image_size')} px: fine chromatin and nucleolar detail visible at full "
        "resolution is partly lost.",
        "One staining protocol, microscope and camera per source dataset: expect a drop on other laboratories' "
        "smears (the serving API raises a colour-drift alert when inputs move away from the training colours).",
        "Labels are per image; images with several white cells of different kinds are not modelled.",
    ]
    return items


SIDE_BY_SIDE = ("accuracy", "balanced_accuracy", "macro_f1")
"""The metrics the card shows for the image-level and the acquisition-aware figure."""


def provenance_sections(candidate: dict, evaluation: dict | None, override: dict | None) -> list[str]:
    """Markdown lines: image-level vs acquisition-aware figures, the probe table with its warning, any override."""
    evaluation = evaluation or {}
    lines = ["", "## Image-level and acquisition-aware figures", ""]
    aware = evaluation.get("acquisition_aware")
    rows = [["image-level (grouped split, " + candidate["report_split"] + ")",
             *[_value(candidate["metrics"], m) for m in SIDE_BY_SIDE]]]
    if aware:
        rows.append([f"acquisition-aware (blocks + embargo {aware['embargo']}, test; cluster bootstrap)",
                     *[_value(aware["metrics"], m) for m in SIDE_BY_SIDE]])
    lines.append(_table(["figure", *SIDE_BY_SIDE], rows))
    lines += ["", f"Chosen on the {'acquisition-aware' if evaluation.get('selection_strategy') == 'acquisition' else 'image-level'} "
              "validation split." if evaluation else "No evaluation provenance was handed to the registry."]
    if not aware:
        lines += ["", "No acquisition-aware figure: the image-level figure may be inflated by acquisition sessions."]
    probes = evaluation.get("shortcut_probes") or []
    lines += ["", "## Shortcut probes", ""]
    if probes:
        lines += ["Balanced accuracy on test of cheap models that see only what is not the white cell (chance "
                  f"{probes[0]['chance']:.2f}):", "",
                  _table(["probe", "split strategy", "balanced accuracy [95% CI]"],
                         [[p["name"], p["split_strategy"], f"{p['balanced_accuracy']:.3f} [{p['ci_low']:.3f}, {p['ci_high']:.3f}]"]
                          for p in probes])]
        if evaluation.get("shortcut_warning"):
            lines += ["", f"**{evaluation['shortcut_warning']}**"]
    else:
        lines.append("No probe table was made for this version.")
    if override:
        lines += ["", "## Promotion override", "", f"Promoted to @champion without full provenance: {override['reason']}. "
                  "Missing: " + "; ".join(override["problems"]) + "."]
    return lines
