"""``leukolab sweep``: its options, and what it prints (the trials table, the best experiment, the time per trial)."""

from __future__ import annotations

import argparse
import sys

from leukolab.config.arguments import positive_int


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    """The options after ``--profile``, ``--param`` and ``--pipeline`` (which ``leukolab run`` shares)."""
    parser.add_argument("--experiment", required=True, help="the experiment to search (a name in params/experiments/)")
    parser.add_argument("--space", metavar="FILE", help="YAML: experiment key -> {low, high, log} or {choices} "
                        "(default: learning rate, weight decay, batch size and augmentation strengths around the experiment's)")
    parser.add_argument("--trials", type=positive_int, required=True, metavar="N",
                        help="finished (completed or pruned) trials the study should hold; a resumed study runs only the rest")
    parser.add_argument("--jobs", type=positive_int, default=1, metavar="N",
                        help="trials to run at once (at least 1), each with cores / N threads (default: %(default)s)")
    parser.add_argument("--stage", choices=("classify", "segment"),
                        help="the stage notebook each trial runs (default: segment for segmentation experiments, else classify)")
    parser.add_argument("--study", metavar="NAME", help="the Optuna study, in <workspace>/sweeps/NAME.db; the same name "
                        "resumes it (default: <experiment>-<profile>)")
    parser.add_argument("--out", metavar="FILE",
                        help="where the best trial's experiment goes (default: params/experiments/<experiment>-best.yaml)")


def sweep_command(args: argparse.Namespace, overrides: dict) -> int:
    from leukolab.pipeline.runner import StageFailed
    from leukolab.sweep.run import plan_sweep, run_sweep

    try:
        sweep_plan = plan_sweep(args.profile, args.experiment, overrides, args.pipeline, args.space, args.stage, args.study)
        print(f"sweep {sweep_plan.study}: {args.experiment} in stage {sweep_plan.task.stage} of profile {args.profile}, "
              f"objective val {sweep_plan.metric}, searching {', '.join(sweep_plan.space)}")
        result = run_sweep(sweep_plan, args.trials, args.jobs, args.out)
    except (ValueError, FileNotFoundError) as error:
        print(f"leukolab sweep: {error}", file=sys.stderr)
        return 2
    except StageFailed as failure:
        print(f"\nthe sweep's ETL failed: {failure}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nsweep interrupted: the same command resumes it (running trials are asked again)", file=sys.stderr)
        return 130
    print()
    print(result["table"].to_string(index=False, na_rep=""))
    if result["retried"]:
        print(f"trials {result['retried']} were left running by an earlier sweep: marked failed and asked again")
    ran = len(result["ran"])
    if ran:
        print(f"{ran} trial{'s' * (ran > 1)} in {result['seconds']:.1f} s ({result['seconds'] / ran:.1f} s per trial, "
              f"{args.jobs} at a time); study {result['storage']}, MLflow run {result['parent_run_id']}")
    if result["best"]:
        path, best = result["best"]
        print(f"best: trial {best.number}, val {sweep_plan.metric} {best.value:.4f}: {path}")
    for failure in result["failures"]:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if result["failures"] else 0
