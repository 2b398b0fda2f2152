"""The referral tags ``40_publish`` sets on a registered version: the threshold ``30_evaluate`` chose on the selection
split (:mod:`leukolab.evaluation.selective`), with the target risk and the coverage it had. The rule that applies
the threshold, and reads it back from the tag, is :mod:`leukolab.predictor.decision`.
"""

from __future__ import annotations

from leukolab.predictor.decision import THRESHOLD_TAG


def referral_tags(referral: dict) -> dict[str, str]:
    """The version tags of ``30_evaluate``'s ``referral`` output: the threshold (exact), the target risk, and the
    coverage and risk on the selection and report splits."""
    selection, report = referral["selection_split"], referral["report_split"]
    tags = {THRESHOLD_TAG: repr(float(referral["threshold"])), "referral_target_risk": str(referral["target_risk"]),
            f"referral_{selection}_coverage": f"{referral['selection']['coverage']:.4f}"}
    overall = referral["report"]["overall"]
    tags[f"referral_{report}_coverage"] = f"{overall['coverage']:.4f}"
    if overall["risk"] is not None:
        tags[f"referral_{report}_risk"] = f"{overall['risk']:.4f}"
    return tags
