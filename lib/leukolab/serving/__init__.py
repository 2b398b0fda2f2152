"""The prediction API: a FastAPI app over the registered model, its Prometheus metrics and launchers.

``app.create_app`` builds the app from ``settings`` (the limits), ``dependencies`` (what routes take: settings,
metrics, the model loaded at start-up), ``model_slot`` (that model, loaded by :mod:`leukolab.predictor.uri` and
swapped for each new version of an alias), ``errors`` (refusals as exceptions, answered as ``schemas.ErrorBody``),
``uploads`` (reading and decoding images), ``routes`` and ``metrics``;
``launch.start_server`` runs it in the background, ``foreground.serve_forever`` in the foreground, as
``python -m leukolab.serving`` and ``leukolab serve`` do with the options of ``options.add_serve_arguments``.
"""
