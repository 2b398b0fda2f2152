"""The review store's copy on a tracking server, so that kept cases and reviews travel between machines.

When the tracking URI is a server (``http://``, ``https://``), the local store (folder + SQLite) stays the working
copy, and its cases and reviews are also the artifacts of one MLflow run, ``review-store`` (tag
``leukolab.review_store``) in the experiment ``leukolab-review``, on the server's artifact store:

    images/<sha256>.<ext>  each image once, as it was sent
    cases/<sha256>.json    the model's answer, the source and when it was first kept
    reviews/<id>.json      one review (case, label, reviewer, note, time, origin); ``id`` is the SHA-256 of those

:meth:`RemoteReviews.push` logs what the local store has and the run lacks; :meth:`RemoteReviews.pull` adds what the
run has and the local store lacks; :meth:`RemoteReviews.sync` does both. Every name is a content hash, so a
repeated push writes nothing new and a repeated pull adds nothing. Crash-safe: an image is logged before its case
file and a case is pulled only when both are there (the next push finishes one cut short); a pulled image must have
the hash it is named by; a review is added only to a case the store holds. Pulled cases go through the store's size
bound; an unreviewed case the bound dropped here is not pulled again. Only counts are logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from leukolab.review.store import Answer, Case, ReviewStore
from leukolab.tracking import bound_retries, is_remote, tracking_uri

log = logging.getLogger(__name__)

EXPERIMENT = "leukolab-review"
STORE_TAG = "leukolab.review_store"
REVIEW_FIELDS = ("hash", "label", "reviewer", "note", "reviewed_at", "origin")


def review_id(review: dict) -> str:
    """The SHA-256 of a review's fields: the same review has the same id in every store."""
    return hashlib.sha256(json.dumps([review[k] for k in REVIEW_FIELDS]).encode()).hexdigest()


@dataclass(frozen=True)
class Synced:
    """What a sync moved: cases and reviews pushed and pulled; pulled cases the size bound did not keep."""

    pushed_cases: int = 0
    pushed_reviews: int = 0
    pulled_cases: int = 0
    pulled_reviews: int = 0
    not_kept: int = 0

    def __str__(self) -> str:
        return (f"pushed {self.pushed_cases} case(s) and {self.pushed_reviews} review(s), pulled {self.pulled_cases} "
                f"case(s) and {self.pulled_reviews} review(s)" + (f"; {self.not_kept} over the store's bound, not kept"
                                                                   if self.not_kept else ""))


class RemoteReviews:
    """The ``review-store`` run of the tracking server at ``uri``, in ``experiment``."""

    def __init__(self, uri: str, experiment: str = EXPERIMENT):
        bound_retries()
        self.uri, self.experiment = uri, experiment
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    def _runs(self) -> list[str]:
        """The store's run ids, oldest first (two created at once both count; pushes go to the oldest); one is
        created when there is none."""
        experiment = self.client.get_experiment_by_name(self.experiment)
        if experiment is None:
            try:
                self.client.create_experiment(self.experiment)
            except MlflowException:  # created meanwhile by another machine
                pass
            experiment = self.client.get_experiment_by_name(self.experiment)
        found = self.client.search_runs([experiment.experiment_id], f"tags.`{STORE_TAG}` = 'true'",
                                        order_by=["attributes.start_time ASC"])
        if found:
            return [run.info.run_id for run in found]
        run = self.client.create_run(experiment.experiment_id, run_name="review-store", tags={STORE_TAG: "true"})
        self.client.update_run(run.info.run_id, status="FINISHED")  # set_terminated would print its URL on stdout
        return [run.info.run_id]

    def _listing(self, runs: list[str]) -> dict[str, dict[str, tuple[str, str]]]:
        """``{"images"|"cases"|"reviews": {hash or id: (run id, artifact path)}}`` over ``runs``."""
        found = {folder: {} for folder in ("images", "cases", "reviews")}
        for run_id in runs:
            for folder, entries in found.items():
                for item in self.client.list_artifacts(run_id, folder):
                    entries.setdefault(PurePosixPath(item.path).name.split(".")[0], (run_id, item.path))
        return found

    def push(self, store: ReviewStore) -> Synced:
        """Log the store's cases and reviews that the run lacks."""
        runs = self._runs()
        remote = self._listing(runs)
        cases = [case for case in store.cases() if case.hash not in remote["cases"]]
        reviews = [review for review in store.reviews() if review_id(review) not in remote["reviews"]]
        with tempfile.TemporaryDirectory(prefix="leukolab-review-") as scratch:
            for case in cases:
                if case.hash not in remote["images"]:
                    self.client.log_artifact(runs[0], str(case.image_path), "images")
            _log_folder(self.client, runs[0], Path(scratch) / "cases", {case.hash: _case_file(case) for case in cases})
            _log_folder(self.client, runs[0], Path(scratch) / "reviews",
                        {review_id(review): {k: review[k] for k in REVIEW_FIELDS} for review in reviews})
        return Synced(pushed_cases=len(cases), pushed_reviews=len(reviews))

    def pull(self, store: ReviewStore) -> Synced:
        """Add the run's cases and reviews that the store lacks (a file that cannot be read as one is skipped)."""
        remote = self._listing(self._runs())
        known = {review_id(review) for review in store.reviews()}
        with tempfile.TemporaryDirectory(prefix="leukolab-review-") as scratch:
            reviews = [self._review(where, scratch) for key, where in remote["reviews"].items() if key not in known]
            reviews = [review for review in reviews if review]
            dropped = {row["hash"] for row in store.dropped()} - {review["hash"] for review in reviews}
            wanted = set(remote["cases"]) & set(remote["images"]) - {case.hash for case in store.cases()} - dropped
            outcomes = [self._pull_case(store, remote, digest, scratch) for digest in sorted(wanted)]
            have, added = {case.hash for case in store.cases()}, 0
            for review in sorted(reviews, key=lambda r: r["reviewed_at"]):
                if review["hash"] in have:
                    store.record_review(review["hash"], review["label"], review["reviewer"], review["note"],
                                        review["origin"], review["reviewed_at"])
                    added += 1
        return Synced(pulled_cases=outcomes.count("kept"), pulled_reviews=added, not_kept=outcomes.count("not_kept"))

    def _pull_case(self, store: ReviewStore, remote: dict, digest: str, scratch: str) -> str:
        """Keep case ``digest`` of the run in ``store``: the store's outcome, or ``unreadable``."""
        image = self._read(remote["images"][digest], scratch)
        try:
            case = json.loads(self._read(remote["cases"][digest], scratch))
            answer = Answer(**case["answer"])
            if hashlib.sha256(image).hexdigest() != digest:
                raise ValueError("the image is not what its name says")
            return store.keep(image, answer, case["source"], kept_at=case["kept_at"]).outcome
        except (ValueError, KeyError, TypeError):
            log.warning("review store copy on %s: a case file or image cannot be used; not pulled", self.uri)
            return "unreadable"

    def _review(self, where: tuple[str, str], scratch: str) -> dict | None:
        """A review file of the run, None when it is not one."""
        try:
            review = json.loads(self._read(where, scratch))
            usable = isinstance(review, dict) and set(REVIEW_FIELDS) <= set(review) and review["label"] and review["reviewer"]
            return review if usable else None
        except (ValueError, TypeError):
            log.warning("review store copy on %s: a review file cannot be used; not pulled", self.uri)
            return None

    def sync(self, store: ReviewStore) -> Synced:
        """:meth:`push`, then :meth:`pull`."""
        pushed, pulled = self.push(store), self.pull(store)
        log.info("review store %s and its copy on %s: %s", store.folder, self.uri, f"{pushed.pushed_cases} case(s) and "
                 f"{pushed.pushed_reviews} review(s) pushed, {pulled.pulled_cases} and {pulled.pulled_reviews} pulled")
        return Synced(pushed.pushed_cases, pushed.pushed_reviews, pulled.pulled_cases, pulled.pulled_reviews,
                      pulled.not_kept)

    def _read(self, where: tuple[str, str], scratch: str) -> bytes:
        run_id, path = where
        return Path(self.client.download_artifacts(run_id, path, tempfile.mkdtemp(dir=scratch))).read_bytes()


def remote_reviews() -> RemoteReviews | None:
    """The store's copy on the tracking server when the tracking URI is one, else None."""
    uri = tracking_uri()
    return RemoteReviews(uri) if is_remote(uri) else None


class SyncFailed(RuntimeError):
    """The tracking server did not take or give the store's copy; the message names it."""


def sync_with_server(store: ReviewStore) -> str | None:
    """Sync ``store`` with its copy when the tracking URI is a server: what moved, in words; None without a server.
    Raises :class:`SyncFailed` when the server fails."""
    remote = remote_reviews()
    if remote is None:
        return None
    try:
        synced = remote.sync(store)
    except (MlflowException, OSError) as error:
        raise SyncFailed(f"the review store's copy on {remote.uri} failed: {type(error).__name__}: "
                         f"{str(error)[:500]}") from error
    return f"review store {store.folder} and its copy on {remote.uri}: {synced}"


def _case_file(case: Case) -> dict:
    return {"answer": asdict(case.answer), "source": case.source, "kept_at": case.kept_at}


def _log_folder(client: MlflowClient, run_id: str, folder: Path, files: dict[str, dict]) -> None:
    """``files`` (name: JSON) written to ``folder`` and logged under its name in the run, if there are any."""
    if not files:
        return
    folder.mkdir()
    for name, content in files.items():
        (folder / f"{name}.json").write_text(json.dumps(content, sort_keys=True))
    client.log_artifacts(run_id, str(folder), folder.name)


class BackgroundPush:
    """Pushes a store to its copy in a daemon thread whenever woken, at once on start (what a crash left unpushed),
    and again every ``retry_seconds`` while pushes fail, so that keeping a case or saving a review never waits for the
    tracking server. Many wake-ups while a push runs make one more push."""

    def __init__(self, store: ReviewStore, remote: RemoteReviews, retry_seconds: float = 60.0):
        self.store, self.remote, self.retry_seconds = store, remote, retry_seconds
        self.failures = 0
        self._wake = threading.Event()
        self._wake.set()
        threading.Thread(target=self._loop, name="review-push", daemon=True).start()

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        behind = False
        while True:
            self._wake.wait(self.retry_seconds if behind else None)
            self._wake.clear()
            try:
                self.remote.push(self.store)
                behind = False
            except Exception as error:  # a server away, a full disk there: the next round pushes it
                self.failures += 1
                behind = True
                log.warning("review store %s: the push to %s failed (%s); retried within %.0f s", self.store.folder,
                            self.remote.uri, type(error).__name__, self.retry_seconds)
