"""The pipeline runner: the stage notebooks of ``params/pipeline.yaml`` under papermill, incremental,
resumable and parallel, with a lineage record per run.

``graph`` (the stage graph and task selection), ``keys`` (what makes a task up to date), ``lineage``
(``runs/<run-id>/lineage.json`` and the cache), ``execute`` (one notebook in a child process, with a
timeout), ``progress`` (a line per task), ``runner`` (``run_pipeline``), ``dag`` (text and picture).
The runner imports MLflow and papermill, so it is imported from ``leukolab.pipeline.runner``.
"""

from leukolab.pipeline.graph import Plan, Task, plan, select
from leukolab.pipeline.lineage import all_runs, read_lineage

__all__ = ["Plan", "Task", "all_runs", "plan", "read_lineage", "select"]
