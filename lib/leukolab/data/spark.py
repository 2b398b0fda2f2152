"""A Spark session for the ETL, local by default, any ``spark.master`` by parameter."""

from __future__ import annotations

import logging
import os
import sys
from urllib.parse import urlsplit

from leukolab.config import workspace

log = logging.getLogger(__name__)


def spark_session(master: str = "local[*]", app_name: str = "leukolab-etl", arrow_batch_size: int = 64, **conf):
    """Create (or reuse) a SparkSession.

    Python workers must run this interpreter (the one with Pillow and leukolab),
    not the ``python3`` on PATH, so ``PYSPARK_PYTHON`` is set to it unless given.
    ``arrow_batch_size`` bounds the rows (images) per Arrow batch sent to workers.
    """
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if master.startswith("local") or _on_loopback(master):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # stay on loopback; a remote cluster needs a routable address
    from pyspark.sql import SparkSession

    scratch = workspace() / "data" / "spark"
    builder = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(arrow_batch_size))
        .config("spark.sql.warehouse.dir", str(scratch / "warehouse"))
        .config("spark.local.dir", str(scratch / "tmp"))
        .config("spark.driver.extraJavaOptions", f"-Dderby.system.home={scratch}")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
    )
    for key, value in conf.items():
        builder = builder.config(key, str(value))
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    log.info("Spark %s session on %s", session.version, master)
    return session


def _on_loopback(master: str) -> bool:
    """Whether ``master`` is a cluster on this machine's loopback (``leukolab cluster up``): the driver stays there too."""
    host = urlsplit(master).hostname or ""
    return host == "localhost" or host.startswith("127.")
