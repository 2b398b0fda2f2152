"""The MLflow model registry: register a run's model, tag it, point an alias at it."""

from __future__ import annotations

import logging

import mlflow
from mlflow.tracking import MlflowClient

from leukolab.tracking import configure, tracking_uri

log = logging.getLogger(__name__)


def register(model_uri: str, name: str, alias: str, tags: dict | None = None, description: str | None = None):
    """Register ``model_uri`` as a new version of ``name``, tag it and set ``alias``; returns the ModelVersion."""
    configure()
    client = MlflowClient()
    version = mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in (tags or {}).items()})
    if description:
        client.update_model_version(name, version.version, description=description)
    client.set_registered_model_alias(name, alias, version.version)
    log.info("registered %s version %s as @%s (%s)", name, version.version, alias, tracking_uri())
    return client.get_model_version(name, version.version)


def publish(candidate: dict, name: str, alias: str, pipeline_run_id: str | None) -> dict:
    """Register an evaluated candidate (``30_evaluate``'s ``champion`` or ``segmenter``) with its lineage as tags.

    Returns what the publish stage hands on: name, version, alias, model URI and test metrics.
    """
    configure()
    source = MlflowClient().get_run(candidate["run_id"])
    tags = {
        "pipeline_run_id": pipeline_run_id or "interactive",
        "source_run_id": candidate["run_id"],
        "experiment": candidate["experiment"],
        "dataset_fingerprint": source.data.tags.get("dataset_fingerprint", ""),
        "git_commit": source.data.tags.get("git_commit", ""),
        **{f"test_{k}": round(v, 4) for k, v in candidate["metrics"].items()},
    }
    version = register(candidate["model_uri"], name, alias, tags,
                       description=f"{candidate['experiment']}: for research use only, not a diagnostic device.")
    return {"model_name": name, "version": version.version, "alias": alias, "model_uri": f"models:/{name}@{alias}",
            "source_run_id": candidate["run_id"], "test_metrics": candidate["metrics"]}
