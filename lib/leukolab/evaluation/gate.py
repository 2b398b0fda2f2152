"""The champion gate: a candidate takes the ``champion`` alias only when it beats the current one.

Both models are evaluated on the same split of the same dataset: the
candidate's selection split (``val``), never the reported test split, so the
comparison is fair whatever data the current champion was trained on and the
test figures stay unbiased. A candidate that is not better by ``margin`` is
published as ``challenger``; the decision and its reason go into the stage
output, the registry tags and the model card.
"""

from __future__ import annotations

import logging

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from leukolab.data.reading.dataset import SmearDataset
from leukolab.predictor.uri import load_smear_model
from leukolab.tracking import configure

log = logging.getLogger(__name__)


def current_version(model_name: str, alias: str = "champion"):
    """The registered version behind ``alias``, or None when the model or the alias does not exist."""
    configure()
    try:
        return MlflowClient().get_model_version_by_alias(model_name, alias)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def gate(candidate: dict, model_name: str, metric: str, dataset: SmearDataset, class_names: list[str], margin: float = 0.0,
         force: bool = False) -> dict:
    """Decide the alias of ``candidate`` (``30_evaluate``'s summary, whose ``selection_metrics`` were measured on ``dataset``).

    Returns ``{"alias", "reason", "metric", "split", "margin", "candidate_score", "current_version", "current_score"}``.
    """
    from leukolab.evaluation.compare import evaluate_model

    measured, split = candidate["selection_metrics"], candidate["selection_split"]
    score = measured.get(metric)
    if score is None:
        raise ValueError(f"the candidate has no {metric!r} on {split} to compare; measured: {sorted(measured)}")
    decision = {"metric": metric, "split": split, "margin": margin, "candidate_score": score, "current_version": None,
                "current_score": None}
    current = current_version(model_name)
    if current is None:
        return {**decision, "alias": "champion", "reason": f"no {model_name}@champion registered yet"}
    decision["current_version"] = current.version
    if current.run_id == candidate["run_id"]:
        return {**decision, "alias": "champion", "current_score": score, "unchanged": True,
                "reason": f"the candidate is already {model_name} version {current.version} (@champion)"}
    champion = load_smear_model(f"models:/{model_name}@champion")
    if champion.class_names != list(class_names):
        if force:
            return {**decision, "alias": "champion", "reason": f"forced: the current champion predicts {champion.class_names}"}
        return {**decision, "alias": "challenger",
                "reason": f"the current champion (version {current.version}) predicts {champion.class_names}, not "
                          f"{list(class_names)}: it cannot be compared (set force_promote=True to replace it)"}
    current_score = evaluate_model(champion, dataset, bootstrap_samples=0)[0].get(metric)
    decision["current_score"] = current_score
    if force or current_score is None or score >= current_score + margin:
        why = "forced" if force else (f"{metric} on {split} {score:.4f} vs {current_score:.4f} of version {current.version}: "
                                      f"better by at least {margin}")
        return {**decision, "alias": "champion", "reason": why}
    return {**decision, "alias": "challenger",
            "reason": f"{metric} on {split} {score:.4f} is not better than the champion's (version {current.version}) "
                      f"{current_score:.4f} by the margin {margin}: published as challenger"}
