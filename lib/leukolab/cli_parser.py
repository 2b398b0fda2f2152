"""The ``leukolab`` command's parser: every subcommand, option and help text. The CLI reference in the
documentation is made from it (``leukolab.cli_reference``), so what ``--help`` says and what the docs say agree."""

from __future__ import annotations

import argparse
import os

from leukolab import __version__
from leukolab.config import available
from leukolab.config.arguments import key_value, positive_int
from leukolab.predictor import DEFAULT_MODEL_URI
from leukolab.retrain import add_retrain_arguments
from leukolab.review_command import add_review_arguments
from leukolab.scoring.options import add_predict_arguments
from leukolab.serving.options import add_serve_arguments
from leukolab.sweep.command import add_sweep_arguments

DESCRIPTION = """Run the pipeline and see what it would do, its graph, its runs, what changed between two runs and each
stage's parameters; sweep an experiment's hyperparameters; score images with a registered model; serve the
champion; write a run's HTML report; open JupyterLab, the MLflow UI and the demo; start a Spark standalone cluster
on this machine."""

EXIT_CODES = {
    0: "success",
    1: "the work ran and failed: a stage or trial failed, a cluster did not start or is not running",
    2: "a bad argument or input: a malformed or unknown option, parameter, profile, stage, run or model "
       "(one line on stderr says which)",
    130: "interrupted (Ctrl-C); `leukolab run --resume RUN_ID` continues a pipeline run",
    143: "stopped by SIGTERM; `leukolab run --resume RUN_ID` continues a pipeline run",
}


class CommandParser(argparse.ArgumentParser):
    """argparse's parser, but a bad argument is one line on stderr (no usage block) and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser(stage_help: str | None = None) -> CommandParser:
    """The whole command line; ``stage_help`` is the epilog of ``leukolab run --help`` (each stage's parameters)."""
    parser = CommandParser(prog="leukolab", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"leukolab {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log lines (DEBUG)")
    parser.add_argument("-q", "--quiet", action="count", default=0,
                        help="fewer log lines: -q warnings and errors only, -qq errors only")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="what to do (below)")

    def command(name: str, help: str, **kwargs) -> CommandParser:
        return commands.add_parser(name, help=help, description=help, **kwargs)

    run = command("run", "run the pipeline on a profile, reusing every stage that is up to date",
                  formatter_class=argparse.RawDescriptionHelpFormatter, epilog=stage_help)
    _plan_arguments(run)
    _selection_arguments(run)
    run.add_argument("--run-id", help="name of the run folder (default: a timestamp)")
    run.add_argument("--resume", metavar="RUN_ID", help="continue run RUN_ID from its first unfinished stage")
    run.add_argument("--jobs", type=positive_int, default=1, metavar="N",
                     help="independent stages (the experiments) to run at once (at least 1; default: %(default)s)")
    run.add_argument("--dry-run", action="store_true", help="say which stages would run and why, and run nothing "
                     "(the same as `leukolab status`)")

    status = command("status", "which stages `leukolab run` would run and why (up to date, forced, changed), "
                     "without running anything")
    _plan_arguments(status)
    _selection_arguments(status)
    _json_argument(status)

    dag = command("dag", "print the stage graph of a profile and draw it as a PNG")
    _plan_arguments(dag)
    dag.add_argument("--png", help="where to write the picture (default: runs/dag-<profile>.png in the workspace)")

    runs = command("runs", "list pipeline runs, or show one run's stages")
    runs_commands = runs.add_subparsers(dest="runs_command", required=True, metavar="ACTION", help="list or show")
    _json_argument(runs_commands.add_parser("list", help="every run in the workspace", description="every run in "
                                            "the workspace: id, profile, status, start, wall time, task counts"))
    show = runs_commands.add_parser("show", help="one run's stages: status, time, key, MLflow run",
                                    description="one run's stages: status, time, key, MLflow run")
    show.add_argument("run_id", metavar="RUN_ID", help="a run folder's name under runs/ (`leukolab runs list`)")
    _json_argument(show)

    compare = command("compare", "what changed between two pipeline runs: parameters, data, code, stages, metrics")
    compare.add_argument("run_a", metavar="RUN_A", help="the first run (A)")
    compare.add_argument("run_b", metavar="RUN_B", help="the second run (B); differences are B - A")
    shape = compare.add_mutually_exclusive_group()
    shape.add_argument("--markdown", action="store_true", help="print Markdown tables (for notes) instead of text")
    _json_argument(shape)

    report = command("report", "write one HTML page for a pipeline run: stages, parameters, metrics, figures and "
                     "the executed notebooks; linked from the run's MLflow parent run")
    report.add_argument("run_id", metavar="RUN_ID", help="a run folder's name under runs/ (`leukolab runs list`)")
    report.add_argument("--out", metavar="FILE.html", help="where to write it (default: runs/RUN_ID/report.html)")

    params = command("params", "what a stage accepts: its parameters with types and defaults")
    params.add_argument("stage", metavar="STAGE",
                        help="a stage of the pipeline file (etl, segment, classify, evaluate, publish, serve)")
    params.add_argument("--pipeline", help="a stage graph YAML (default: params/pipeline.yaml)")

    sweep = command("sweep", "search an experiment's hyperparameters with Optuna, one stage notebook run per trial")
    _plan_arguments(sweep)
    add_sweep_arguments(sweep)

    add_serve_arguments(command("serve", "serve a registered model over HTTP (foreground)"))
    add_predict_arguments(command("predict", "score image files and folders with a registered model: a CSV row per file"))
    add_review_arguments(command("review", "the review store of referred cases: status, sync with a tracking server, "
                                           "Label Studio export and import"))
    retrain = command("retrain", "retrain on the reviews and re-gate the champion, when enough new reviews exist")
    _plan_arguments(retrain)
    add_retrain_arguments(retrain)

    lab = command("lab", "JupyterLab on the notebooks (kernel Python (leukolab); token: $JUPYTER_TOKEN)")
    _server_arguments(lab, 8888)
    lab.add_argument("--notebook-dir", help="the folder to open (default: the clone's notebooks/)")
    lab.add_argument("--no-browser", action="store_true", help="do not open a browser")

    ui = command("mlflow-ui", "the MLflow UI on the workspace's tracking store (one worker, no job runner)")
    _server_arguments(ui, 5000)

    demo = command("demo", "the Voila demo page: upload a smear, see the class, the decision and the mask "
                   "(the published model, or a running API with $LEUKOLAB_API_URL)")
    _server_arguments(demo, 8866)
    demo.add_argument("--model-uri", default=os.environ.get("LEUKOLAB_MODEL_URI"),
                      help=f"the model the demo loads (default: $LEUKOLAB_MODEL_URI or {DEFAULT_MODEL_URI})")
    demo.add_argument("--no-browser", action="store_true", help="do not open a browser")

    cluster = command("cluster", "a Spark standalone cluster on 127.0.0.1: start, stop, show it")
    cluster.add_argument("action", choices=("up", "down", "status"), help="up: start (state and logs in "
                         "<workspace>/cluster/); down: stop all it started; status: show it")
    cluster.add_argument("--workers", type=positive_int, default=1, help="workers to start (up; default 1)")
    cluster.add_argument("--cores", type=positive_int, default=2, help="cores each worker offers (up; default 2)")
    cluster.add_argument("--memory", default="2g", help="memory each worker offers, e.g. 2g (up; default 2g)")
    return parser


def _plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="default", help=f"one of {available('profiles')}, or a profile YAML file")
    parser.add_argument("--param", action="append", default=[], type=key_value, metavar="KEY=VALUE",
                        help="override a parameter for every stage (KEY) or one stage (STAGE.KEY); repeatable")
    parser.add_argument("--pipeline", help="a stage graph YAML (default: params/pipeline.yaml)")


def _selection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="append", default=[], metavar="STAGE",
                        help="run STAGE (a stage, or one task such as classify-simple-cnn) even if it is up to date; repeatable")
    parser.add_argument("--from", dest="from_stage", metavar="STAGE", help="run STAGE and everything after it, up to date or not")
    parser.add_argument("--until", metavar="STAGE", help="stop after STAGE (run only what it needs)")
    parser.add_argument("--only", metavar="STAGE", help="run STAGE alone, reusing earlier results for what it needs")


def _server_arguments(parser: argparse.ArgumentParser, port: int) -> None:
    """``--host`` and ``--port``, as ``serve`` has them; ``--ip`` stays as a hidden old spelling of ``--host``."""
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: %(default)s)")
    parser.add_argument("--ip", dest="host", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=positive_int, default=port, help="port to listen on (default: %(default)s)")


def _json_argument(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON (for scripts) instead of a table")
