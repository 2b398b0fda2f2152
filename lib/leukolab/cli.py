"""The ``leukolab`` command: run the pipeline, show its graph, its runs, what changed between two runs and each
stage's parameters, sweep an experiment's hyperparameters, score images with a registered model, serve the
champion, open JupyterLab and the MLflow UI, start a Spark standalone cluster on this machine."""

from __future__ import annotations

import argparse
import sys

from leukolab.config import available, parse_value
from leukolab.logs import configure_logging
from leukolab.retrain import add_retrain_arguments, retrain_command
from leukolab.review_command import add_review_arguments, review_command
from leukolab.scoring.options import add_predict_arguments, run_predict
from leukolab.serving.options import add_serve_arguments
from leukolab.sweep.command import add_sweep_arguments


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="leukolab", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the pipeline on a profile, reusing every stage that is up to date",
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=_stage_parameters() if argv[:1] == ["run"] and {"-h", "--help"} & set(argv) else None)
    _plan_arguments(run)
    run.add_argument("--run-id", help="name of the run folder (default: a timestamp)")
    run.add_argument("--force", action="append", default=[], metavar="STAGE",
                     help="run STAGE (a stage, or one task such as classify-simple-cnn) even if it is up to date; repeatable")
    run.add_argument("--from", dest="from_stage", metavar="STAGE", help="run STAGE and everything after it, up to date or not")
    run.add_argument("--until", metavar="STAGE", help="stop after STAGE (run only what it needs)")
    run.add_argument("--only", metavar="STAGE", help="run STAGE alone, reusing earlier results for what it needs")
    run.add_argument("--resume", metavar="RUN_ID", help="continue run RUN_ID from its first unfinished stage")
    run.add_argument("--jobs", type=int, default=1, metavar="N", help="independent stages (the experiments) to run at once")

    dag = commands.add_parser("dag", help="print the stage graph of a profile and draw it as a PNG")
    _plan_arguments(dag)
    dag.add_argument("--png", help="where to write the picture (default: runs/dag-<profile>.png in the workspace)")

    runs = commands.add_parser("runs", help="list pipeline runs, or show one run's stages")
    runs_commands = runs.add_subparsers(dest="runs_command", required=True)
    runs_commands.add_parser("list", help="every run in the workspace")
    show = runs_commands.add_parser("show", help="one run's stages: status, time, key, MLflow run")
    show.add_argument("run_id")

    compare = commands.add_parser("compare", help="what changed between two pipeline runs: parameters, data, code, stages, metrics")
    compare.add_argument("run_a")
    compare.add_argument("run_b")
    compare.add_argument("--markdown", action="store_true", help="print Markdown tables (for notes) instead of text")

    params = commands.add_parser("params", help="what a stage accepts: its parameters with types and defaults")
    params.add_argument("stage", help="a stage of the pipeline file (etl, segment, classify, evaluate, publish, serve)")
    params.add_argument("--pipeline", help="a stage graph YAML (default: params/pipeline.yaml)")

    sweep = commands.add_parser("sweep", help="search an experiment's hyperparameters with Optuna, one stage notebook run per trial")
    _plan_arguments(sweep)
    add_sweep_arguments(sweep)

    add_serve_arguments(commands.add_parser("serve", help="serve a registered model over HTTP (foreground)"))

    add_predict_arguments(commands.add_parser("predict", help="score image files and folders with a registered model: a CSV row per file"))

    add_review_arguments(commands.add_parser("review", help="the review store of referred cases: status, Label Studio export and import"))
    retrain = commands.add_parser("retrain", help="retrain on the reviews and re-gate the champion, when enough new reviews exist")
    _plan_arguments(retrain)
    add_retrain_arguments(retrain)

    lab = commands.add_parser("lab", help="JupyterLab on the notebooks (kernel Python (leukolab); token: $JUPYTER_TOKEN)")
    lab.add_argument("--port", type=int, default=8888)
    lab.add_argument("--ip", default="127.0.0.1")
    lab.add_argument("--notebook-dir", help="the folder to open (default: the clone's notebooks/)")
    lab.add_argument("--no-browser", action="store_true", help="do not open a browser")

    ui = commands.add_parser("mlflow-ui", help="the MLflow UI on the workspace's tracking store (one worker, no job runner)")
    ui.add_argument("--port", type=int, default=5000)

    cluster = commands.add_parser("cluster", help="a Spark standalone cluster on 127.0.0.1: start, stop, show it")
    cluster.add_argument("action", choices=("up", "down", "status"),
                         help="up: start (state and logs in <workspace>/cluster/); down: stop all it started; status: show it")
    cluster.add_argument("--workers", type=int, default=1, help="workers to start (up; default 1)")
    cluster.add_argument("--cores", type=int, default=2, help="cores each worker offers (up; default 2)")
    cluster.add_argument("--memory", default="2g", help="memory each worker offers, e.g. 2g (up; default 2g)")

    args = parser.parse_args(argv)
    configure_logging()
    if args.command == "run":
        return _run(args)
    if args.command == "dag":
        return _dag(args)
    if args.command == "runs":
        return _runs(args)
    if args.command == "compare":
        return _compare(args)
    if args.command == "params":
        return _params(args)
    if args.command == "cluster":
        return _cluster(args)
    if args.command == "sweep":
        from leukolab.sweep.command import sweep_command

        return sweep_command(args, _overrides(args.param))
    if args.command == "predict":
        return run_predict(args)
    if args.command == "review":
        return review_command(args)
    if args.command == "retrain":
        return retrain_command(args, _overrides(args.param))
    if args.command == "serve":
        from leukolab.serving.launch import serve_forever

        serve_forever(model_uri=args.model_uri, host=args.host, port=args.port,
                      model_poll_seconds=args.model_poll_seconds)
        return 0
    from leukolab import workbench

    if args.command == "lab":
        workbench.exec_command(workbench.lab_command(args.notebook_dir or workbench.NOTEBOOKS_DIR, args.ip, args.port,
                                                     open_browser=not args.no_browser))
    workbench.exec_command(*workbench.mlflow_ui_command(args.port))


def _plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="default", help=f"one of {available('profiles')}, or a profile YAML file")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="override a parameter for every stage (KEY) or one stage (STAGE.KEY); repeatable")
    parser.add_argument("--pipeline", help="a stage graph YAML (default: params/pipeline.yaml)")


def _overrides(items: list[str]) -> dict:
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--param needs KEY=VALUE, got {item!r}")
        overrides[key] = parse_value(value)
    return overrides


def _run(args) -> int:
    from leukolab.pipeline.interrupts import Terminated
    from leukolab.pipeline.runner import StageFailed, run_pipeline

    if args.resume and (args.param or args.pipeline or args.run_id):
        print("--resume takes the run's own profile, parameters and pipeline: leave out --param, --pipeline, --run-id",
              file=sys.stderr)
        return 2
    try:
        lineage = run_pipeline(args.profile, _overrides(args.param), args.run_id, pipeline_file=args.pipeline,
                               force=args.force, from_stage=args.from_stage, until=args.until, only=args.only,
                               resume=args.resume, jobs=args.jobs)
    except (ValueError, FileNotFoundError) as error:
        print(f"leukolab run: {error}", file=sys.stderr)
        return 2
    except StageFailed as failure:
        print(f"\nPIPELINE FAILED: {failure}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as stop:
        terminated = isinstance(stop, Terminated)
        print(f"\npipeline {'stopped by SIGTERM' if terminated else 'interrupted'}: running stages were stopped; "
              "`leukolab run --resume <run-id>` continues", file=sys.stderr)
        return 143 if terminated else 130
    tasks = lineage["tasks"].values()
    counts = ", ".join(f"{sum(t['status'] == s for t in tasks)} {s}" for s in ("done", "cached"))
    print(f"\npipeline run {lineage['run_id']} finished ({counts}): {lineage['run_dir']}")
    publish = lineage["tasks"].get("publish", {}).get("result")
    if publish:
        metrics = ", ".join(f"{k} {v:.3f}" for k, v in sorted(publish.get("test_metrics", {}).items()) if k in
                            ("accuracy", "macro_f1", "roc_auc_ovr", "dice", "iou"))
        print(f"champion: {publish['model_name']} version {publish['version']} (@{publish['alias']}); test: {metrics}")
        for extra in publish.get("also_registered", []):
            print(f"also registered: {extra['model_name']} version {extra['version']} (@{extra['alias']}); "
                  f"test dice {extra['test_metrics'].get('dice', float('nan')):.3f}")
    return 0


def _dag(args) -> int:
    from pathlib import Path

    from leukolab.config import workspace
    from leukolab.pipeline.dag import dag_text, draw_dag
    from leukolab.pipeline.graph import plan

    try:
        the_plan = plan(args.profile, _overrides(args.param), args.pipeline)
    except (ValueError, FileNotFoundError) as error:
        print(f"leukolab dag: {error}", file=sys.stderr)
        return 2
    print(dag_text(the_plan))
    png = draw_dag(the_plan, Path(args.png) if args.png else workspace() / "runs" / f"dag-{Path(args.profile).stem}.png")
    print(f"picture: {png}")
    return 0


def _stage_parameters() -> str:
    from leukolab.pipeline.stage_help import stages_summary

    try:
        summary = stages_summary()
    except (ValueError, FileNotFoundError) as error:
        summary = f"  (params/pipeline.yaml cannot be read: {error})"
    return ("parameters each stage of params/pipeline.yaml accepts (KEY for every stage that declares it, STAGE.KEY "
            "for one; an unknown key stops the run before it starts); `leukolab params STAGE` gives their types and "
            "defaults:\n" + summary)


def _params(args) -> int:
    from leukolab.config.errors import ConfigError
    from leukolab.pipeline.stage_help import stage_table

    try:
        print(stage_table(args.stage, args.pipeline))
    except ConfigError as error:
        print(f"leukolab params: {error}", file=sys.stderr)
        return 2
    return 0


def _cluster(args) -> int:
    from leukolab import cluster

    state = cluster.read_state()
    if args.action == "up":
        try:
            state = cluster.start_cluster(args.workers, args.cores, args.memory)
        except cluster.ClusterError as error:
            print(f"leukolab cluster: {error}", file=sys.stderr)
            return 1
    elif args.action == "down":
        if state is None:
            print("no cluster is running")
            return 0
        cluster.stop_cluster(state)
        print(f"stopped {state['master_url']}")
        return 0
    print(cluster.status_text(state))
    return 0 if state and cluster.alive(state) else 1


def _runs(args) -> int:
    from leukolab.pipeline.report import run_table, runs_table

    try:
        print(runs_table() if args.runs_command == "list" else run_table(args.run_id))
    except ValueError as error:
        print(f"leukolab runs: {error}", file=sys.stderr)
        return 2
    return 0


def _compare(args) -> int:
    from leukolab.pipeline.comparison import compare_runs

    try:
        comparison = compare_runs(args.run_a, args.run_b)
    except ValueError as error:
        print(f"leukolab compare: {error}", file=sys.stderr)
        return 2
    print(comparison.markdown() if args.markdown else comparison.text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
