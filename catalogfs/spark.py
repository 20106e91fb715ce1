"""The one place that builds Spark sessions: Delta enabled, a persistent catalog under the data root.

Local runs get ``local[*]`` (or the configured master) with the Delta jars resolved by Spark's own
package resolution (Ivy, from Maven Central) and a Derby-backed Hive catalog under the data root,
so tables written by one run are queryable by name from the next. Under ``spark-submit`` the master
and jars given there win.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
import sys

from pyspark.sql import SparkSession

from catalogfs.config import PROJECT_ROOT, Config

log = logging.getLogger(__name__)

LOG4J_CONFIG = PROJECT_ROOT / "conf" / "log4j2.properties"


def running_under_spark_submit() -> bool:
    """True when this Python process was started by spark-submit (the JVM is already running)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def session_settings(cfg: Config) -> dict[str, str]:
    """Every setting the builder applies, as plain strings (also used to write spark-defaults)."""
    storage = cfg.storage
    derby_home = storage.data_root / "derby"
    settings = {
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.sql.catalogImplementation": "hive",
        "spark.sql.warehouse.dir": str(storage.warehouse_dir),
        "spark.hadoop.javax.jdo.option.ConnectionURL":
            f"jdbc:derby:;databaseName={storage.metastore_dir};create=true",
        "spark.hadoop.datanucleus.schema.autoCreateAll": "true",
        "spark.hadoop.hive.metastore.schema.verification": "false",
        "spark.driver.extraJavaOptions":
            f"-Dderby.system.home={derby_home} -Dlog4j.configurationFile={LOG4J_CONFIG.as_uri()}",
        "spark.jars.ivy": str(cfg.spark.ivy_cache),
        "spark.databricks.delta.schema.autoMerge.enabled": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # Arrow batches feed the model: keep them near the model batch, not 10,000 JPEGs.
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(max(cfg.inference.batch_size * 4, 64)),
        "spark.executorEnv.MALLOC_MMAP_MAX_": "0",
        "spark.executorEnv.MALLOC_TRIM_THRESHOLD_": str(512 * 1024 * 1024),
    }
    settings.update(cfg.spark.settings)
    return settings


def build_spark(cfg: Config) -> SparkSession:
    """Create (or return) the session for ``cfg``. Spark is started here and nowhere else."""
    from delta import configure_spark_with_delta_pip

    if cfg.spark.managed:  # Databricks and similar: Delta, catalog and master come with the platform
        return SparkSession.builder.appName(cfg.spark.app_name).getOrCreate()
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # Python workers must run this interpreter (the project's environment), not the system python3.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    (cfg.storage.data_root / "derby").mkdir(parents=True, exist_ok=True)
    cfg.storage.warehouse_dir.mkdir(parents=True, exist_ok=True)
    builder = SparkSession.builder.appName(cfg.spark.app_name)
    if not running_under_spark_submit():
        builder = builder.master(cfg.spark.master)
    for key, value in session_settings(cfg).items():
        builder = builder.config(key, value)
    builder = configure_spark_with_delta_pip(builder)
    log.info("starting Spark (%s); Delta jars come from the Ivy cache %s",
             cfg.spark.master, cfg.spark.ivy_cache)
    spark = builder.enableHiveSupport().getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def delta_packages() -> str:
    """Maven coordinates of the Delta jars for the installed delta-spark and pyspark: the artifact
    name carries Spark's major.minor (``io.delta:delta-spark_4.2_2.13:<delta version>``)."""
    from importlib.metadata import version

    import pyspark

    spark_minor = ".".join(pyspark.__version__.split(".")[:2])
    return f"io.delta:delta-spark_{spark_minor}_2.13:{version('delta_spark')}"


def write_spark_defaults(cfg: Config) -> Path:
    """Write ``spark-defaults.conf`` into the environment's Spark so that a bare
    ``spark-submit jobs/<job>.py`` gets the Delta jars (the builder cannot add jars to a JVM that
    spark-submit already started). Returns the file written."""
    import pyspark

    conf_dir = Path(os.environ.get("SPARK_CONF_DIR") or Path(pyspark.__file__).parent / "conf")
    conf_dir.mkdir(parents=True, exist_ok=True)
    path = conf_dir / "spark-defaults.conf"
    python = Path(os.path.realpath(sys.prefix)) / "bin" / "python"
    lines = [
        "# Written by catalogfs (scripts/ensure_env.sh): Delta for spark-submit in this environment.",
        f"spark.jars.packages {delta_packages()}",
        f"spark.jars.ivy {cfg.spark.ivy_cache}",
        "spark.sql.extensions io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog org.apache.spark.sql.delta.catalog.DeltaCatalog",
        f"spark.pyspark.python {python}",
        f"spark.pyspark.driver.python {python}",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


if __name__ == "__main__":
    from catalogfs.config import load_config

    print(write_spark_defaults(load_config()))
