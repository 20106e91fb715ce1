"""The Spark session of ``catalogfs serve``: one driver, two endpoints over one catalogue.

The session is the one every job gets (:func:`catalogfs.spark.build_spark`) with these settings
added (docs/design/shared-catalog.md, section 1, has how each was verified):

* Spark Connect as a driver plugin (``spark.plugins``), its gRPC server bound to
  ``server.bind_host:server.connect_port``. Clients must present the token, checked by the guard's
  ``ConnectTokenInterceptor`` against the token's SHA-256 in a 0600 file
  (:func:`catalogfs.server_auth.write_token_hash`): the token itself is nowhere in the JVM — not on
  its command line (``ps``), in its environment or system properties, or in a Spark setting —
  where SQL (``${env:…}``, ``SET``) could read it back. Spark's own ``spark.connect.authenticate.token``
  stays unset.
* HiveServer2 (Thrift binary, JDBC) bound to ``server.bind_host:server.jdbc_port``, started in the
  same driver by :func:`start_jdbc` (the guard's ``GuardedThriftServer``: a client's session
  settings are checked before they apply); each JDBC session is a new Spark session of the same
  SharedState (same metastore client, warehouse and Delta log cache). Logins are checked against
  the users file (``server.jdbc_auth: password``, :mod:`catalogfs.server_auth`).
* Consumers cannot change what the server is: variable substitution (``${env:…}``) and SQL on files
  are off for every session; FAIR scheduling with a ``consumers`` pool (JDBC sessions, ``catalogfs
  sql`` over Connect) beside the jobs' ``default`` pool; JDBC statements are cancelled after
  ``server.query_timeout_seconds`` and their results fetched incrementally.
* Delta's two jars on the driver's class path as well as in ``spark.jars``: HiveServer2's session
  threads do not see ``spark.jars``, and without them every JDBC connection fails with
  ``ClassNotFoundException: …DeltaCatalog``. Only those two: all the Ivy jars there clash (Jackson).
* HiveServer2's scratch, resources and operation-log folders under ``<data_root>/hive`` instead of
  ``/tmp``.
* The guard (:mod:`catalogfs.jdbc_guard`): its jar on the driver's class path, its extension in
  ``spark.sql.extensions`` after Delta's, ``server.jdbc_read_only`` passed to it as
  ``spark.catalogfs.jdbc.readOnly``.
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
from catalogfs.permissions import write_private
from catalogfs.jdbc_guard import (
    GUARD_CLASS, READ_ONLY_KEY, TOKEN_HASH_FILE_KEY, TOKEN_INTERCEPTOR_CLASS,
    USERS_FILE_KEY, guard_jar,
)
from catalogfs.server_auth import ensure_users_file, token_hash_file, users_file, write_token_hash
from catalogfs.spark import session_settings

CONNECT_PLUGIN = "org.apache.spark.sql.connect.SparkConnectPlugin"
CONSUMER_POOL = "consumers"  # JdbcGuardExtension.CONSUMER_POOL
_POOLS = """<?xml version="1.0"?>
<!-- catalogfs serve: jobs (Spark Connect, the default pool) and consumers (JDBC, catalogfs sql) share
     the task slots fairly; a consumer's query is scheduled as soon as a slot frees. -->
<allocations>
  <pool name="default"><schedulingMode>FIFO</schedulingMode><weight>1</weight><minShare>0</minShare></pool>
  <pool name="consumers"><schedulingMode>FAIR</schedulingMode><weight>2</weight><minShare>1</minShare></pool>
</allocations>
"""
_DRIVER_CLASSPATH_JARS = ("io.delta_delta-spark_", "io.delta_delta-storage-")


def new_token() -> str:
    """A random Connect token (48 hex digits): safe in a URL, unguessable."""
    return secrets.token_hex(24)


def connect_url(server: ServerConfig, token: str) -> str:
    """``sc://localhost:<port>/;token=…``. The host is spelled ``localhost`` on loopback: with a
    token, pyspark's client speaks plaintext gRPC only to ``localhost`` (to ``127.0.0.1`` it tries
    TLS and never connects)."""
    host = "localhost" if server.connect_loopback else _url_host(server.connect_bind_host)
    return f"sc://{host}:{server.connect_port}/;token={token}"


def jdbc_url(server: ServerConfig) -> str:
    host = "127.0.0.1" if server.bind_host in ("0.0.0.0", "localhost") else _url_host(server.bind_host)
    return f"jdbc:hive2://{host}:{server.jdbc_port}/default" + (";ssl=true" if server.tls.enabled else "")


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


def scheduler_pools_file(data_root: Path) -> Path:
    return data_root / ".serve" / "fairscheduler.xml"


def write_scheduler_pools(data_root: Path) -> Path:
    """The FAIR scheduler's pools (jobs, consumers) in ``<data_root>/.serve/fairscheduler.xml``."""
    return write_private(scheduler_pools_file(data_root), _POOLS)


def prepare_credentials(cfg: Config, token: str) -> tuple[dict[str, str], dict[str, str]]:
    """Before the server's JVM starts: refuse an exposed server without logins or TLS, write the
    token's hash and the scheduler pools, make (or check) the JDBC users file and, with
    ``server.tls``, the JDBC endpoint's keystore. Returns the Spark settings these add (TLS) and the
    Hadoop settings that :func:`start_jdbc` sets in the running JVM (the keystore's password: not
    on the JVM's command line, where ``ps`` shows it, and not a Spark setting SQL could read)."""
    check_exposure(cfg.server)
    write_token_hash(cfg.storage.data_root, token)
    write_scheduler_pools(cfg.storage.data_root)
    if cfg.server.jdbc_auth == "password":
        ensure_users_file(cfg)
    if not cfg.server.tls.enabled:
        return {}, {}
    keystore, password = write_keystore(cfg.server.tls, cfg.storage.data_root / ".serve")
    return ({"spark.hadoop.hive.server2.use.SSL": "true", "spark.hadoop.hive.server2.keystore.path": str(keystore)},
            {"hive.server2.keystore.password": password})


def check_exposure(server: ServerConfig) -> None:
    """A JDBC endpoint reachable from other hosts must ask for a password and speak TLS; the Connect
    endpoint (no TLS in Spark 4.2) stays on loopback."""
    if not server.connect_loopback:
        raise ConfigError(f"server.connect_bind_host={server.connect_bind_host} is not loopback: Spark "
                          f"Connect has no TLS, so its token would cross the network in the clear; keep it on "
                          f"127.0.0.1 and reach it through an SSH tunnel or a TLS proxy (docs/security.md, Security model)")
    if server.loopback:
        return
    if server.jdbc_auth != "password":
        raise ConfigError(f"server.bind_host={server.bind_host} is not loopback and server.jdbc_auth is "
                          f"{server.jdbc_auth!r}: anyone on the network could read the catalogue; set "
                          f"server.jdbc_auth=password (docs/security.md, Security model)")
    if not server.tls.enabled:
        raise ConfigError(f"server.bind_host={server.bind_host} is not loopback and server.tls is not set: "
                          f"JDBC passwords would cross the network in the clear; set server.tls.cert_file "
                          f"and server.tls.key_file (docs/security.md, Security model)")


def write_keystore(tls, folder: Path) -> tuple[Path, str]:
    """The PEM certificate and key of ``tls`` as a PKCS#12 keystore for HiveServer2 (0600, a new
    random password each start). Raises :class:`ConfigError` naming the key."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, load_pem_private_key, pkcs12

    try:
        certs = x509.load_pem_x509_certificates(Path(tls.cert_file).read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"server.tls.cert_file {tls.cert_file}: not a readable PEM certificate ({exc})") from None
    try:
        key = load_pem_private_key(Path(tls.key_file).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"server.tls.key_file {tls.key_file}: not a readable unencrypted PEM key ({exc})") from None
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, dsa.DSAPrivateKey,
                            ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        raise ConfigError(f"server.tls.key_file {tls.key_file}: a {type(key).__name__} cannot go into a TLS "
                          f"keystore; use an RSA or EC key")
    password = secrets.token_urlsafe(24)  # never on a command line: start_jdbc sets it in the JVM
    blob = pkcs12.serialize_key_and_certificates(b"catalogfs", key, certs[0], certs[1:] or None,
                                                 BestAvailableEncryption(password.encode()))
    return write_private(folder / "jdbc-keystore.p12", blob), password


def server_settings(cfg: Config) -> dict[str, str]:
    """The Spark settings ``catalogfs serve`` adds to the job settings (see the module docstring).
    Values the config already has for ``spark.plugins``, ``spark.sql.extensions`` and
    ``spark.driver.extraClassPath`` are kept, ahead of the server's."""
    server, hive, root = cfg.server, cfg.storage.data_root / "hive", cfg.storage.data_root
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
        "spark.connect.grpc.binding.address": server.connect_bind_host,
        "spark.connect.grpc.binding.port": str(server.connect_port),
        "spark.hadoop.hive.server2.thrift.bind.host": server.bind_host,
        "spark.hadoop.hive.server2.thrift.port": str(server.jdbc_port),
        "spark.hadoop.hive.server2.transport.mode": "binary",
        "spark.hadoop.hive.exec.scratchdir": str(hive / "scratch"),
        "spark.hadoop.hive.exec.local.scratchdir": str(hive / "local-scratch"),
        "spark.hadoop.hive.downloaded.resources.dir": str(hive / "resources" / "${hive.session.id}_resources"),
        "spark.hadoop.hive.server2.logging.operation.log.location": str(hive / "operation_logs"),
        "spark.driver.extraClassPath": ":".join(dict.fromkeys(classpath)),
        "spark.connect.grpc.interceptor.classes": TOKEN_INTERCEPTOR_CLASS,
        TOKEN_HASH_FILE_KEY: str(token_hash_file(root)),
        "spark.hadoop.hive.server2.authentication": "CUSTOM" if server.jdbc_auth == "password" else "NONE",
        USERS_FILE_KEY: str(users_file(cfg)) if server.jdbc_auth == "password" else "",
        "spark.sql.variable.substitute": "false",
        "spark.sql.runSQLOnFiles": "false",
        "spark.scheduler.mode": "FAIR",
        "spark.scheduler.allocation.file": str(scheduler_pools_file(root)),
        "spark.sql.thriftserver.scheduler.pool": CONSUMER_POOL,
        "spark.sql.thriftServer.queryTimeout": f"{server.query_timeout_seconds:g}s",
        "spark.sql.thriftServer.interruptOnCancel": "true",
        "spark.sql.thriftServer.incrementalCollect": "true",
    }


def server_config(cfg: Config, settings: dict[str, str]) -> Config:
    """``cfg`` with ``settings`` added to ``spark.settings`` (``build_spark`` applies them), and
    ``server.use=never``: the server's own session is the driver, never a client of a server."""
    spark = cfg.spark.model_copy(update={"settings": {**cfg.spark.settings, **settings}})
    return cfg.model_copy(update={"spark": spark, "server": cfg.server.model_copy(update={"use": "never"})})


def ensure_ports_free(server: ServerConfig) -> None:
    """Raise :class:`ConfigError` naming the key when a port is already taken on ``bind_host``
    (HiveServer2 would otherwise fail in its own thread, after Spark started)."""
    if server.connect_port == server.jdbc_port:
        raise ConfigError(f"server.connect_port and server.jdbc_port are both {server.jdbc_port}")
    for key, host, port in (("server.connect_port", server.connect_bind_host, server.connect_port),
                            ("server.jdbc_port", server.bind_host, server.jdbc_port)):
        try:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not "in use"
                probe.bind((host, port))
        except OSError as exc:
            what = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc.strerror})"
            raise ConfigError(f"{key}: port {port} on {host} {what}; choose another with "
                              f"--set {key}=PORT") from None


def start_jdbc(spark: Any, *, authenticated: bool, hadoop: dict[str, str] | None = None) -> Any:
    """Start the guarded HiveServer2 in this driver over ``spark``'s catalogue; returns the JVM
    server (``.stop()``). ``authenticated``: logins are checked (roles come from the users file);
    ``hadoop``: settings put into the running JVM's Hadoop configuration first (HiveServer2 reads
    its conf from there)."""
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    for key, value in (hadoop or {}).items():
        conf.set(key, value)
    return spark._jvm.catalogfs.GuardedThriftServer.start(spark._jsparkSession, authenticated)


def warm_up(spark: Any) -> None:
    """Open the metastore (Derby boots, the lock is taken) and run one query, so that the first
    client does not pay for it."""
    spark.sql("SHOW DATABASES").collect()
    spark.sql("SELECT 1").collect()
