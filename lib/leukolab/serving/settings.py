"""The API's settings: the model to serve and its limits, read from ``LEUKOLAB_<NAME>`` environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

from leukolab.images import DEFAULT_MAX_PIXELS
from leukolab.predictor import DEFAULT_MODEL_URI


@dataclass(frozen=True)
class ServingSettings:
    """Serving limits; :meth:`from_env` reads each from ``LEUKOLAB_<NAME>`` (e.g. ``LEUKOLAB_MAX_PIXELS``)."""

    model_uri: str = DEFAULT_MODEL_URI
    model_poll_seconds: float = 30.0
    """How often an alias URI (``models:/leukolab@champion``) is resolved again to follow it to a new version (hot
    swap, :class:`~leukolab.serving.model_slot.ModelSlot`); 0: never, the version found at start-up serves."""
    max_upload_bytes: int = 10 * 1024 * 1024
    """Largest file accepted (each file of a batch), refused before decoding."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_batch_files: int = 32
    """Most files one ``POST /predict/batch`` may send."""
    max_batch_size: int = 8
    """Most images in one forward pass (on CPU, larger batches of a small CNN run slower per image)."""
    max_wait_ms: float = 2.0
    """How long a forward pass that found several images waiting waits for more (a lone image goes at once)."""
    inference_workers: int = 2
    """Forward passes that may run at the same time, each in its own thread."""
    torch_threads: int = 0
    """Threads of each forward pass (``torch.set_num_threads``); 0: the server gives each worker its share of the
    cores (see :func:`leukolab.serving.foreground.serve_forever`), an app made in another process leaves torch as it is."""
    max_pending: int = 64
    """Most prediction requests held at once (queued or in a forward pass); past it a request is refused at once with
    503 and ``Retry-After`` (:mod:`leukolab.serving.admission`); 0: no limit."""
    retry_after_seconds: float = 1.0
    """The ``Retry-After`` of those 503s (whole seconds, at least 1)."""
    drain_seconds: float = 20.0
    """On SIGTERM: how long the requests already held may take to finish before the server exits anyway (keep
    compose's ``stop_grace_period`` above it)."""
    api_token: str = field(default="", repr=False)
    """The bearer token every route but health, readiness and metrics requires (``Authorization: Bearer ...``);
    empty: none (see :mod:`leukolab.serving.auth`). Never logged."""
    low_confidence_threshold: float = 0.5
    low_confidence_run: int = 5
    colour_drift_threshold: float = 0.1
    colour_window: int = 100

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ServingSettings:
        environ = os.environ if environ is None else environ
        values = {}
        for field in fields(cls):
            name = f"LEUKOLAB_{field.name.upper()}"
            if environ.get(name):
                try:
                    values[field.name] = type(field.default)(environ[name])
                except ValueError:
                    raise ValueError(f"{name}={environ[name]!r} is not a valid {type(field.default).__name__}") from None
        return cls(**values)
