"""The review store: one copy per image, the size bound and what it drops, crash safety, nothing on stdout; the
referral a kept case records; the Label Studio round trip; the review page's session driven through its widgets."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from leukolab.review import labelstudio
from leukolab.review.keeping import referral
from leukolab.review.store import UNUSABLE, Answer, ReviewStore

CLASSES = ["Benign", "Early", "Pre", "Pro"]
LIB = Path(__file__).resolve().parents[1] / "lib"


def smear(seed: int, size: int = 48) -> bytes:
    """A distinct small PNG per seed."""
    image = Image.new("RGB", (size, size), (180 + seed % 60, 100, 150))
    image.putpixel((seed % size, seed // size % size), (0, 0, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def answer(reason: str = "low_confidence", predicted: str = "Pre") -> Answer:
    return Answer("refer", reason, predicted, 0.4, {"Benign": 0.1, "Early": 0.2, "Pre": 0.4, "Pro": 0.3}, "leukolab", "3")


def test_an_image_is_kept_once_with_its_answer_and_reason(tmp_path, capsys):
    store = ReviewStore(tmp_path / "review")
    first = store.keep(smear(1), answer(), "api")
    again = store.keep(smear(1), answer(), "predict")
    other = store.keep(smear(2), answer("out_of_distribution"), "api")
    assert (first.outcome, again.outcome, other.outcome) == ("kept", "seen_again", "kept")
    assert first.hash == again.hash == hashlib.sha256(smear(1)).hexdigest()
    images = sorted((tmp_path / "review" / "images").rglob("*.png"))
    assert len(images) == 2 and any(path.name == f"{first.hash}.png" for path in images)
    cases = {case.hash: case for case in store.cases()}
    assert cases[first.hash].times_seen == 2 and cases[first.hash].source == "api"
    assert cases[other.hash].answer.reason == "out_of_distribution"
    assert cases[first.hash].answer == answer() and cases[first.hash].image_path.read_bytes() == smear(1)
    assert store.backlog() == 2
    assert capsys.readouterr().out == "", "the store must print nothing"


def test_the_bound_drops_the_oldest_unreviewed_cases_and_says_so(tmp_path):
    size = len(smear(1))
    store = ReviewStore(tmp_path / "review", max_bytes=3 * size + size // 2)
    hashes = [store.keep(smear(seed), answer(), "api").hash for seed in (1, 2, 3)]
    store.record_review(hashes[0], "Early", "Dr A")  # reviewed: labelled data, never dropped
    fourth = store.keep(smear(4), answer(), "api")
    assert fourth.outcome == "kept" and fourth.dropped == [hashes[1]]
    assert {case.hash for case in store.cases()} == {hashes[0], hashes[2], fourth.hash}
    assert not any((tmp_path / "review" / "images").rglob(f"{hashes[1]}*"))
    assert [row["hash"] for row in store.dropped()] == [hashes[1]] and "oldest unreviewed" in store.dropped()[0]["why"]
    for digest in (hashes[2], fourth.hash):
        store.record_review(digest, UNUSABLE, "Dr A")
    refused = store.keep(smear(5), answer(), "api")  # only reviewed cases left: the new one cannot fit
    assert refused.outcome == "not_kept" and len(store.cases()) == 3
    assert store.dropped()[-1]["hash"] == refused.hash and store.dropped()[-1]["why"].startswith("not_kept")


def test_reviews_are_saved_as_made_and_the_latest_wins(tmp_path):
    store = ReviewStore(tmp_path / "review")
    digest = store.keep(smear(1), answer(), "api").hash
    store.record_review(digest, "Pre", "Dr A", "first look")
    assert ReviewStore(tmp_path / "review").latest_reviews()[0]["label"] == "Pre"  # another reader sees it at once
    store.record_review(digest, "Early", "Dr B")
    assert [(r["label"], r["reviewer"]) for r in store.latest_reviews()] == [("Early", "Dr B")]
    assert store.backlog() == 0
    with pytest.raises(ValueError):
        store.record_review(digest, "Pre", "  ")
    with pytest.raises(KeyError):
        store.record_review("0" * 64, "Pre", "Dr A")


KEEP_FOREVER = """
import io, sys
from PIL import Image
from leukolab.review.store import Answer, ReviewStore
store = ReviewStore(sys.argv[1])
for seed in range(10**6):
    image = Image.new("RGB", (256, 256), (seed % 251, seed // 251 % 251, 7))
    buffer = io.BytesIO(); image.save(buffer, format="PNG")
    store.keep(buffer.getvalue(), Answer("refer", "low_confidence"), "api")
    if seed == 5:
        print("ready", flush=True)
"""


def test_a_killed_writer_leaves_every_indexed_case_whole(tmp_path):
    folder = tmp_path / "review"
    writer = subprocess.Popen([sys.executable, "-c", KEEP_FOREVER, str(folder)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(LIB)})
    try:
        assert writer.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        writer.send_signal(signal.SIGKILL)
    finally:
        writer.wait(10)
    with sqlite3.connect(folder / "index.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    store = ReviewStore(folder)
    cases = store.cases()
    assert len(cases) >= 6
    for case in cases:
        assert hashlib.sha256(case.image_path.read_bytes()).hexdigest() == case.hash, "an indexed image is not whole"
    store.keep(smear(1), answer(), "api")  # and the store goes on
    assert len(store.cases()) == len(cases) + 1


def test_unindexed_leftovers_are_removed_when_room_is_needed(tmp_path):
    store = ReviewStore(tmp_path / "review", max_bytes=len(smear(1)) + 10)
    leftover = tmp_path / "review" / "images" / "ab" / ".partial-crash"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half an image")
    os.utime(leftover, (time.time() - 3600, time.time() - 3600))
    store.keep(smear(1), answer(), "api")
    store.keep(smear(2), answer(), "api")
    assert not leftover.exists()


def test_the_referral_of_an_api_answer_and_of_a_predict_row():
    api = {"decision": "refer", "predicted_class": "Pre", "confidence": 0.4, "probabilities": {"Pre": 0.4, "Pro": 0.6}}
    assert referral(api, "leukolab", "2") == Answer("refer", "low_confidence", "Pre", 0.4, {"Pre": 0.4, "Pro": 0.6},
                                                    "leukolab", "2")
    assert referral({**api, "reason": "out_of_distribution"}, "m", "1").reason == "out_of_distribution"
    assert referral({**api, "decision": "accept"}, "m", "1") is None
    row = {"path": "x.png", "predicted_class": "Pre", "confidence": 0.4, "p_Pre": 0.4, "p_Pro": 0.6, "decision": "refer",
           "reason": float("nan")}
    assert referral(row, "m", "1") == Answer("refer", "low_confidence", "Pre", 0.4, {"Pre": 0.4, "Pro": 0.6}, "m", "1")


def test_label_studio_export_and_import_round_trip(tmp_path):
    source = ReviewStore(tmp_path / "a")
    hashes = [source.keep(smear(seed), answer(predicted=CLASSES[seed]), "api").hash for seed in range(3)]
    source.record_review(hashes[0], "Early", "Dr A", "two nucleoli")
    source.record_review(hashes[1], UNUSABLE, "Dr B")
    tasks = json.loads(json.dumps(labelstudio.export_tasks(source)))  # as written to and read from a file
    assert [t["data"]["case"] for t in tasks] == hashes and tasks[0]["data"]["image"].startswith(labelstudio.LOCAL_FILES)
    assert tasks[0]["predictions"][0]["result"][0]["value"] == {"choices": ["Benign"]} and "annotations" not in tasks[2]
    config = labelstudio.labelling_config(labelstudio.class_names_of(source.cases()))
    assert all(f'<Choice value="{name}"/>' in config for name in [*CLASSES, UNUSABLE])

    target = ReviewStore(tmp_path / "b")
    for seed in range(3):
        target.keep(smear(seed), answer(predicted=CLASSES[seed]), "api")
    assert labelstudio.import_annotations(target, tasks) == {"imported": 2, "already_there": 0, "without_annotation": 1,
                                                             "unknown_case": 0}
    fields = ("hash", "label", "reviewer", "note", "reviewed_at")
    assert [{k: r[k] for k in fields} for r in target.latest_reviews()] == \
        [{k: r[k] for k in fields} for r in source.latest_reviews()]
    assert labelstudio.import_annotations(target, tasks)["already_there"] == 2  # importing again adds nothing

    # An annotation as Label Studio writes it: a user id, no reviewer field, a cancelled one after it.
    made_there = {"data": {"case": hashes[2]}, "annotations": [
        {"result": [{"from_name": "class", "to_name": "image", "type": "choices", "value": {"choices": ["Pro"]}}],
         "completed_by": 7, "created_at": "2026-01-02T03:04:05Z"},
        {"result": [], "completed_by": 8, "was_cancelled": True}]}
    assert labelstudio.import_annotations(target, [made_there])["imported"] == 1
    assert target.latest_reviews()[-1]["label"] == "Pro" and target.latest_reviews()[-1]["reviewer"] == "labelstudio user 7"
    with pytest.raises(ValueError):
        labelstudio.import_annotations(target, {"not": "a list"})


def test_the_review_page_saves_each_review_as_it_is_made(tmp_path):
    from leukolab.review_page import build_review

    store = ReviewStore(tmp_path / "review")
    hashes = [store.keep(smear(seed), answer(), "api").hash for seed in range(3)]
    page = build_review(store, reviewer="Dr A", load=None)
    assert "0 of 3 reviewed" in page.progress.value and page.label.options == (*answer().probabilities, UNUSABLE)
    page.save.click()  # no class chosen: refused, nothing saved
    assert "Not saved" in page.message.value and store.latest_reviews() == []
    page.label.value, page.note.value = "Early", "hypogranular"
    page.save.click()
    assert [(r["hash"], r["label"], r["reviewer"], r["note"]) for r in store.latest_reviews()] == \
        [(hashes[0], "Early", "Dr A", "hypogranular")]
    page.skip.click()
    page.label.value = UNUSABLE
    page.save.click()
    assert store.latest_reviews()[-1]["hash"] == hashes[2] and "2 of 3 reviewed" in page.progress.value
    page.label.value = "Pro"
    page.save.click()
    assert store.backlog() == 0 and "No case is waiting" in page.widget.children[3].value and page.save.disabled
