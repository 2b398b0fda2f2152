"""Scores of predictions against the truth, and their bootstrap intervals: pure numpy, no model and no I/O."""

HEADLINE = ("accuracy", "macro_f1", "roc_auc_ovr", "ece", "dice", "iou", "latency_ms_per_image")
"""The metrics the evaluation tables and ``leukolab compare`` show first."""
