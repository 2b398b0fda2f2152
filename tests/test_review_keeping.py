"""Referred cases kept by the API (``/predict``, ``/predict/batch``, v2 inference) and by ``leukolab predict`` when
asked, with the store's counters on ``/metrics``; nothing kept when not asked, nor when the answer is accepted."""

from __future__ import annotations

import base64
import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from leukolab.review.store import ReviewStore
from leukolab.serving.app import create_app
from leukolab.serving.settings import ServingSettings

SETTINGS = ServingSettings(model_poll_seconds=0)


def smear(shade: int) -> bytes:
    image = Image.new("RGB", (80, 64), (200, 110 + shade, 160))
    image.paste((60, 20, 90), (20, 16, 60, 48))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return buffer.getvalue()


def samples(text: str, name: str) -> dict[tuple, float]:
    return {tuple(sorted(s.labels.items())): s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == name}


@pytest.fixture
def keeping(monkeypatch, tmp_path):
    monkeypatch.setenv("LEUKOLAB_KEEP_REFERRED", "1")
    monkeypatch.setenv("LEUKOLAB_REVIEW_DIR", str(tmp_path / "review"))
    return tmp_path / "review"


def test_the_api_keeps_every_referred_image_once(referring_model, model_env, keeping):
    with TestClient(create_app(referring_model["uri"], SETTINGS)) as client:
        single = client.post("/predict", files={"file": ("a.jpg", smear(0))}).json()
        batch = client.post("/predict/batch", files=[("files", ("a.jpg", smear(0))), ("files", ("b.jpg", smear(9)))]).json()
        request = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                               "data": [base64.b64encode(smear(20)).decode()]}]}
        assert client.post("/v2/models/leukolab-referring/infer", json=request).status_code == 200
        store = ReviewStore(keeping)
        first = store.cases()[0]
        store.record_review(first.hash, "Pre", "Dr A")
        text = client.get("/metrics").text
    assert single["decision"] == "refer" and [p["decision"] for p in batch["predictions"]] == ["refer"] * 2
    cases = store.cases()
    assert len(cases) == 3 and [c.times_seen for c in cases] == [2, 1, 1]
    assert {c.image_path.read_bytes() for c in cases} == {smear(0), smear(9), smear(20)}
    assert first.answer.reason == "low_confidence" and first.answer.predicted_class == single["predicted_class"]
    assert first.answer.probabilities == pytest.approx(single["probabilities"])
    assert (first.answer.model_name, first.source) == ("leukolab-referring", "api") and first.answer.model_version
    kept = samples(text, "leukolab_review_kept_total")
    assert kept[(("outcome", "kept"),)] == 3 and kept[(("outcome", "seen_again"),)] == 1
    assert samples(text, "leukolab_review_backlog") == {(): 2.0}


def test_nothing_is_kept_when_not_asked_or_accepted(referring_model, model_env, keeping, monkeypatch):
    with TestClient(create_app(model_env["uri"], SETTINGS)) as accepting:  # no threshold: every answer accepted
        assert accepting.post("/predict", files={"file": ("a.jpg", smear(1))}).json()["decision"] == "accept"
    monkeypatch.delenv("LEUKOLAB_KEEP_REFERRED")
    with TestClient(create_app(referring_model["uri"], SETTINGS)) as off:
        assert off.post("/predict", files={"file": ("a.jpg", smear(2))}).json()["decision"] == "refer"
        text = off.get("/metrics").text
    assert set(samples(text, "leukolab_review_kept_total").values()) == {0.0}
    assert samples(text, "leukolab_review_backlog") == {(): 0.0}
    assert ReviewStore(keeping).cases() == []


def test_leukolab_predict_keeps_referred_files_when_asked(referring_model, model_env, keeping, monkeypatch, tmp_path, capsys):
    from leukolab.cli import main

    monkeypatch.delenv("LEUKOLAB_KEEP_REFERRED")
    folder = tmp_path / "images"
    folder.mkdir()
    for shade in (3, 4):
        (folder / f"{shade}.jpg").write_bytes(smear(shade))
    (folder / "broken.png").write_bytes(b"not an image")
    assert main(["predict", str(folder), "--model-uri", referring_model["uri"], "--out", str(tmp_path / "out.csv"),
                 "--keep-referred"]) == 0
    assert "2 referred image(s) kept for review" in capsys.readouterr().err
    cases = ReviewStore(keeping).cases()
    assert sorted(c.image_path.read_bytes() for c in cases) == sorted([smear(3), smear(4)])
    assert {(c.source, c.answer.model_name, c.answer.reason) for c in cases} == {("predict", "leukolab-referring",
                                                                                   "low_confidence")}
