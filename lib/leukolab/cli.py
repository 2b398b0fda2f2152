"""The ``leukolab`` command: run the pipeline, serve the champion, open the MLflow UI."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys

from leukolab.config import available, parse_value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="leukolab", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the whole pipeline on a profile")
    run.add_argument("--profile", default="default", help=f"one of {available('profiles')}")
    run.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                     help="override a parameter for every stage (KEY) or one stage (STAGE.KEY); repeatable")
    run.add_argument("--run-id", help="name of the run folder (default: a timestamp)")

    serve = commands.add_parser("serve", help="serve a registered model over HTTP (foreground)")
    serve.add_argument("--model-uri", default=os.environ.get("LEUKOLAB_MODEL_URI", "models:/leukolab@champion"))
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)

    ui = commands.add_parser("mlflow-ui", help="the MLflow UI on the workspace's tracking store")
    ui.add_argument("--port", type=int, default=5000)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.command == "run":
        return _run(args)
    if args.command == "serve":
        from leukolab.serving.launch import serve_forever

        serve_forever(model_uri=args.model_uri, host=args.host, port=args.port)
        return 0
    from leukolab.tracking import tracking_uri

    return subprocess.call([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri(),
                            "--host", "127.0.0.1", "--port", str(args.port), "--workers", "1"])


def _run(args) -> int:
    from leukolab.pipeline import StageFailed, run_pipeline

    overrides = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"--param needs KEY=VALUE, got {item!r}", file=sys.stderr)
            return 2
        overrides[key] = parse_value(value)
    try:
        summary = run_pipeline(args.profile, overrides, args.run_id)
    except StageFailed as failure:
        print(f"\nPIPELINE FAILED: {failure}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\npipeline interrupted", file=sys.stderr)
        return 130
    print(f"\npipeline run {summary['run_id']} finished: {summary['run_dir']}")
    publish = next((s.get("output") for s in summary["stages"] if s["stage"] == "publish"), None)
    if publish:
        metrics = ", ".join(f"{k} {v:.3f}" for k, v in sorted(publish.get("test_metrics", {}).items()) if k in
                            ("accuracy", "macro_f1", "roc_auc_ovr", "dice", "iou"))
        print(f"champion: {publish['model_name']} version {publish['version']} (@{publish['alias']}); test: {metrics}")
        for extra in publish.get("also_registered", []):
            print(f"also registered: {extra['model_name']} version {extra['version']} (@{extra['alias']}); "
                  f"test dice {extra['test_metrics'].get('dice', float('nan')):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
