"""The published model as its consumers use it: the pyfunc model, loading by URI, the decision rule, gated TTA.

``smear_model`` is the MLflow pyfunc model (preprocessing, network, out-of-distribution check, postprocessing) and
its logging; ``uri`` resolves a model URI to its registry version (with the version's referral threshold and TTA
gate) and loads it; ``decision`` is the accept/refer rule every consumer applies; ``gated_tta`` applies the TTA gate.
Serving, scoring, the demo, review and evaluation build on it; publishing chooses what it carries.
"""

DEFAULT_MODEL_URI = "models:/leukolab@champion"
"""The published champion: the model the API, ``leukolab predict``, the demo and ``50_serve`` use unless told
another (``--model-uri``, ``LEUKOLAB_MODEL_URI``, the ``model_uri`` parameter)."""
