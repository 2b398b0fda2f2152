"""How stages hand results on: a record per stage output in the pipeline run's folder (:mod:`.records`), over
the JSON files it is kept in (:mod:`.outputs`)."""

from leukolab.stages.outputs import latest_run_with, read_output, read_outputs, run_folder, write_output
from leukolab.stages.records import resolve_dataset

__all__ = ["latest_run_with", "read_output", "read_outputs", "resolve_dataset", "run_folder", "write_output"]
