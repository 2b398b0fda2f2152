"""The review store's copy on a real ``mlflow server`` (127.0.0.1): cases kept on one machine (workspace A, by the
API and by ``leukolab predict``) are pulled on another (B), reviewed there through the review page's widgets, and
``leukolab retrain`` on a third (C) reads the reviews and their images. A push or pull repeated moves nothing; a push
cut short is finished by the next and never half pulled; a pulled image must match its hash; a pull keeps to the
store's bound; a server that does not answer fails the sync naming it; nothing reaches stdout."""

from __future__ import annotations

import csv
import hashlib
import io
import time
import uuid

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from conftest import _logged_model, leukolab
from leukolab.review.remote import BackgroundPush, RemoteReviews
from leukolab.review.store import Answer, ReviewStore

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
CLASSES = ["Benign", "Early", "Pre", "Pro"]


def smear(shade: int) -> bytes:
    image = Image.new("RGB", (64, 64), (200, 100 + shade, 160))
    image.paste((60, 20, 90), (16, 16, 48, 48))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def answer(predicted: str = "Pre") -> Answer:
    return Answer("refer", "low_confidence", predicted, 0.4, {"Benign": 0.1, "Early": 0.2, "Pre": 0.4, "Pro": 0.3},
                  "leukolab", "3")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from leukolab.tracking_server import start_tracking_server

    with start_tracking_server(tmp_path_factory.mktemp("review-server")) as started:
        yield started


@pytest.fixture
def remote(server) -> RemoteReviews:
    """The store's copy in an experiment of this test's own on the shared server."""
    return RemoteReviews(server.url, experiment=f"review-{uuid.uuid4().hex[:8]}")


def listed(remote: RemoteReviews, folder: str) -> list[str]:
    return [item.path for run in remote._runs() for item in remote.client.list_artifacts(run, folder)]


def test_cases_kept_on_one_machine_are_pulled_on_another_whole_and_once(remote, tmp_path, capfd):
    here, there = ReviewStore(tmp_path / "A"), ReviewStore(tmp_path / "B")
    for shade in (1, 2, 1):
        here.keep(smear(shade), answer(), "api")
    assert (remote.push(here).pushed_cases, remote.pull(there).pulled_cases) == (2, 2)
    assert [(c.hash, c.answer, c.kept_at, c.source) for c in there.cases()] == \
        [(c.hash, c.answer, c.kept_at, c.source) for c in here.cases()]
    assert [c.image_path.read_bytes() for c in there.cases()] == [c.image_path.read_bytes() for c in here.cases()]
    again = remote.sync(here), remote.sync(there)
    assert [(s.pushed_cases, s.pulled_cases, s.pushed_reviews, s.pulled_reviews) for s in again] == [(0, 0, 0, 0)] * 2
    assert len(listed(remote, "images")) == len(listed(remote, "cases")) == 2
    assert capfd.readouterr().out == "", "a sync must print nothing"


def test_reviews_travel_both_ways_and_the_latest_wins(remote, tmp_path):
    here, there = ReviewStore(tmp_path / "A"), ReviewStore(tmp_path / "B")
    first, second = (here.keep(smear(shade), answer(), "api").hash for shade in (3, 4))
    remote.push(here)
    remote.pull(there)
    there.record_review(first, "Pre", "Dr B", "blasts")
    there.record_review(second, "Benign", "Dr B")
    remote.push(there)
    time.sleep(0.01)
    here.record_review(first, "Early", "Dr A", "second opinion")  # later than Dr B's: it wins on both machines
    synced = remote.sync(here)
    assert (synced.pushed_reviews, synced.pulled_reviews) == (1, 2)
    assert remote.pull(there).pulled_reviews == 1
    for store in (here, there):
        latest = {review["hash"]: (review["label"], review["reviewer"]) for review in store.latest_reviews()}
        assert latest == {first: ("Early", "Dr A"), second: ("Benign", "Dr B")}
        assert len(store.reviews()) == 3
    assert len(listed(remote, "reviews")) == 3


def test_a_push_cut_short_is_finished_by_the_next_and_never_half_pulled(remote, tmp_path):
    here, there = ReviewStore(tmp_path / "A"), ReviewStore(tmp_path / "B")
    case = here.case(here.keep(smear(5), answer(), "api").hash)
    run = remote._runs()[0]
    remote.client.log_artifact(run, str(case.image_path), "images")  # a push stopped after the image
    assert remote.pull(there).pulled_cases == 0 and there.cases() == []
    assert remote.push(here).pushed_cases == 1 and len(listed(remote, "images")) == 1
    assert remote.pull(there).pulled_cases == 1
    # an image that is not what its name says is not pulled
    forged = tmp_path / "forged"
    forged.mkdir()
    fake = hashlib.sha256(b"another image").hexdigest()
    (forged / f"{fake}.png").write_bytes(smear(6))
    (forged / f"{fake}.json").write_text('{"answer": {"decision": "refer", "reason": "low_confidence"}, '
                                         '"source": "api", "kept_at": "2026-01-01T00:00:00.000+00:00"}')
    remote.client.log_artifact(run, str(forged / f"{fake}.png"), "images")
    remote.client.log_artifact(run, str(forged / f"{fake}.json"), "cases")
    (forged / "reviews").mkdir()
    (forged / "reviews" / f"{fake}.json").write_text('{"label": "Pre"}')  # not a review: no case, no reviewer
    remote.client.log_artifacts(run, str(forged / "reviews"), "reviews")
    synced = remote.pull(there)
    assert (synced.pulled_cases, synced.pulled_reviews) == (0, 0) and len(there.cases()) == 1 and not there.reviews()


def test_a_pull_keeps_to_the_bound_and_brings_back_only_reviewed_cases(remote, tmp_path):
    here = ReviewStore(tmp_path / "A")
    hashes = [here.keep(smear(10 + shade), answer(), "api").hash for shade in range(4)]
    remote.push(here)
    size = max(len(smear(10 + shade)) for shade in range(4))
    there = ReviewStore(tmp_path / "B", max_bytes=2 * size)
    remote.pull(there)
    assert len(there.cases()) == 2 and len(there.dropped()) == 2
    assert remote.pull(there).pulled_cases == 0, "a case the bound dropped is pulled again"
    dropped = there.dropped()[0]["hash"]
    here.record_review(dropped, "Pro", "Dr A")
    remote.push(here)
    synced = remote.pull(there)
    assert (synced.pulled_cases, synced.pulled_reviews) == (1, 1)
    assert {c.hash for c in there.cases() if c.review} == {dropped} and set(hashes) >= {c.hash for c in there.cases()}


def test_a_server_that_does_not_answer_fails_the_sync_naming_it_and_the_background_push_retries(tmp_path, monkeypatch):
    from leukolab.processes.background import free_port

    url = f"http://127.0.0.1:{free_port('127.0.0.1')}"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    store = ReviewStore(tmp_path / "A")
    store.keep(smear(7), answer(), "api")
    push = BackgroundPush(store, RemoteReviews(url), retry_seconds=0.2)
    deadline = time.monotonic() + 60
    while push.failures < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert push.failures >= 2, "the background push did not retry"
    push.retry_seconds = 3600  # its thread lives on with the test session: no more tries
    result = leukolab(tmp_path, "review", "--review-dir", str(tmp_path / "A"), "sync", timeout=300,
                      env={"MLFLOW_TRACKING_URI": url, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"})
    assert result.returncode == 1 and url in result.stderr, result.stderr[-2000:]


def wait_for(remote: RemoteReviews, folder: str, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(listed(remote, folder)) < count:
        assert time.monotonic() < deadline, f"{count} {folder} were not pushed in {timeout} s"
        time.sleep(0.5)


def test_kept_on_a_reviewed_on_b_read_by_retrain_on_c(server, tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    from leukolab.predictor.decision import THRESHOLD_TAG
    from leukolab.review.snapshot import write_snapshot
    from leukolab.review_page import build_review
    from leukolab.serving.app import create_app
    from leukolab.serving.settings import ServingSettings

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    monkeypatch.setenv("LEUKOLAB_WORKSPACE", str(tmp_path / "A"))
    model = {"class_names": CLASSES, "example_image": smear(0)}
    logged = _logged_model(model, {"task": "classification", "model": {"architecture": "SimpleCNN", "width": 8}})
    version = mlflow.register_model(logged, "leukolab", tags={THRESHOLD_TAG: "1.0"})  # refers every answer
    MlflowClient(server.url, server.url).set_registered_model_alias("leukolab", "champion", version.version)
    remote = RemoteReviews(server.url)

    # Machine A: the API keeps two referred uploads (pushed in the background), `leukolab predict` one more file.
    monkeypatch.setenv("LEUKOLAB_KEEP_REFERRED", "1")
    monkeypatch.setenv("LEUKOLAB_REVIEW_DIR", str(tmp_path / "A" / "review"))
    with TestClient(create_app("models:/leukolab@champion", ServingSettings(model_poll_seconds=0))) as api:
        for shade in (1, 2, 1):
            assert api.post("/predict", files={"file": ("a.png", smear(shade))}).json()["decision"] == "refer"
        wait_for(remote, "cases", 2)
    monkeypatch.delenv("LEUKOLAB_KEEP_REFERRED")
    monkeypatch.delenv("LEUKOLAB_REVIEW_DIR")  # from here on, each machine's store is in its workspace
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "c.png").write_bytes(smear(3))
    predicted = leukolab(tmp_path / "A2", "predict", str(tmp_path / "files"), "--keep-referred",
                         env={"MLFLOW_TRACKING_URI": server.url})
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert len(listed(remote, "cases")) == 3

    # Machine B: pull, then review through the page's own widgets; each review is pushed as it is saved.
    pulled = leukolab(tmp_path / "B", "review", "sync", env={"MLFLOW_TRACKING_URI": server.url})
    assert pulled.returncode == 0 and "pulled 3 case(s) and 0 review(s)" in pulled.stdout, pulled.stdout + pulled.stderr
    page = build_review(ReviewStore(tmp_path / "B" / "review"), reviewer="Dr B", load=None)
    assert "pulled 0 case(s)" in page.message.value
    for label in ("Pre", "Pro", "unusable"):
        page.label.value = label
        page.save.click()
    assert page.session.saved == 3
    wait_for(remote, "reviews", 3)

    # Machine C: retrain syncs first and counts the reviews that give a class; its snapshot holds their images.
    counted = leukolab(tmp_path / "C", "retrain", "--profile", "smoke", "--min-reviews", "99",
                       env={"MLFLOW_TRACKING_URI": server.url})
    assert counted.returncode == 0, counted.stderr[-2000:]
    assert "pulled 3 case(s) and 3 review(s)" in counted.stdout and "2 new review(s)" in counted.stdout, counted.stdout
    snapshot = write_snapshot(ReviewStore(tmp_path / "C" / "review"))
    rows = list(csv.DictReader((snapshot.folder / "labels.csv").open()))
    assert sorted(row["label"] for row in rows) == ["Pre", "Pro"]
    originals = {hashlib.sha256(smear(shade)).hexdigest(): smear(shade) for shade in (1, 2, 3)}
    for row in rows:
        image = (snapshot.folder / row["file"]).read_bytes()
        assert originals[hashlib.sha256(image).hexdigest()] == image
