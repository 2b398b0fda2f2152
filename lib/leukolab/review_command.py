"""``leukolab review``: the review store from the command line: what it holds, its sync with the copy on a tracking
server, and Label Studio export and import."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_review_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--review-dir", help="the review store (default: $LEUKOLAB_REVIEW_DIR or <workspace>/review)")
    actions = parser.add_subparsers(dest="review_command", required=True, help="what to do with the store")
    actions.add_parser("status", help="kept cases, reviews, the backlog and what the size bound dropped")
    actions.add_parser("sync", help="with a tracking server (MLFLOW_TRACKING_URI=http...): push this store's cases and "
                       "reviews to its copy there, and pull the cases and reviews other machines pushed")
    export = actions.add_parser("export", help="kept cases as Label Studio tasks (JSON), with the labelling config beside them")
    export.add_argument("out", metavar="TASKS.json", help="the Label Studio tasks file to write")
    export.add_argument("--image-url-prefix", default=None,
                        help="put before each image's path under the review folder (default: /data/local-files/?d=)")
    into = actions.add_parser("import", help="a Label Studio JSON export: its annotations saved as reviews")
    into.add_argument("file", metavar="EXPORT.json", help="a Label Studio JSON export (tasks with annotations)")


def review_command(args: argparse.Namespace) -> int:
    from leukolab.review import labelstudio
    from leukolab.review.store import ReviewStore

    store = ReviewStore(args.review_dir)
    if args.review_command == "sync":
        return sync_command(store)
    if args.review_command == "status":
        cases, reviews = store.cases(), store.latest_reviews()
        labels = {}
        for review in reviews:
            labels[review["label"]] = labels.get(review["label"], 0) + 1
        print(f"review store {store.folder}: {len(cases)} kept case(s), {len(reviews)} reviewed {labels or ''}, "
              f"backlog {store.backlog()}, dropped by the bound {len(store.dropped())}")
        return 0
    if args.review_command == "export":
        tasks = labelstudio.export_tasks(store, args.image_url_prefix or labelstudio.LOCAL_FILES)
        out = Path(args.out)
        out.write_text(json.dumps(tasks, indent=2) + "\n")
        config = out.with_name(out.stem + ".label_config.xml")
        config.write_text(labelstudio.labelling_config(labelstudio.class_names_of(store.cases())))
        print(f"{len(tasks)} task(s) to {out}; labelling config: {config}")
        return 0
    try:
        tasks = json.loads(Path(args.file).read_text())
        counts = labelstudio.import_annotations(store, tasks)
    except (OSError, ValueError) as error:
        print(f"leukolab review import: {error}", file=sys.stderr)
        return 2
    print(", ".join(f"{n} {what.replace('_', ' ')}" for what, n in counts.items()))
    return 0


def sync_command(store) -> int:
    """``leukolab review sync``: 0 when synced, 1 when the server failed, 2 without a tracking server."""
    from leukolab.review.remote import SyncFailed, sync_with_server

    try:
        said = sync_with_server(store)
    except SyncFailed as error:
        print(f"leukolab review sync: {error}", file=sys.stderr)
        return 1
    if said is None:
        print("leukolab review sync: the tracking URI is not a server (set MLFLOW_TRACKING_URI=http://...): "
              f"{store.folder} is the only copy", file=sys.stderr)
        return 2
    print(said)
    return 0
