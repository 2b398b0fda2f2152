"""The Spark path of ``leukolab predict``: the same batches scored on executors, the model broadcast once.

The driver downloads the pinned model version, zips its folder and broadcasts the bytes; each Python worker
unpacks and loads it on its first batch and keeps it for the next ones (``spark.python.worker.reuse``, Spark's
default), so executors need neither the tracking store nor a network route to it: only this library and its
dependencies installed, and, with ``explain_dir``, that folder on a file system they share with the driver.
"""

from __future__ import annotations

import atexit
import hashlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import mlflow

from leukolab.data.spark import spark_session
from leukolab.predictor.smear_model import SmearModel
from leukolab.scoring.input_files import ScoreItem
from leukolab.scoring.rows import score_batch

_EXECUTOR_MODELS: dict[str, SmearModel] = {}
"""This Python worker's models, by the digest of their broadcast zip."""


def packed_model(model_uri: str) -> tuple[bytes, SmearModel]:
    """The model folder behind ``model_uri`` (pinned: ``models:/name/version`` or ``runs:/``) as zip bytes, and the
    model loaded from them here (for its classes and task)."""
    scratch = Path(tempfile.mkdtemp(prefix="leukolab-predict-"))
    try:
        folder = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(scratch / "model"))
        data = Path(shutil.make_archive(str(scratch / "model"), "zip", folder)).read_bytes()
        return data, mlflow.pyfunc.load_model(folder).unwrap_python_model()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def score_on_spark(packed: bytes, batches: list[list[ScoreItem]], threshold: float | None, master: str,
                   explain_dir: str | None = None) -> Iterator[dict]:
    """The rows of ``batches`` (in order) scored by :func:`~leukolab.scoring.rows.score_batch` on ``master``, one
    task per batch; a session this call starts is stopped at the end."""
    from pyspark.sql import SparkSession

    started_here = SparkSession.getActiveSession() is None
    spark = spark_session(master, app_name="leukolab-predict")
    try:
        model_zip, digest = spark.sparkContext.broadcast(packed), hashlib.sha256(packed).hexdigest()

        def score_partition(partition: Iterator[list[ScoreItem]]) -> Iterator[dict]:
            model = _executor_model(digest, model_zip)
            for batch in partition:
                yield from score_batch(model, batch, threshold, explain_dir)

        yield from spark.sparkContext.parallelize(batches, max(len(batches), 1)).mapPartitions(score_partition).toLocalIterator()
    finally:
        if started_here:
            spark.stop()


def _executor_model(digest: str, model_zip) -> SmearModel:
    """The broadcast model, unpacked and loaded on this worker's first call, then reused."""
    if digest not in _EXECUTOR_MODELS:
        folder = Path(tempfile.mkdtemp(prefix="leukolab-executor-model-"))
        atexit.register(shutil.rmtree, folder, True)
        (folder / "model.zip").write_bytes(model_zip.value)
        shutil.unpack_archive(folder / "model.zip", folder / "model")
        _EXECUTOR_MODELS[digest] = mlflow.pyfunc.load_model(str(folder / "model")).unwrap_python_model()
    return _EXECUTOR_MODELS[digest]
