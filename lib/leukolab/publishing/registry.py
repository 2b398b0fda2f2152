"""The MLflow model registry: register an evaluated model with its lineage, alias and model card."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from leukolab.data.reading.dataset import load_manifest
from leukolab.predictor.uri import load_smear_model
from leukolab.publishing.card import card_figures, render_model_card, segmenter_card_figures
from leukolab.publishing.provenance import promotion_check, provenance_problems
from leukolab.publishing.referral import referral_tags
from leukolab.publishing.tta import tta_tags
from leukolab.stages.records import EvaluationRecord, PublishedVersion, PublishRecord
from leukolab.tracking import configure, tracking_uri

log = logging.getLogger(__name__)
DESCRIPTION_LIMIT = 5000  # characters the registry keeps of a version's description


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


def publish(candidate: dict, name: str, gate: dict, manifest: dict, pipeline_run_id: str | None,
            figures: dict[str, str] | None = None, external: list[dict] | None = None, referral: dict | None = None,
            dataset_dir: str | None = None, evaluation: dict | None = None,
            promotion_override: str | None = None, ood: dict | None = None) -> PublishedVersion:
    """Register an evaluated candidate under the alias the gate chose, with lineage tags and a model card.

    ``candidate`` is ``30_evaluate``'s summary (chosen on its selection split;
    ``metrics``, tagged ``test_<metric>``, are those of its report split);
    ``figures`` maps captions to image files shown in the card; ``external``
    are the domain-shift rows of :mod:`leukolab.evaluation.external`; ``referral`` (``30_evaluate``'s threshold)
    goes into the card and the version's tags (:func:`~leukolab.publishing.referral.referral_tags`, also set on
    a version registered already, which the server reads at its next start); with ``dataset_dir``, a classifier
    with TTA gets its ``tta_gate`` measured on the selection split (:mod:`leukolab.publishing.tta`); ``ood`` (``30_evaluate``'s
    out-of-distribution report, :mod:`leukolab.evaluation.ood`) goes into the card. The card and
    its figures are logged under ``model_card/`` in the candidate's run and the
    card becomes the version's description. Returns what the publish stage hands on.

    ``@champion`` needs provenance (:mod:`leukolab.publishing.provenance`) in ``evaluation`` (``30_evaluate``'s
    output) and ``manifest``; without it :class:`~leukolab.publishing.provenance.PromotionRefused` is raised
    before anything is registered, unless ``promotion_override`` gives a reason, which is recorded as the
    version's ``promotion_override`` tag and in its card.
    """
    configure()
    client = MlflowClient()
    metrics = candidate["metrics"]
    if gate.get("unchanged"):  # already the registered champion: nothing new to register
        version = client.get_model_version(name, gate["current_version"])
        for key, value in referral_tags(referral).items() if referral else ():
            client.set_model_version_tag(name, version.version, key, value)
        return {"model_name": name, "version": version.version, "alias": gate["alias"], "model_uri": f"models:/{name}@{gate['alias']}",
                "source_run_id": candidate["run_id"], "test_metrics": metrics, "gate": gate,
                "model_card": version.tags.get("model_card", "")}
    source = client.get_run(candidate["run_id"])
    override = None
    if gate["alias"] == "champion":
        override = promotion_check(provenance_problems(evaluation or {}, manifest, source.data.tags.get("dataset_fingerprint")),
                                   promotion_override)
    tags = {
        "pipeline_run_id": pipeline_run_id or "interactive",
        "source_run_id": candidate["run_id"],
        "experiment": candidate["experiment"],
        "dataset_fingerprint": source.data.tags.get("dataset_fingerprint", manifest.get("fingerprint", "")),
        "git_commit": source.data.tags.get("git_commit", ""),
        "gate": gate["reason"][:5000],
        "selection_split": candidate["selection_split"],
        "selection_metric": gate["metric"],
        "report_split": candidate["report_split"],
        **{f"test_{k}": round(v, 4) for k, v in metrics.items() if "_ci_" not in k},
        **{f"test_{k}_ci95": f"[{metrics[f'{k}_ci_low']:.4f}, {metrics[f'{k}_ci_high']:.4f}]"
           for k in metrics if f"{k}_ci_low" in metrics},
        **(referral_tags(referral) if referral else {}),
        **({"promotion_override": override["reason"][:5000], "promotion_problems": "; ".join(override["problems"])[:5000]}
           if override else {}),
    }
    alias = gate["alias"]
    model = load_smear_model(candidate["model_uri"])
    tags.update(tta_tags(model, dataset_dir, candidate["selection_split"], referral["threshold"] if referral else None))
    version = register(candidate["model_uri"], name, alias, tags)
    lineage = {"source run": candidate["run_id"], "pipeline run": tags["pipeline_run_id"], "git commit": tags["git_commit"],
               "tracking URI": tracking_uri()}
    card = _log_card(client, candidate["run_id"], render_model_card(
        model_name=name, version=version.version, alias=alias, candidate=candidate, experiment=model.experiment,
        manifest=manifest, gate=gate, temperature=model.meta.temperature, lineage=lineage,
        figures={caption: Path(path).name for caption, path in (figures or {}).items()}, external=external,
        referral=referral, evaluation=evaluation, override=override, ood=ood), figures or {})
    description = card["text"] if len(card["text"]) <= DESCRIPTION_LIMIT else (
        card["text"][:DESCRIPTION_LIMIT - 200].rsplit("\n## ", 1)[0] + f"\n\n(The full card: {card['uri']}.)")
    client.update_model_version(name, version.version, description=description)
    client.set_model_version_tag(name, version.version, "model_card", card["uri"])
    return {"model_name": name, "version": version.version, "alias": alias, "model_uri": f"models:/{name}@{alias}",
            "source_run_id": candidate["run_id"], "test_metrics": metrics, "gate": gate, "model_card": card["uri"]}


def publish_evaluation(evaluation: EvaluationRecord, model_name: str, segmenter_name: str, pipeline_run_id: str | None,
                       promotion_override: str | None = None) -> PublishRecord:
    """The publish stage (``40_publish``): :func:`publish` ``30_evaluate``'s champion under ``model_name`` with its
    card's figures, referral, external sets and out-of-distribution report, and its segmenter (when it chose one)
    under ``segmenter_name``; returns the stage's record (its ``mlflow_run_id`` left for the stage to set)."""
    manifest = load_manifest(evaluation.dataset_dir)
    provenance = evaluation.model_dump()
    selection, report = evaluation.selection_split, evaluation.report_split
    published = publish(evaluation.champion, model_name, evaluation.gates["champion"], manifest, pipeline_run_id,
                        figures=card_figures(evaluation.figures, selection, report), external=evaluation.external,
                        referral=evaluation.referral, dataset_dir=evaluation.dataset_dir, evaluation=provenance,
                        promotion_override=promotion_override, ood=evaluation.ood)
    also: list[PublishedVersion] = []
    if evaluation.segmenter:
        also.append(publish(evaluation.segmenter, segmenter_name, evaluation.gates["segmenter"], manifest, pipeline_run_id,
                            figures=segmenter_card_figures(evaluation.figures, selection), evaluation=provenance,
                            promotion_override=promotion_override))
    return PublishRecord(**published, also_registered=also)


def _log_card(client: MlflowClient, run_id: str, text: str, figures: dict[str, str]) -> dict:
    """Log the card and its figures under ``model_card/`` of the run; returns the text and the card's URI."""
    folder = Path(tempfile.mkdtemp(prefix="leukolab-card-"))
    (folder / "model_card.md").write_text(text)
    for path in figures.values():
        shutil.copy(path, folder / Path(path).name)
    client.log_artifacts(run_id, str(folder), "model_card")
    shutil.rmtree(folder, ignore_errors=True)
    return {"text": text, "uri": f"runs:/{run_id}/model_card/model_card.md"}
