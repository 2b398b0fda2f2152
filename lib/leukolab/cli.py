"""The ``leukolab`` command: each subcommand's work (the parser and its help texts: ``leukolab.cli_parser``).
Exit status: 0 done, 1 the work failed, 2 a bad argument or input (one line on stderr), 130/143 interrupted."""

from __future__ import annotations

import json
import logging
import sys
from typing import Callable, TypeVar

from leukolab.cli_parser import build_parser
from leukolab.config.arguments import key_value
from leukolab.logs import configure_logging
from leukolab.scoring.options import run_predict

T = TypeVar("T")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    wants_stage_help = bool({"-h", "--help"} & set(argv)) and "run" in argv
    args = build_parser(_stage_parameters() if wants_stage_help else None).parse_args(argv)  # exits 2 on a bad one
    configure_logging(_log_level(args.verbose, args.quiet))
    handler = COMMANDS.get(args.command)
    if handler:
        return handler(args)
    from leukolab import workbench
    from leukolab.processes.foreground import become

    if args.command == "lab":
        become(workbench.lab_command(args.notebook_dir or workbench.NOTEBOOKS_DIR, args.host, args.port,
                                     open_browser=not args.no_browser))
    if args.command == "demo":
        become(*workbench.demo_command(args.host, args.port, args.model_uri, open_browser=not args.no_browser))
    become(*workbench.mlflow_ui_command(args.port, args.host))


def _log_level(verbose: int, quiet: int) -> int:
    """INFO by default; -v DEBUG; -q WARNING, -qq ERROR."""
    if verbose:
        return logging.DEBUG
    return (logging.INFO, logging.WARNING)[quiet] if quiet < 2 else logging.ERROR


def _overrides(items: list) -> dict:
    """``--param`` values as a dict (a later KEY wins): ``(KEY, VALUE)`` pairs as ``key_value`` parses them, or the
    ``KEY=VALUE`` strings themselves."""
    return dict(key_value(item) if isinstance(item, str) else item for item in items)


def _run(args) -> int:
    from leukolab.pipeline.interrupts import Terminated
    from leukolab.pipeline.runner import StageFailed, run_pipeline
    from leukolab.stages.records import PublishRecord

    if args.dry_run:
        return _status(args)
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
    except ConnectionError as error:  # the tracking store, before any stage
        print(f"leukolab run: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as stop:
        terminated = isinstance(stop, Terminated)
        print(f"\npipeline {'stopped by SIGTERM' if terminated else 'interrupted'}: running stages were stopped; "
              "`leukolab run --resume <run-id>` continues", file=sys.stderr)
        return 143 if terminated else 130
    tasks = lineage["tasks"].values()
    counts = ", ".join(f"{sum(t['status'] == s for t in tasks)} {s}" for s in ("done", "cached"))
    print(f"\npipeline run {lineage['run_id']} finished ({counts}): {lineage['run_dir']}")
    publish = PublishRecord.from_output(lineage["tasks"].get("publish", {}).get("result"))
    if publish:
        metrics = ", ".join(f"{k} {v:.3f}" for k, v in sorted(publish.test_metrics.items()) if k in
                            ("accuracy", "macro_f1", "roc_auc_ovr", "dice", "iou"))
        print(f"champion: {publish.model_name} version {publish.version} (@{publish.alias}); test: {metrics}")
        for extra in publish.also_registered:
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
    from leukolab.pipeline.report import run_record, run_table, runs_records, runs_table

    try:
        if args.json:
            _print_json(runs_records() if args.runs_command == "list" else run_record(args.run_id))
        else:
            print(runs_table() if args.runs_command == "list" else run_table(args.run_id))
    except ValueError as error:
        print(f"leukolab runs: {error}", file=sys.stderr)
        return 2
    return 0


def _compare(args) -> int:
    from leukolab.pipeline.comparison import compare_runs

    return _answer("compare", lambda: compare_runs(args.run_a, args.run_b), as_json=args.json,
                   records=lambda comparison: comparison.records(),
                   text=lambda comparison: comparison.markdown() if args.markdown else comparison.text())


def _status(args) -> int:
    from leukolab.pipeline.status import status_table, would_run

    return _answer(args.command, lambda: would_run(args.profile, _overrides(args.param), args.pipeline, force=args.force,
                                                   from_stage=args.from_stage, until=args.until, only=args.only),
                   as_json=getattr(args, "json", False), records=lambda rows: rows, text=status_table,
                   errors=(ValueError, FileNotFoundError))


def _answer(command: str, produce: Callable[[], T], *, as_json: bool, records: Callable[[T], object],
            text: Callable[[T], str], errors: tuple[type[Exception], ...] = (ValueError,)) -> int:
    """What a reporting subcommand prints: ``produce()``'s ``records`` as JSON with ``--json``, else its ``text``;
    an error of ``errors`` is one line on stderr (``leukolab COMMAND: ...``) and exit status 2."""
    try:
        result = produce()
    except errors as error:
        print(f"leukolab {command}: {error}", file=sys.stderr)
        return 2
    if as_json:
        _print_json(records(result))
    else:
        print(text(result))
    return 0


def _report(args) -> int:
    from leukolab.pipeline.html_report import write_run_report

    try:
        path = write_run_report(args.run_id, args.out)
    except ValueError as error:
        print(f"leukolab report: {error}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0


def _retrain(args) -> int:
    from leukolab.retrain import retrain_command

    return retrain_command(args, _overrides(args.param))


def _review(args) -> int:
    from leukolab.review_command import review_command

    return review_command(args)


def _sweep(args) -> int:
    from leukolab.sweep.command import sweep_command

    return sweep_command(args, _overrides(args.param))


def _serve(args) -> int:
    from leukolab.serving.foreground import serve_forever

    serve_forever(model_uri=args.model_uri, host=args.host, port=args.port, model_poll_seconds=args.model_poll_seconds,
                  insecure=args.insecure)
    return 0


def _print_json(value) -> None:
    print(json.dumps(value, indent=2, default=str))


COMMANDS = {"run": _run, "status": _status, "dag": _dag, "runs": _runs, "compare": _compare, "report": _report,
            "params": _params, "cluster": _cluster, "sweep": _sweep, "predict": run_predict, "serve": _serve,
            "review": _review, "retrain": _retrain}


if __name__ == "__main__":
    sys.exit(main())
