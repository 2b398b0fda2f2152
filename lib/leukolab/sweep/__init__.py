"""``leukolab sweep``: a hyperparameter search over one experiment with Optuna, each trial a stage notebook run.

:mod:`.space` is what may be searched (from the experiment, or a YAML file), :mod:`.trial` what a trial's notebook
reports each epoch (and how a pruned trial stops), :mod:`.study` the Optuna study in the workspace (resume, best
trial, summary) and :mod:`.run` the sweep itself (ETL, trials in parallel, MLflow).
"""
