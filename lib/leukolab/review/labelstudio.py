"""Label Studio's JSON format for teams that label there: kept cases out as tasks (with the model's answer as a
prediction and our reviews as annotations), their annotations back in as reviews.

A task is ``{"id", "data": {"image", "case", "reason", ...}, "predictions": [...], "annotations": [...]}``; a
choice result is ``{"from_name": "class", "to_name": "image", "type": "choices", "value": {"choices": [label]}}``,
the reviewer and the note are ``textarea`` results. :func:`labelling_config` is the project's labelling interface.
Images are named by URL (``/data/local-files/?d=<path under the review folder>`` by default: start Label Studio
with ``LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true`` and ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`` at the folder).
"""

from __future__ import annotations

from html import escape

from leukolab.review.store import UNUSABLE, Case, ReviewStore

CLASS, REVIEWER, NOTE, IMAGE = "class", "reviewer", "note", "image"
LOCAL_FILES = "/data/local-files/?d="


def labelling_config(class_names: list[str]) -> str:
    """The Label Studio labelling interface: the image, one choice among the classes and ``unusable``, name, note."""
    choices = "\n".join(f'    <Choice value="{escape(name)}"/>' for name in [*class_names, UNUSABLE])
    return (f'<View>\n  <Image name="{IMAGE}" value="$image"/>\n'
            f'  <Choices name="{CLASS}" toName="{IMAGE}" choice="single" showInline="true" required="true">\n{choices}\n'
            f'  </Choices>\n  <TextArea name="{REVIEWER}" toName="{IMAGE}" placeholder="your name" maxSubmissions="1"/>\n'
            f'  <TextArea name="{NOTE}" toName="{IMAGE}" placeholder="note"/>\n</View>\n')


def class_names_of(cases: list[Case]) -> list[str]:
    """The classes of the answers' probabilities, in their order, first seen first."""
    names: list[str] = []
    for case in cases:
        names += [name for name in case.answer.probabilities if name not in names]
    return names


def export_tasks(store: ReviewStore, image_url_prefix: str = LOCAL_FILES) -> list[dict]:
    """Every kept case as a Label Studio task (its latest review, if any, as an annotation)."""
    tasks = []
    for number, case in enumerate(store.cases(), start=1):
        answer = case.answer
        task = {"id": number, "data": {
            IMAGE: image_url_prefix + case.image_path.relative_to(store.folder).as_posix(), "case": case.hash,
            "decision": answer.decision, "reason": answer.reason, "predicted_class": answer.predicted_class,
            "confidence": answer.confidence, "model": f"{answer.model_name}/{answer.model_version}"}}
        if answer.predicted_class:
            task["predictions"] = [{"model_version": task["data"]["model"], "score": answer.confidence,
                                    "result": [_choice(answer.predicted_class)]}]
        if case.review:
            review = case.review
            task["annotations"] = [{"result": [_choice(review["label"]), _text(REVIEWER, review["reviewer"]),
                                               *([_text(NOTE, review["note"])] if review["note"] else [])],
                                    "created_at": review["reviewed_at"], "was_cancelled": False}]
        tasks.append(task)
    return tasks


def import_annotations(store: ReviewStore, tasks: list[dict]) -> dict[str, int]:
    """Each task's latest annotation that is not cancelled, saved as a review of its case (``data.case``); one the
    store already holds is not saved twice. Counts: ``imported``, ``already_there``, ``without_annotation``,
    ``unknown_case``."""
    if not isinstance(tasks, list):
        raise ValueError("a Label Studio export is a JSON list of tasks")
    counts = dict.fromkeys(("imported", "already_there", "without_annotation", "unknown_case"), 0)
    latest = {(r["hash"], r["label"], r["reviewer"], r["note"]) for r in store.latest_reviews()}
    for number, task in enumerate(tasks, start=1):
        digest = (task.get("data") or {}).get("case")
        annotations = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
        review = _review(annotations[-1], number) if annotations else None
        if review is None:
            counts["without_annotation"] += 1
            continue
        label, reviewer, note, created = review
        if (digest, label, reviewer, note) in latest:
            counts["already_there"] += 1
            continue
        try:
            store.record_review(digest, label, reviewer, note, origin="labelstudio", reviewed_at=created)
        except KeyError:
            counts["unknown_case"] += 1
            continue
        counts["imported"] += 1
    return counts


def _review(annotation: dict, number: int) -> tuple[str, str, str, str | None] | None:
    """(label, reviewer, note, created_at) of an annotation; None when it chose no class."""
    label, texts = None, {}
    for result in annotation.get("result") or []:
        value = result.get("value") or {}
        if result.get("type") == "choices" and result.get("from_name") == CLASS and value.get("choices"):
            label = value["choices"][0]
        elif result.get("type") == "textarea":
            texts[result.get("from_name")] = "\n".join(value.get("text") or [])
    if label is None:
        return None
    reviewer = texts.get(REVIEWER) or _user(annotation.get("completed_by"), number)
    return label, reviewer, texts.get(NOTE, ""), annotation.get("updated_at") or annotation.get("created_at")


def _user(completed_by, number: int) -> str:
    """Label Studio's annotator: a user object's email, or its user id."""
    if isinstance(completed_by, dict):
        return completed_by.get("email") or completed_by.get("username") or f"labelstudio user {completed_by.get('id')}"
    return f"labelstudio user {completed_by}" if completed_by is not None else f"labelstudio task {number}"


def _choice(label: str) -> dict:
    return {"from_name": CLASS, "to_name": IMAGE, "type": "choices", "value": {"choices": [label]}}


def _text(name: str, text: str) -> dict:
    return {"from_name": name, "to_name": IMAGE, "type": "textarea", "value": {"text": [text]}}
