"""A trained model as the registry keeps it: the MLflow pyfunc model, its registration and alias, its model card."""
