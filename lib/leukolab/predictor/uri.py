"""Loading the published model by URI: resolve it to its registry version, run, dataset, referral threshold and TTA
gate, then load it."""

from __future__ import annotations

import re

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from leukolab.predictor.decision import threshold_from_tags
from leukolab.predictor.gated_tta import gate_from_tags
from leukolab.predictor.meta import ModelInfo
from leukolab.predictor.smear_model import SmearModel
from leukolab.tracking import configure, tracking_uri


def is_alias(uri: str) -> bool:
    """Whether ``uri`` names a registry alias (``models:/NAME@ALIAS``), which may move to another version."""
    return re.fullmatch(r"models:/[^/@]+@.+", uri) is not None


def resolve_model(uri: str) -> tuple[str, ModelInfo]:
    """The URI to load (an alias pinned to its current version) and the :class:`ModelInfo` behind ``uri``."""
    if match := re.fullmatch(r"runs:/([^/]+)/.+", uri):
        return uri, ModelInfo(uri, run_id=match[1])
    client = MlflowClient(tracking_uri(), tracking_uri())  # the project's store, as configure() sets it
    if match := re.fullmatch(r"models:/([^/@]+)@(.+)", uri):
        version = client.get_model_version_by_alias(match[1], match[2])
    elif match := re.fullmatch(r"models:/([^/@]+)/(\d+)", uri):
        version = client.get_model_version(match[1], match[2])
    else:
        return uri, ModelInfo(uri)
    fingerprint = None
    if version.run_id:
        try:
            fingerprint = client.get_run(version.run_id).data.tags.get("dataset_fingerprint")
        except MlflowException:  # the run was deleted; the version still serves
            pass
    threshold = threshold_from_tags(version.tags, f"{version.name}/{version.version}")
    info = ModelInfo(uri, version.name, str(version.version), version.run_id, fingerprint, threshold,
                     gate_from_tags(version.tags, f"{version.name}/{version.version}"))
    return f"models:/{version.name}/{version.version}", info


def load_smear_model(model_uri: str) -> SmearModel:
    """Load a logged or registered model from the workspace's tracking store and return its :class:`SmearModel`."""
    configure()
    return mlflow.pyfunc.load_model(model_uri).unwrap_python_model()


def load_model(uri: str, resolved: tuple[str, ModelInfo] | None = None) -> tuple[SmearModel, ModelInfo]:
    """Load the model behind ``uri`` from the project's tracking store, with its :class:`ModelInfo` (``resolved``:
    what :func:`resolve_model` gave for it, when already asked)."""
    configure()
    pinned_uri, info = resolved or resolve_model(uri)
    model = load_smear_model(pinned_uri)
    model.tta_gate = info.tta_gate
    return model, info
