"""The prediction API: a FastAPI app over the registered model, its Prometheus metrics and launchers.

``app.create_app`` builds the app (``model`` resolves and loads the model,
``schemas`` holds the response bodies, ``metrics`` the Prometheus metrics);
``launch.start_server`` runs it in the background, ``launch.serve_forever`` in
the foreground, as ``python -m leukolab.serving`` does.
"""
