"""The promotion gate's provenance check: a version becomes ``champion`` only with the evidence that its figures
are honest, unless someone overrides it on the record.

The evidence, from ``30_evaluate``'s output and the dataset's manifest: which split strategy reported, the
dataset's fingerprint (the one the candidate was trained on), the leakage audit with nothing straddling, the
shortcut-probe table, and (when the dataset has an acquisition key) the acquisition-aware figure.
"""

from __future__ import annotations


class PromotionRefused(ValueError):
    """The registry would not set ``champion``: the evaluation lacks provenance and no override was given."""


def provenance_problems(evaluation: dict, manifest: dict, trained_on: str | None) -> list[str]:
    """What is missing or wrong for a promotion; empty when the evidence is complete.

    ``trained_on``: the candidate run's ``dataset_fingerprint`` tag.
    """
    problems = []
    if not evaluation.get("split_strategy"):
        problems.append("the evaluation does not say which split strategy its figures come from")
    fingerprint = manifest.get("fingerprint")
    if not fingerprint:
        problems.append("the dataset has no fingerprint")
    elif trained_on and trained_on != fingerprint:
        problems.append(f"the candidate was trained on dataset {trained_on}, the evaluation used {fingerprint}")
    leakage = manifest.get("leakage")
    if not leakage:
        problems.append("the dataset has no leakage audit")
    else:
        leaked = {k: v for k, v in leakage.items() if k.startswith("grouped_") and k != "grouped_test_images" and v}
        if leaked:
            problems.append(f"the leakage audit finds test images with a copy or their patient in train: {leaked}")
    acquisition = manifest.get("acquisition", {})
    if acquisition.get("straddling_images"):
        problems.append(f"{acquisition['straddling_images']} acquisition-aware evaluation images share a group with train")
    if not evaluation.get("shortcut_probes"):
        problems.append("the evaluation has no shortcut-probe table")
    if acquisition.get("available") and not evaluation.get("acquisition_aware"):
        problems.append("the dataset has an acquisition key but the evaluation has no acquisition-aware figure")
    return problems


def promotion_check(problems: list[str], override: str | None) -> dict | None:
    """``None`` when nothing is missing; the record of an override (``{"reason", "problems"}``) when one is given;
    else :class:`PromotionRefused` naming every problem and how to override."""
    if not problems:
        return None
    if override and override.strip():
        return {"reason": override.strip(), "problems": problems}
    raise PromotionRefused("refusing to set @champion: " + "; ".join(problems) + ". Run the evaluation that supplies "
                           "the evidence, or give promotion_override='<why>' (recorded on the version and its card)")
