"""One experiment YAML trained end to end in an MLflow run, and its resampling (cross-validation folds, seeds)."""
