"""The options of ``leukolab predict`` and what the command does with them (imported by the ``leukolab`` command:
the model and its dependencies load only when ``predict`` runs)."""

from __future__ import annotations

import argparse
import os
import sys

from leukolab.predictor import DEFAULT_MODEL_URI


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files, and folders to walk for images "
                        "(.jpg .jpeg .png .bmp .tif .tiff, recursively)")
    parser.add_argument("--model-uri", default=os.environ.get("LEUKOLAB_MODEL_URI"),
                        help=f"a registered model (default: $LEUKOLAB_MODEL_URI or {DEFAULT_MODEL_URI})")
    parser.add_argument("--out", metavar="FILE.csv", help="where to write the CSV (default: stdout)")
    parser.add_argument("--explain", metavar="DIR", help="write a heatmap overlay per image to DIR (Grad-CAM of the predicted class)")
    parser.add_argument("--batch-size", type=int, default=32, metavar="N", help="images per forward pass (default: %(default)s)")
    parser.add_argument("--spark-master", metavar="URL", help="run the scoring as a Spark job (local[2], spark://host:7077)")
    parser.add_argument("--contact-sheet", metavar="FILE.png", help="a picture of the first 24 rows")
    parser.add_argument("--keep-referred", action="store_true", help="keep every referred image and its answer in the "
                        "review store ($LEUKOLAB_REVIEW_DIR or <workspace>/review; also on with LEUKOLAB_KEEP_REFERRED=1)")


def run_predict(args: argparse.Namespace) -> int:
    """Score ``args.paths`` and write the CSV (and the contact sheet); 2 with a message for a bad argument."""
    from mlflow.exceptions import MlflowException

    from leukolab.review.keeping import keep_scored_rows, keeping_enabled
    from leukolab.scoring.predict import predict_paths, write_contact_sheet, write_csv

    try:
        frame = predict_paths(args.paths, args.model_uri or DEFAULT_MODEL_URI, args.batch_size, args.explain,
                              args.spark_master)
    except (ValueError, FileNotFoundError, ConnectionError, MlflowException) as error:
        print(f"leukolab predict: {error}", file=sys.stderr)
        return 2
    write_csv(frame, args.out)
    if args.keep_referred or keeping_enabled():
        kept = keep_scored_rows(frame.to_dict("records"), frame.attrs.get("model_name"), frame.attrs.get("model_version"))
        print(f"{sum(k.outcome == 'kept' for k in kept)} referred image(s) kept for review "
              f"({sum(k.outcome == 'seen_again' for k in kept)} kept before, {sum(k.outcome == 'not_kept' for k in kept)} "
              "over the store's bound)", file=sys.stderr)
    if args.contact_sheet:
        write_contact_sheet(frame, args.contact_sheet)
    refused = frame.loc[frame["decision"].isna(), "reason"].value_counts()
    summary = ", ".join(f"{n} {reason}" for reason, n in refused.items())
    print(f"{len(frame)} files, {len(frame) - refused.sum()} scored" + (f"; not used: {summary}" if summary else "")
          + (f"; CSV: {args.out}" if args.out else ""), file=sys.stderr)
    return 0
