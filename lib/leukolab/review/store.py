"""The review store: referred images kept for a haematologist, with the model's answer, and the reviews made of them.

A folder (``$LEUKOLAB_REVIEW_DIR``, default ``<workspace>/review``) holding ``images/<hash[:2]>/<hash>.<ext>``
(each image once, named by the SHA-256 of its bytes) and ``index.sqlite`` (tables ``cases``, ``reviews``,
``dropped`` and ``retrains``). It holds patient images: keep it on storage meant for them.

Crash safety: an image is written to a temporary file, flushed to disk and renamed into place before its row is
committed (SQLite in WAL mode), so an indexed case always has its whole image; a crash between the two leaves at
most an unindexed file, which the next bound check removes. A review is committed, and flushed to disk, as it is
made. (A power loss may roll back the last kept cases' rows, never a review.)

The size bound (``max_bytes`` of images, ``$LEUKOLAB_REVIEW_MAX_BYTES``, default 2 GiB) drops the oldest cases
that have no review to make room (reviewed cases are labelled data and stay); each drop is recorded in ``dropped``
and returned to the caller. A case that cannot fit even then is not kept, and is recorded there too. The store
logs counts only, never hashes, paths or answers. With a tracking server, :mod:`leukolab.review.remote` keeps a copy
of the store there, shared by several machines.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import json
import logging
import os
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path

from leukolab.config import workspace_path
from leukolab.disk import write_whole

log = logging.getLogger(__name__)

UNUSABLE = "unusable"
"""The review label of an image no class can be given to (out of focus, not a smear, ...)."""
DEFAULT_MAX_BYTES = 2 * 1024**3
SCHEMA = """
CREATE TABLE IF NOT EXISTS cases (
    hash TEXT PRIMARY KEY, image TEXT NOT NULL, bytes INTEGER NOT NULL, kept_at TEXT NOT NULL, last_seen TEXT NOT NULL,
    times_seen INTEGER NOT NULL, source TEXT NOT NULL, decision TEXT NOT NULL, reason TEXT NOT NULL,
    predicted_class TEXT, confidence REAL, probabilities TEXT, model_name TEXT, model_version TEXT);
CREATE TABLE IF NOT EXISTS reviews (
    id INTEGER PRIMARY KEY AUTOINCREMENT, hash TEXT NOT NULL REFERENCES cases(hash), label TEXT NOT NULL,
    reviewer TEXT NOT NULL, note TEXT NOT NULL DEFAULT '', reviewed_at TEXT NOT NULL, origin TEXT NOT NULL DEFAULT 'widget');
CREATE INDEX IF NOT EXISTS reviews_by_case ON reviews(hash);
CREATE TABLE IF NOT EXISTS dropped (hash TEXT NOT NULL, bytes INTEGER NOT NULL, dropped_at TEXT NOT NULL, why TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS retrains (
    id INTEGER PRIMARY KEY AUTOINCREMENT, started TEXT NOT NULL, review_ids TEXT NOT NULL, snapshot TEXT NOT NULL,
    run_id TEXT, outcome TEXT);
"""


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def default_review_dir() -> Path:
    """``$LEUKOLAB_REVIEW_DIR``, else ``<workspace>/review``."""
    return workspace_path(os.environ.get("LEUKOLAB_REVIEW_DIR") or "review")


@dataclass(frozen=True)
class Answer:
    """What the model said about a referred image: the decision (``refer``), its reason (``low_confidence``,
    ``out_of_distribution``, ...), class, confidence and probabilities, and the model that said it."""

    decision: str
    reason: str
    predicted_class: str | None = None
    confidence: float | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    model_name: str | None = None
    model_version: str | None = None


@dataclass(frozen=True)
class Kept:
    """What :meth:`ReviewStore.keep` did: ``kept`` (a new case), ``seen_again`` (its image was kept before) or
    ``not_kept`` (over the bound); the hashes of the cases dropped to make room."""

    outcome: str
    hash: str
    dropped: list[str]


@dataclass(frozen=True)
class Case:
    """A kept case: its image's hash and path, the answer, when it was kept, how often it was referred, and its latest
    review (label, reviewer, note) if any."""

    hash: str
    image_path: Path
    answer: Answer
    kept_at: str
    times_seen: int
    source: str
    review: dict | None = None


class ReviewStore:
    """The folder and its index (see the module docstring); safe to use from several threads and processes."""

    def __init__(self, folder: str | os.PathLike | None = None, max_bytes: int | None = None):
        self.folder = Path(folder) if folder else default_review_dir()
        self.max_bytes = max_bytes if max_bytes is not None else int(
            os.environ.get("LEUKOLAB_REVIEW_MAX_BYTES") or DEFAULT_MAX_BYTES)
        (self.folder / "images").mkdir(parents=True, exist_ok=True)
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        with self._connect() as db:
            db.executescript(SCHEMA)

    @contextlib.contextmanager
    def _connect(self, durable: bool = False):
        """The store's connection to the index, one thread at a time; ``durable``: commits reach the disk before
        they return (reviews), else they survive a crash of the process but may roll back on a power loss (keeping,
        on the request path: milliseconds faster). One connection for the store's life: opening and closing one per
        operation costs a WAL checkpoint each time."""
        with self._lock:
            if self._db is None:
                self._db = sqlite3.connect(self.folder / "index.sqlite", timeout=30, isolation_level=None,
                                           check_same_thread=False)
                self._db.row_factory = sqlite3.Row
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            yield self._db

    # ------------------------------------------------------------------ keeping

    def keep(self, image: bytes, answer: Answer, source: str, kept_at: str | None = None) -> Kept:
        """Keep ``image`` with ``answer`` (``source``: ``api``, ``predict``, ...), once per distinct image; ``kept_at``:
        when it was first kept (a case pulled from another store), default now."""
        digest = hashlib.sha256(image).hexdigest()
        stamp = now()
        with self._connect() as db:
            seen = db.execute("UPDATE cases SET last_seen = ?, times_seen = times_seen + 1 WHERE hash = ?",
                              (stamp, digest)).rowcount
        if seen:
            return Kept("seen_again", digest, [])
        dropped = self._make_room(len(image))
        if dropped is None:
            with self._connect() as db:
                db.execute("INSERT INTO dropped VALUES (?, ?, ?, ?)", (digest, len(image), stamp, "not_kept: over the bound"))
            log.warning("review store %s is full of reviewed or pending cases: a referred image was not kept", self.folder)
            return Kept("not_kept", digest, [])
        relative = f"images/{digest[:2]}/{digest}{_suffix(image)}"
        write_whole(self.folder / relative, image)
        with self._connect() as db:
            db.execute("INSERT OR IGNORE INTO cases VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", (
                digest, relative, len(image), kept_at or stamp, stamp, 1, source, answer.decision, answer.reason,
                answer.predicted_class, answer.confidence, json.dumps(answer.probabilities), answer.model_name,
                answer.model_version))
        if dropped:
            log.info("review store %s: %d unreviewed case(s) dropped to stay under %d bytes", self.folder, len(dropped),
                     self.max_bytes)
        return Kept("kept", digest, dropped)

    def _make_room(self, size: int) -> list[str] | None:
        """Drop the oldest unreviewed cases until ``size`` more bytes fit; their hashes, or None when they cannot."""
        with self._connect() as db:
            used = db.execute("SELECT COALESCE(SUM(bytes), 0) FROM cases").fetchone()[0]
            if used + size <= self.max_bytes:
                return []
            self._remove_unindexed(db)
            candidates = db.execute("SELECT hash, image, bytes FROM cases WHERE hash NOT IN (SELECT hash FROM reviews) "
                                    "ORDER BY kept_at, rowid").fetchall()
            chosen, freed = [], 0
            for row in candidates:
                if used - freed + size <= self.max_bytes:
                    break
                chosen.append(row)
                freed += row["bytes"]
            if used - freed + size > self.max_bytes:
                return None
            stamp = now()
            with db:  # one transaction: committed whole, or rolled back on an error
                db.execute("BEGIN IMMEDIATE")
                for row in chosen:
                    db.execute("DELETE FROM cases WHERE hash = ?", (row["hash"],))
                    db.execute("INSERT INTO dropped VALUES (?, ?, ?, ?)",
                               (row["hash"], row["bytes"], stamp, "dropped: oldest unreviewed, to stay under the bound"))
        for row in chosen:
            (self.folder / row["image"]).unlink(missing_ok=True)
        return [row["hash"] for row in chosen]

    def _remove_unindexed(self, db: sqlite3.Connection) -> None:
        """Image files without a row (a crash between writing and indexing), older than a minute, are removed."""
        indexed = {row[0] for row in db.execute("SELECT image FROM cases")}
        cutoff = dt.datetime.now().timestamp() - 60
        for path in (self.folder / "images").glob("*/*"):
            relative = path.relative_to(self.folder).as_posix()
            if relative not in indexed and path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ reading

    def cases(self, pending_only: bool = False) -> list[Case]:
        """Every kept case (oldest first) with its latest review; ``pending_only``: those without a review."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM cases ORDER BY kept_at, rowid").fetchall()
            latest = {row["hash"]: dict(row) for row in db.execute("SELECT * FROM reviews ORDER BY reviewed_at, id")}
        found = [self._case(row, latest.get(row["hash"])) for row in rows]
        return [case for case in found if case.review is None] if pending_only else found

    def case(self, digest: str) -> Case:
        with self._connect() as db:
            row = db.execute("SELECT * FROM cases WHERE hash = ?", (digest,)).fetchone()
            review = db.execute("SELECT * FROM reviews WHERE hash = ? ORDER BY reviewed_at DESC, id DESC LIMIT 1",
                                (digest,)).fetchone()
        if row is None:
            raise KeyError(f"no kept case {digest[:12]}")
        return self._case(row, dict(review) if review else None)

    def _case(self, row: sqlite3.Row, review: dict | None) -> Case:
        answer = Answer(row["decision"], row["reason"], row["predicted_class"], row["confidence"],
                        json.loads(row["probabilities"] or "{}"), row["model_name"], row["model_version"])
        return Case(row["hash"], self.folder / row["image"], answer, row["kept_at"], row["times_seen"], row["source"],
                    review)

    def backlog(self) -> int:
        """Kept cases without a review."""
        with self._connect() as db:
            return db.execute("SELECT COUNT(*) FROM cases WHERE hash NOT IN (SELECT hash FROM reviews)").fetchone()[0]

    def dropped(self) -> list[dict]:
        """What the bound dropped or refused: hash, bytes, when, why."""
        with self._connect() as db:
            return [dict(row) for row in db.execute("SELECT * FROM dropped ORDER BY rowid")]

    # ------------------------------------------------------------------ reviews

    def record_review(self, digest: str, label: str, reviewer: str, note: str = "", origin: str = "widget",
                      reviewed_at: str | None = None) -> int:
        """Save a review of case ``digest`` at once (a later review of the same case replaces it); its id."""
        if not label or not reviewer.strip():
            raise ValueError("a review needs a label (a class, or 'unusable') and the reviewer's name")
        with self._connect(durable=True) as db:
            if db.execute("SELECT 1 FROM cases WHERE hash = ?", (digest,)).fetchone() is None:
                raise KeyError(f"no kept case {digest[:12]}")
            cursor = db.execute("INSERT INTO reviews (hash, label, reviewer, note, reviewed_at, origin) VALUES (?,?,?,?,?,?)",
                                (digest, label, reviewer.strip(), note, reviewed_at or now(), origin))
            return cursor.lastrowid

    def latest_reviews(self) -> list[dict]:
        """The latest review (by ``reviewed_at``, reviews pulled from another store included) of every reviewed case
        (id, hash, label, reviewer, note, reviewed_at, origin), by id."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM reviews AS r WHERE id = (SELECT id FROM reviews WHERE hash = r.hash "
                              "ORDER BY reviewed_at DESC, id DESC LIMIT 1) ORDER BY id")
            return [dict(row) for row in rows]

    def reviews(self) -> list[dict]:
        """Every review made, the replaced ones included, by id."""
        with self._connect() as db:
            return [dict(row) for row in db.execute("SELECT * FROM reviews ORDER BY id")]

    # ------------------------------------------------------------------ retrains

    def last_retrain_reviews(self) -> set[int]:
        """The review ids the last finished retrain's dataset took."""
        with self._connect() as db:
            row = db.execute("SELECT review_ids FROM retrains WHERE outcome IS NOT NULL AND outcome != 'failed' "
                             "ORDER BY id DESC LIMIT 1").fetchone()
        return set(json.loads(row[0])) if row else set()

    def record_retrain(self, review_ids: list[int], snapshot: str, run_id: str | None, outcome: str | None) -> None:
        with self._connect(durable=True) as db:
            db.execute("INSERT INTO retrains (started, review_ids, snapshot, run_id, outcome) VALUES (?,?,?,?,?)",
                       (now(), json.dumps(sorted(review_ids)), snapshot, run_id, outcome))


def _suffix(image: bytes) -> str:
    """The file extension of the image's format (``.jpg``, ``.png``, ...), ``.img`` when PIL cannot tell."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(image)) as opened:
            kind = (opened.format or "").lower()
    except (UnidentifiedImageError, OSError):
        return ".img"
    return {"jpeg": ".jpg", "tiff": ".tif"}.get(kind, f".{kind}" if kind else ".img")

