"""``leukolab retrain``: the next dataset version from the reviews, trained and gated, when enough new reviews exist.

New reviews are the latest reviews that give a case a class and that the last finished retrain did not take. With
at least ``--min-reviews`` of them, every such review (old and new: each version holds all reviews to date) is
written as a ``labels_csv`` folder (:mod:`leukolab.review.snapshot`) and the profile's pipeline runs with it as
the ETL's extra source (``etl.extra_sources``: reviewed images go to train only), up to ``publish``: the champion
gate decides on val as for any run, and a running API that follows ``@champion`` swaps to a new champion by itself
(``LEUKOLAB_MODEL_POLL_SECONDS``). With fewer, it says so and exits 0, so a schedule (cron, a systemd timer, an
Airflow task) can call it as often as it likes; a second retrain started while one runs exits 0 too. With a
tracking server, the store is synced with its copy there first (:mod:`leukolab.review.remote`), so reviews made on
other machines count; a server that fails the sync fails the retrain (exit 1).
"""

from __future__ import annotations

import argparse
import fcntl
import sys
from contextlib import contextmanager
from pathlib import Path

RETRAIN_UNTIL = "publish"
"""The last stage a retrain runs: serving is the running API's job (hot swap), not a throwaway server's."""


def add_retrain_arguments(parser: argparse.ArgumentParser) -> None:
    """The options after ``--profile``, ``--param`` and ``--pipeline`` (which ``leukolab run`` shares)."""
    parser.add_argument("--min-reviews", type=int, default=1, metavar="N",
                        help="run only when at least N new reviews exist since the last retrain (default: %(default)s)")
    parser.add_argument("--run-id", help="name of the run folder (default: a timestamp)")
    parser.add_argument("--review-dir", help="the review store (default: $LEUKOLAB_REVIEW_DIR or <workspace>/review)")


@contextmanager
def _only_one(folder: Path):
    """Whether this process holds the store's retrain lock (released when the block ends)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "retrain.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def retrain_command(args: argparse.Namespace, overrides: dict) -> int:
    from leukolab.pipeline.interrupts import Terminated
    from leukolab.pipeline.runner import StageFailed, run_pipeline
    from leukolab.review.remote import SyncFailed, sync_with_server
    from leukolab.review.snapshot import usable_reviews, write_snapshot
    from leukolab.review.store import ReviewStore
    from leukolab.stages.records import EvaluationRecord, PublishRecord

    if args.min_reviews < 0:
        print("leukolab retrain: --min-reviews must be 0 or more", file=sys.stderr)
        return 2
    store = ReviewStore(args.review_dir)
    with _only_one(store.folder) as alone:
        if not alone:
            print(f"another retrain holds {store.folder / 'retrain.lock'}: nothing to do")
            return 0
        try:
            said = sync_with_server(store)
        except SyncFailed as error:
            print(f"leukolab retrain: {error}", file=sys.stderr)
            return 1
        if said:
            print(said)
        taken = store.last_retrain_reviews()
        reviews = usable_reviews(store)
        new = [review for review in reviews if review["id"] not in taken]
        if not reviews or len(new) < args.min_reviews:
            print(f"{len(new)} new review(s) since the last retrain, fewer than --min-reviews {args.min_reviews}: "
                  f"nothing to do ({store.backlog()} case(s) wait for a review)")
            return 0
        snapshot = write_snapshot(store)
        print(f"retraining on profile {args.profile} with {len(snapshot.review_ids)} reviewed case(s) in train "
              f"({len(new)} new): {snapshot.folder}")
        try:
            lineage = run_pipeline(args.profile, {**overrides, "etl.extra_sources": [str(snapshot.folder)]}, args.run_id,
                                   pipeline_file=args.pipeline, until=RETRAIN_UNTIL)
        except (ValueError, FileNotFoundError) as error:
            print(f"leukolab retrain: {error}", file=sys.stderr)
            return 2
        except StageFailed as failure:
            store.record_retrain(snapshot.review_ids, str(snapshot.folder), None, "failed")
            print(f"\nRETRAIN FAILED: {failure}", file=sys.stderr)
            return 1
        except KeyboardInterrupt as stop:
            return 143 if isinstance(stop, Terminated) else 130
        published = PublishRecord.from_output(lineage["tasks"][RETRAIN_UNTIL]["result"])
        gate = EvaluationRecord.from_output(lineage["tasks"]["evaluate"]["result"]).gates["champion"]
        store.record_retrain(snapshot.review_ids, str(snapshot.folder), lineage["run_id"], published.alias)
    print(f"\nrun {lineage['run_id']}: {published.model_name} version {published.version} is @{published.alias} "
          f"({gate['reason']})")
    if published.alias == "champion":
        print("an API that follows @champion swaps to it at its next poll")
    return 0
