"""Keeping referred cases: every answer whose decision is ``refer``, whatever its reason, goes to the review store
when ``LEUKOLAB_KEEP_REFERRED=1`` (the API) or ``leukolab predict --keep-referred`` asks for it. Off by default.

:class:`ReferredKeeper` is the API's: it keeps in a worker thread, counts what it kept and dropped, and exposes the
review backlog to Prometheus. A failure to keep is logged (without the case) and counted, never a failed answer.
With a tracking server, kept cases also go to the store's copy there (:mod:`leukolab.review.remote`): pushed in
the background by the API, at the end by ``leukolab predict``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from mlflow.exceptions import MlflowException
from prometheus_client import CollectorRegistry, Counter, Gauge

from leukolab.predictor.decision import REFER
from leukolab.review.remote import BackgroundPush, remote_reviews
from leukolab.review.store import Answer, Kept, ReviewStore

log = logging.getLogger(__name__)

KEEP_ENV = "LEUKOLAB_KEEP_REFERRED"
LOW_CONFIDENCE = "low_confidence"
"""The reason of a referral whose answer names none: before out-of-distribution referral, the only rule."""
KEEP_OUTCOMES = ("kept", "seen_again", "not_kept", "failed")


def keeping_enabled(environ: dict[str, str] | None = None) -> bool:
    """Whether ``LEUKOLAB_KEEP_REFERRED`` asks for referred cases to be kept (1, true, yes, on)."""
    value = (os.environ if environ is None else environ).get(KEEP_ENV, "")
    return value.strip().lower() in ("1", "true", "yes", "on")


def referral(answer: dict, model_name: str | None, model_version: str | None) -> Answer | None:
    """The :class:`Answer` of a referred prediction (an API answer's JSON, or a ``leukolab predict`` row with
    ``p_<class>`` columns); None when it was accepted."""
    if answer.get("decision") != REFER:
        return None
    probabilities = answer.get("probabilities") or {
        key[2:]: float(value) for key, value in answer.items() if key.startswith("p_") and value == value}
    confidence = answer.get("confidence")
    reason = next((r for r in (answer.get("referral_reason"), answer.get("reason")) if isinstance(r, str) and r),
                  LOW_CONFIDENCE)
    return Answer(REFER, reason,
                  answer.get("predicted_class"), None if confidence is None else float(confidence),
                  {name: float(p) for name, p in probabilities.items()}, model_name, model_version)


class ReviewMetrics:
    """``leukolab_review_kept_total{outcome}``, ``leukolab_review_dropped_total`` and the gauge
    ``leukolab_review_backlog`` (read from the followed store at each scrape; 0 while keeping is off)."""

    def __init__(self, registry: CollectorRegistry):
        self.store: ReviewStore | None = None
        self.kept = Counter("leukolab_review_kept", "Referred images handed to the review store, by outcome: kept (new), "
                            "seen_again (kept before), not_kept (over the size bound), failed", ["outcome"],
                            registry=registry)
        for outcome in KEEP_OUTCOMES:
            self.kept.labels(outcome=outcome)
        self.dropped = Counter("leukolab_review_dropped", "Unreviewed kept cases the size bound dropped to make room",
                               registry=registry)
        self.backlog = Gauge("leukolab_review_backlog", "Kept cases waiting for a review", registry=registry)
        self.backlog.set_function(self._backlog)

    def _backlog(self) -> float:
        if self.store is None:
            return 0.0
        try:
            return float(self.store.backlog())
        except Exception:  # a store that cannot be read must not break /metrics
            return float("nan")


class ReferredKeeper:
    """The API's keeper: :meth:`keep` each referred answer's upload in ``store``, counted in ``metrics``."""

    def __init__(self, store: ReviewStore, metrics: ReviewMetrics, push: BackgroundPush | None = None):
        self.store, self.metrics, self.push = store, metrics, push
        metrics.store = store

    def keep(self, uploads: list[tuple[str, bytes]], answers: list[dict], model_name: str | None,
             model_version: str | None) -> list[Kept]:
        """Keep the upload of every referred answer (``answers`` in upload order); run it in a worker thread."""
        done = []
        for (_, image), answer in zip(uploads, answers):
            referred = referral(answer, model_name, model_version)
            if referred is None:
                continue
            try:
                kept = self.store.keep(image, referred, source="api")
            except Exception as error:
                self.metrics.kept.labels(outcome="failed").inc()
                log.error("could not keep a referred case in the review store (%s)", type(error).__name__)
                continue
            self.metrics.kept.labels(outcome=kept.outcome).inc()
            self.metrics.dropped.inc(len(kept.dropped))
            done.append(kept)
        if self.push and any(kept.outcome == "kept" for kept in done):
            self.push.wake()
        return done


def keeper_from_env(registry: CollectorRegistry) -> ReferredKeeper | None:
    """The review metrics on ``registry`` (always, zero while keeping is off), and a :class:`ReferredKeeper` on the
    default store (pushing to its copy on the tracking server, if there is one) when ``LEUKOLAB_KEEP_REFERRED`` asks
    for one, else None."""
    metrics = ReviewMetrics(registry)
    if not keeping_enabled():
        return None
    store, remote = ReviewStore(), remote_reviews()
    return ReferredKeeper(store, metrics, BackgroundPush(store, remote) if remote else None)


def keep_scored_rows(rows: list[dict], model_name: str | None, model_version: str | None,
                     store: ReviewStore | None = None) -> list[Kept]:
    """Keep the file of every referred row of ``leukolab predict`` (its ``path`` column) in ``store``; with a tracking
    server, push the store to its copy there (when that fails, the cases are kept here and the next push, or
    ``leukolab review sync``, takes them)."""
    store = store or ReviewStore()
    done = []
    for row in rows:
        referred = referral(row, model_name, model_version)
        if referred is not None:
            done.append(store.keep(Path(row["path"]).read_bytes(), referred, source="predict"))
    remote = remote_reviews()
    if remote and done:
        try:
            remote.push(store)
        except (MlflowException, OSError) as error:
            log.warning("kept cases stay in %s: the push to %s failed (%s); `leukolab review sync` pushes them",
                        store.folder, remote.uri, type(error).__name__)
    return done
