"""Data-parallel training through Spark's ``TorchDistributor``: one process per shard, DDP over gloo or NCCL.

``distributed.num_processes`` in an experiment's YAML above 1 sends training
here. Each process loads the dataset, joins the process group and runs the
same :func:`leukolab.training.loop.fit` on its shard; rank 0 logs the
epochs to the experiment's MLflow run and hands the best weights back. Every
rank writes ``rank-<n>.json`` (the shard it trained on), logged under
``distributed/`` in the run.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

import mlflow
import torch

from leukolab.config.experiment import Experiment
from leukolab.data.reading.dataset import load_manifest
from leukolab.data.reading.loading import load_experiment_splits
from leukolab.models.factory import build_model
from leukolab.training.loop import FitResult, fit

log = logging.getLogger(__name__)

_BARRIER_WAIT = {"spark.scheduler.barrier.maxConcurrentTasksCheck.interval": "2s",
                 "spark.scheduler.barrier.maxConcurrentTasksCheck.maxFailures": "90"}
"""A new application on a cluster has no executors yet: look for the barrier tasks' slots every 2 s (Spark's
default: 15 s), for up to 3 minutes (then the job fails for lack of cores)."""


def fit_distributed(model: torch.nn.Module, experiment: Experiment, dataset_dir: str | Path, num_processes: int,
                    checkpoint_dir: str | Path, spark=None, loading: str | None = None) -> FitResult:
    """Train ``model`` in ``num_processes`` processes inside the active MLflow run; load the best weights into it.

    ``loading`` (``memory`` or ``streaming``; None: each rank chooses, see
    :func:`leukolab.data.reading.loading.choose_loading`) is how ranks read train and val: streamed, each reads only its
    shard of train."""
    from pyspark.ml.torch.distributor import TorchDistributor

    from leukolab.data.spark import spark_session

    settings = experiment.distributed
    spark = spark or spark_session(settings.master or f"local[{num_processes}]", app_name="leukolab-train",
                                   **_BARRIER_WAIT)
    run = mlflow.active_run()
    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    distributor = TorchDistributor(num_processes=num_processes, local_mode=settings.local_mode,
                                   use_gpu=torch.cuda.is_available())
    log.info("distributed training: %d processes on %s", num_processes, spark.sparkContext.master)
    state, result = distributor.run(_train_rank, experiment, str(dataset_dir), mlflow.get_tracking_uri(),
                                    run.info.run_id, str(checkpoint_dir), loading)
    model.load_state_dict(state)
    for path in sorted(checkpoint_dir.glob("rank-*.json")):
        mlflow.log_artifact(str(path), "distributed")
    mlflow.log_params({"distributed.world_size": num_processes, "distributed.backend": _backend()})
    return result


def _backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def _train_rank(experiment: Experiment, dataset_dir: str, tracking_uri: str, run_id: str, checkpoint_dir: str,
                loading: str | None):
    """One training process (runs under torchrun, started by TorchDistributor)."""
    import torch.distributed as dist

    logging.basicConfig(level=logging.INFO, format="%(asctime)s rank " + os.environ.get("RANK", "?") +
                        " %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    dist.init_process_group(_backend())
    rank, world = dist.get_rank(), dist.get_world_size()
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    try:
        manifest = load_manifest(dataset_dir)
        splits = load_experiment_splits(experiment, dataset_dir, ("train", "val"), loading)
        model = build_model(experiment, len(manifest["classes"]))
        report = None
        if rank == 0:
            mlflow.set_tracking_uri(tracking_uri)
            report = lambda epoch, metrics: mlflow.log_metrics(metrics, step=epoch, run_id=run_id)  # noqa: E731
        result = fit(model, splits["train"], splits["val"], experiment, manifest["train_mean"], manifest["train_std"],
                     manifest["classes"], checkpoint_dir, on_epoch_end=report)
        shard = {"rank": rank, "world_size": world, "host": socket.gethostname(), "threads": torch.get_num_threads(),
                 "samples": len(result.shard), "indices": sorted(result.shard)}
        (Path(checkpoint_dir) / f"rank-{rank}.json").write_text(json.dumps(shard))
        dist.barrier()
        if rank == 0:
            return {k: v.detach().cpu() for k, v in model.state_dict().items()}, result
        return None
    finally:
        dist.destroy_process_group()
