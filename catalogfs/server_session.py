"""The Spark session of ``catalogfs serve``: one driver, two endpoints over one catalogue.

The session is the one every job gets (:func:`catalogfs.spark.build_spark`) with these settings
added (docs/design/shared-catalog.md, section 1, has how each was verified):

* Spark Connect as a driver plugin (``spark.plugins``), its gRPC server bound to
  ``server.bind_host:server.connect_port``. Clients must present the token. The token reaches the
  JVM through its environment (``SPARK_CONNECT_AUTHENTICATE_TOKEN``, which Spark reads when
  ``spark.connect.authenticate.token`` is not set): a ``--conf`` would put it on the JVM's command
  line, which every user of the machine can read in ``ps``.
* HiveServer2 (Thrift binary, JDBC) bound to ``server.bind_host:server.jdbc_port``, started in the
  same driver by :func:`start_jdbc`; each JDBC session is a new Spark session of the same
  SharedState (same metastore client, warehouse and Delta log cache).
* Delta's two jars on the driver's class path as well as in ``spark.jars``: HiveServer2's session
  threads do not see ``spark.jars``, and without them every JDBC connection fails with
  ``ClassNotFoundException: …DeltaCatalog``. Only those two: all the Ivy jars there clash (Jackson).
* HiveServer2's scratch, resources and operation-log folders under ``<data_root>/hive`` instead of
  ``/tmp``.
* The guard of the JDBC endpoint (:mod:`catalogfs.jdbc_guard`): its jar on the driver's class
  path, its class in ``spark.sql.extensions`` after Delta's, and ``server.jdbc_read_only`` passed
  to it as ``spark.catalogfs.jdbc.readOnly``.
"""

from __future__ import annotations

import errno
import secrets
import socket
from pathlib import Path
from typing import Any

from catalogfs.config import Config, ServerConfig
from catalogfs.errors import ConfigError
from catalogfs.jars import local_delta_jars
from catalogfs.jdbc_guard import GUARD_CLASS, READ_ONLY_KEY, guard_jar
from catalogfs.spark import session_settings

CONNECT_PLUGIN = "org.apache.spark.sql.connect.SparkConnectPlugin"
TOKEN_ENV = "SPARK_CONNECT_AUTHENTICATE_TOKEN"
_DRIVER_CLASSPATH_JARS = ("io.delta_delta-spark_", "io.delta_delta-storage-")


def new_token() -> str:
    """A random Connect token (48 hex digits): safe in a URL, unguessable."""
    return secrets.token_hex(24)


def connect_url(server: ServerConfig, token: str) -> str:
    """``sc://localhost:<port>/;token=…``. The host is spelled ``localhost`` on loopback: with a
    token, pyspark's client speaks plaintext gRPC only to ``localhost`` (to ``127.0.0.1`` it tries
    TLS and never connects)."""
    host = "localhost" if server.loopback else _url_host(server.bind_host)
    return f"sc://{host}:{server.connect_port}/;token={token}"


def jdbc_url(server: ServerConfig) -> str:
    host = "127.0.0.1" if server.bind_host in ("0.0.0.0", "localhost") else _url_host(server.bind_host)
    return f"jdbc:hive2://{host}:{server.jdbc_port}/default"


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def driver_classpath_jars(cfg: Config) -> list[Path]:
    """Delta's spark and storage jars, from the local jars that set-up recorded."""
    jars = local_delta_jars(cfg.spark.ivy_cache)
    picked = [jar for jar in jars or [] if jar.name.startswith(_DRIVER_CLASSPATH_JARS)]
    if len(picked) != len(_DRIVER_CLASSPATH_JARS):
        raise ConfigError(
            f"catalogfs serve needs the Delta jars resolved at set-up (none recorded under "
            f"{cfg.spark.ivy_cache}/local-jars): run `make env` (or python -m catalogfs.spark) first")
    return picked


def server_settings(cfg: Config) -> dict[str, str]:
    """The Spark settings ``catalogfs serve`` adds to the job settings (see the module docstring).
    Values the config already has for ``spark.plugins``, ``spark.sql.extensions`` and
    ``spark.driver.extraClassPath`` are kept, ahead of the server's."""
    server, hive = cfg.server, cfg.storage.data_root / "hive"
    own = cfg.spark.settings
    plugins = [p for p in own.get("spark.plugins", "").split(",") if p.strip()]
    classpath = [*filter(None, own.get("spark.driver.extraClassPath", "").split(":")),
                 *map(str, driver_classpath_jars(cfg))]
    classpath.append(str(guard_jar(cfg.spark.ivy_cache)))
    extensions = [e for e in session_settings(cfg)["spark.sql.extensions"].split(",") if e.strip()]
    return {
        "spark.sql.extensions": ",".join(dict.fromkeys([*extensions, GUARD_CLASS])),
        READ_ONLY_KEY: str(server.jdbc_read_only).lower(),
        "spark.plugins": ",".join(dict.fromkeys([*plugins, CONNECT_PLUGIN])),
        "spark.connect.grpc.binding.address": server.bind_host,
        "spark.connect.grpc.binding.port": str(server.connect_port),
        "spark.hadoop.hive.server2.thrift.bind.host": server.bind_host,
        "spark.hadoop.hive.server2.thrift.port": str(server.jdbc_port),
        "spark.hadoop.hive.server2.transport.mode": "binary",
        "spark.hadoop.hive.exec.scratchdir": str(hive / "scratch"),
        "spark.hadoop.hive.exec.local.scratchdir": str(hive / "local-scratch"),
        "spark.hadoop.hive.downloaded.resources.dir": str(hive / "resources" / "${hive.session.id}_resources"),
        "spark.hadoop.hive.server2.logging.operation.log.location": str(hive / "operation_logs"),
        "spark.driver.extraClassPath": ":".join(dict.fromkeys(classpath)),
    }


def server_config(cfg: Config, settings: dict[str, str]) -> Config:
    """``cfg`` with ``settings`` added to ``spark.settings`` (``build_spark`` applies them)."""
    spark = cfg.spark.model_copy(update={"settings": {**cfg.spark.settings, **settings}})
    return cfg.model_copy(update={"spark": spark})


def ensure_ports_free(server: ServerConfig) -> None:
    """Raise :class:`ConfigError` naming the key when a port is already taken on ``bind_host``
    (HiveServer2 would otherwise fail in its own thread, after Spark started)."""
    if server.connect_port == server.jdbc_port:
        raise ConfigError(f"server.connect_port and server.jdbc_port are both {server.jdbc_port}")
    for key, port in (("server.connect_port", server.connect_port), ("server.jdbc_port", server.jdbc_port)):
        try:
            family = socket.AF_INET6 if ":" in server.bind_host else socket.AF_INET
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not "in use"
                probe.bind((server.bind_host, port))
        except OSError as exc:
            what = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc.strerror})"
            raise ConfigError(f"{key}: port {port} on {server.bind_host} {what}; choose another with "
                              f"--set {key}=PORT") from None


def start_jdbc(spark: Any) -> Any:
    """Start HiveServer2 in this driver over ``spark``'s catalogue; returns the JVM server (``.stop()``)."""
    thriftserver = spark._jvm.org.apache.spark.sql.hive.thriftserver
    return thriftserver.HiveThriftServer2.startWithContext(spark._jsparkSession.sqlContext())


def warm_up(spark: Any) -> None:
    """Open the metastore (Derby boots, the lock is taken) and run one query, so that the first
    client does not pay for it."""
    spark.sql("SHOW DATABASES").collect()
    spark.sql("SELECT 1").collect()
