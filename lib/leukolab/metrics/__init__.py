"""Scores of predictions against the truth, and their bootstrap intervals: pure numpy, no model and no I/O."""
