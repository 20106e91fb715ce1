"""The one place that builds Spark sessions: Delta enabled, a persistent catalog under the data root.

Local runs get ``local[*]`` (or the configured master) and a Derby-backed Hive catalog under the
data root, so tables written by one run are queryable by name from the next. Under ``spark-submit``
the master and jars given there win; on a managed platform (``spark.managed``) the session is the
platform's.

Delta's jars: set-up (``python -m catalogfs.spark``, run by ``scripts/ensure_env.sh``) resolves them
once into ``<spark.ivy_cache>/local-jars/<key>/`` (:mod:`catalogfs.jars`), and sessions then get them
as local files (``spark.jars``): no Ivy resolution and no Ivy report at start. Without that record
(set-up never ran) a session falls back to package resolution from Maven Central at every start, as
``delta.configure_spark_with_delta_pip`` does, and says once (INFO) how to pre-resolve.

File modes: the data root is created 0700, and the JVM starts with umask 077 and Hadoop's
``fs.permissions.umask-mode`` 077, so the files it writes (tables, metastore, staging) are 0600 and
its folders 0700 (:mod:`catalogfs.permissions`).

A data root that was copied or moved: its metastore names the old root's folders. A new session
re-points them at this root before anything reads the catalogue, or refuses (:mod:`catalogfs.relocation`).

The JVM's output: pyspark's launcher starts the JVM with its stdout and stderr redirected to
``<data_root>/logs/spark-<timestamp>-<pid>.log`` (log4j's console appender, Ivy, the JVM itself and
the Python workers it forks all write there; conf/log4j2.properties sets the levels). The newest
:data:`JVM_LOGS_KEPT` such files are kept. :func:`jvm_log_path` names this process's file.
"""

from __future__ import annotations

from contextlib import contextmanager
from datetime import datetime
import atexit
import logging
import os
from pathlib import Path
import re
import subprocess
import sys
from typing import Iterator, Mapping

from pyspark.sql import SparkSession

from catalogfs.catalog_lock import ensure_catalog_free, find_server
from catalogfs.class_archive import LaunchPlan, finish_launch, plan_launch
from catalogfs.config import Config
from catalogfs.packaged import log4j_config
from catalogfs.errors import ServerUnavailable
from catalogfs.jars import delta_packages, jars_dir, local_delta_jars
from catalogfs.permissions import PRIVATE_UMASK_TEXT, ensure_private_dir, private_umask
from catalogfs.relocation import ensure_in_place
from catalogfs.supervisor_state import returning_supervisor

__all__ = ["build_spark", "catalogue_jvm", "default_parallelism", "delta_jar_settings", "delta_packages",
           "derby_url", "is_connect", "jvm_log_path", "running_under_spark_submit", "server_session",
           "session_settings", "write_spark_defaults"]

log = logging.getLogger(__name__)

LOG4J_CONFIG = log4j_config()
JVM_LOGS_KEPT = 20

_jvm_log: Path | None = None  # the log file of the JVM this process started (one per process)
_fallback_explained = False


def running_under_spark_submit() -> bool:
    """True when this Python process was started by spark-submit (the JVM is already running)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def is_connect(spark: SparkSession) -> bool:
    """True for a Spark Connect session (a client of ``catalogfs serve``): no SparkContext, no py4j."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def default_parallelism(spark: SparkSession) -> int:
    """The driver's default parallelism (``sc.defaultParallelism``), also over Spark Connect, where
    there is no SparkContext: then ``spark.default.parallelism`` when set, else the cores of a
    ``local[N]`` / ``local[*]`` master (the server runs on this machine), else this machine's cores."""
    if not is_connect(spark):
        return int(spark.sparkContext.defaultParallelism)
    configured = spark.conf.get("spark.default.parallelism", None)
    if configured:
        return max(1, int(configured))
    master = spark.conf.get("spark.master", None) or ""
    cores = re.fullmatch(r"local\[(\d+|\*)(?:,\s*\d+)?\]", master.strip())
    if cores and cores.group(1) != "*":
        return max(1, int(cores.group(1)))
    return max(1, os.cpu_count() or 1)


def jvm_log_path() -> Path | None:
    """The file that receives the output of the JVM this process started, if it started one."""
    return _jvm_log


def session_settings(cfg: Config) -> dict[str, str]:
    """Every setting the builder applies except the Delta jars (:func:`delta_jar_settings`), as plain strings."""
    storage = cfg.storage
    derby_home = storage.data_root / "derby"
    settings = {
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.sql.catalogImplementation": "hive",
        "spark.sql.warehouse.dir": str(storage.warehouse_dir),
        "spark.hadoop.javax.jdo.option.ConnectionURL": derby_url(storage),
        "spark.hadoop.datanucleus.schema.autoCreateAll": "true",
        "spark.hadoop.hive.metastore.schema.verification": "false",
        "spark.driver.extraJavaOptions":
            f"-Dderby.system.home={derby_home} -Dlog4j.configurationFile={LOG4J_CONFIG.as_uri()}",
        "spark.jars.ivy": str(cfg.spark.ivy_cache),
        # Hadoop's file systems set each new file's and folder's mode from this, not the process's
        # umask (default 022): tables, their logs and staging private to the user, like the rest
        "spark.hadoop.fs.permissions.umask-mode": PRIVATE_UMASK_TEXT,
        "spark.databricks.delta.schema.autoMerge.enabled": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # Arrow batches feed the model: keep them near the model batch, not 10,000 JPEGs.
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(max(cfg.inference.batch_size * 4, 64)),
        "spark.executorEnv.MALLOC_MMAP_MAX_": "0",
        "spark.executorEnv.MALLOC_TRIM_THRESHOLD_": str(512 * 1024 * 1024),
    }
    settings.update(cfg.spark.settings)
    return settings


def delta_jar_settings(ivy_cache: Path, settings: Mapping[str, str] | None = None) -> dict[str, str]:
    """How a session gets Delta: ``spark.jars`` with the local jars that set-up recorded under
    ``ivy_cache`` (and no packages, so Ivy does not run), else ``spark.jars.packages`` with Delta's
    coordinates. Jars or packages already named in ``settings`` are kept, ahead of Delta's."""
    user_jars = (settings or {}).get("spark.jars", "")
    user_packages = (settings or {}).get("spark.jars.packages", "")
    jars = local_delta_jars(ivy_cache)
    # Both keys are always given (maybe empty): a value in spark-defaults.conf, written by set-up for
    # spark-submit, would otherwise be merged in, and the same jar from two paths is an error per jar.
    if jars is not None and not any("," in str(jar) for jar in jars):  # spark.jars is comma-separated
        return {"spark.jars": ",".join(filter(None, [user_jars, *map(str, jars)])),
                "spark.jars.packages": user_packages}
    return {"spark.jars": user_jars,
            "spark.jars.packages": ",".join(filter(None, [user_packages, delta_packages()]))}


def build_spark(cfg: Config) -> SparkSession:
    """Create (or return) the session for ``cfg``. Spark is started here and nowhere else."""
    if cfg.spark.managed:  # Databricks and similar: Delta, catalog and master come with the platform
        return SparkSession.builder.appName(cfg.spark.app_name).getOrCreate()
    if not running_under_spark_submit():
        remote = server_session(cfg)
        if remote is not None:
            return remote
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # Python workers must run this interpreter (the project's environment), not the system python3.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    ensure_private_dir(cfg.storage.data_root)
    (cfg.storage.data_root / "derby").mkdir(parents=True, exist_ok=True)
    cfg.storage.warehouse_dir.mkdir(parents=True, exist_ok=True)
    settings = {"spark.app.name": cfg.spark.app_name, **session_settings(cfg)}
    if not running_under_spark_submit():  # else spark-submit chose the master and the jars
        settings["spark.master"] = cfg.spark.master
        settings.update(delta_jar_settings(cfg.spark.ivy_cache, cfg.spark.settings))
        if delta_packages() in settings["spark.jars.packages"]:
            _explain_fallback(cfg)
        _launch_jvm(settings, cfg)
    builder = SparkSession.builder
    for key, value in settings.items():
        builder = builder.config(key, value)
    log.debug("starting Spark (%s)", settings.get("spark.master", "from spark-submit"))
    spark = builder.enableHiveSupport().getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    if settings["spark.hadoop.javax.jdo.option.ConnectionURL"] == derby_url(cfg.storage):
        # a copied or moved data root: its metastore and registry name the old root (catalogfs.relocation)
        ensure_in_place(cfg.storage, jvm=spark.sparkContext._jvm, tracking_uri=cfg.mlflow.tracking_uri)
    return spark


def derby_url(storage) -> str:
    """The JDBC URL of the data root's embedded metastore (created on first use)."""
    return f"jdbc:derby:;databaseName={storage.metastore_dir};create=true"


def catalogue_jvm(cfg: Config):
    """This process's JVM, started with the catalogue's settings but no Spark session, for work on
    the metastore itself before any session opens it (``catalogfs relocate``). Raises
    :class:`CatalogBusy` when another process has the catalogue open."""
    from pyspark import SparkContext

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    (cfg.storage.data_root / "derby").mkdir(parents=True, exist_ok=True)
    settings = {"spark.app.name": cfg.spark.app_name, **session_settings(cfg), "spark.master": cfg.spark.master}
    _launch_jvm(settings, cfg)
    gateway = SparkContext._gateway
    if gateway is None:
        raise RuntimeError("the Spark JVM did not start (no Py4J gateway)")
    return gateway.jvm


# Session settings a Connect client applies to its own session on the server (runtime SQL
# settings; the static ones, such as the catalog and the extensions, are the server's).
_CLIENT_SETTINGS = ("spark.sql.execution.", "spark.databricks.delta.")


def server_session(cfg: Config) -> SparkSession | None:
    """A Spark Connect session on the data root's running ``catalogfs serve`` (``server.use``: auto,
    always), or None: no server runs (auto) or ``server.use=never``. Raises
    :class:`ServerUnavailable` for ``always`` without a server, when the server does not answer, and
    (auto or always) while the supervisor of ``serve --detach`` starts or restarts it: a driver of
    our own would take the catalogue and keep the server from coming back."""
    if cfg.server.use == "never" or cfg.spark.managed:
        return None
    server = find_server(cfg.storage)
    if server is None:
        supervisor = returning_supervisor(cfg.storage.data_root)
        if supervisor is not None and supervisor.pid != os.getppid():  # (its own server starts here)
            raise ServerUnavailable(supervisor.client_message())
        if cfg.server.use == "always":
            raise ServerUnavailable(f"server.use=always, but no catalogfs serve is running for "
                                    f"{cfg.storage.data_root}: start one with `catalogfs serve --detach`")
        return None
    log.info("using the catalogue server of %s (pid %d): %s", cfg.storage.data_root, server.pid,
             server.redacted_connect_url())
    try:
        spark = SparkSession.builder.remote(server.connect_url).getOrCreate()
        for key, value in session_settings(cfg).items():
            if key.startswith(_CLIENT_SETTINGS):
                spark.conf.set(key, value)  # also the first call: it fails at once when the server does not answer
    except Exception as exc:
        supervised = returning_supervisor(cfg.storage.data_root) is not None
        raise ServerUnavailable(f"the catalogue server of {cfg.storage.data_root} (pid {server.pid}, "
                                f"{server.redacted_connect_url()}) did not answer: "
                                f"{(str(exc).strip().splitlines() or [type(exc).__name__])[0]}"
                                + ("; its supervisor restarts it if it died: retry in a few seconds"
                                   if supervised else "")) from None
    return spark


def _explain_fallback(cfg: Config) -> None:
    """Say once per process that the Delta jars come from package resolution, and how to avoid it."""
    global _fallback_explained
    if _fallback_explained:
        return
    _fallback_explained = True
    log.info("Delta jars not resolved yet: Spark resolves %s from Maven Central at every start "
             "(slower; its report goes to the JVM log). To resolve them once into %s: make env "
             "(or %s -m catalogfs.spark)", delta_packages(), jars_dir(cfg.spark.ivy_cache), sys.executable)


def _launch_jvm(settings: dict[str, str], cfg: Config) -> None:
    """Start this process's JVM (pyspark's launcher, i.e. spark-submit with ``settings`` as --conf)
    with its stdout and stderr going to a new log file under ``logs_dir``. Does nothing when the
    JVM is already running (a second session in the same process keeps the first one's JVM).
    Raises :class:`CatalogBusy` first when another process has the data root's catalogue open."""
    global _jvm_log
    from pyspark import SparkConf, SparkContext
    from pyspark.find_spark_home import _find_spark_home
    from pyspark.java_gateway import launch_gateway

    if SparkContext._gateway is not None:
        return
    storage = cfg.storage
    ensure_catalog_free(storage.data_root, storage.metastore_dir)
    plan = LaunchPlan()
    if cfg.spark.class_archive:
        plan = plan_launch(cfg.spark.ivy_cache, Path(_find_spark_home()), settings.get("spark.driver.extraClassPath", ""))
    if plan.java_options:
        settings = {**settings, "spark.driver.extraJavaOptions": " ".join(
            filter(None, [settings.get("spark.driver.extraJavaOptions", ""), *plan.java_options]))}
    conf = SparkConf(loadDefaults=False).setAll(list(settings.items()))
    # the log, and every table file, the metastore and staging that the JVM and the Python workers
    # it forks create: private to this user (umask 077, whatever this process's own: a server, a test)
    with private_umask(), _environment(plan.env):
        _jvm_log = _new_jvm_log(storage.data_root / "logs")
        with open(_jvm_log, "ab") as out:  # the JVM keeps its own copy of the descriptor
            gateway = launch_gateway(conf, popen_kwargs={"stdout": out, "stderr": subprocess.STDOUT})
    if gateway.proc is not None:
        atexit.register(_end_jvm_at_exit, gateway.proc, plan)
    # What SparkContext(gateway=...) does: the builder below then uses this JVM instead of starting one.
    SparkContext._ensure_initialized(gateway=gateway)


JVM_EXIT_WAIT_SECONDS = 60.0


@contextmanager
def _environment(overrides: Mapping[str, str]) -> Iterator[None]:
    """Inside: ``os.environ`` with ``overrides`` (what pyspark's launcher passes to spark-submit)."""
    previous = {key: os.environ.get(key) for key in overrides}
    os.environ.update(overrides)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _end_jvm_at_exit(proc: subprocess.Popen, plan: LaunchPlan | None = None) -> None:
    """At interpreter exit: end this process's JVM and wait for it. pyspark leaves the JVM to notice
    its closed stdin and shut down after the Python process is gone, still writing its log and
    holding the metastore; waiting here means that when a command's process exits, its JVM has
    too: a backup or the scheduler's next command sees the data root as the command left it."""
    if proc.poll() is not None:
        if plan is not None:
            finish_launch(plan, exited_cleanly=False)
        return
    # py4j reports each connection the exiting JVM closes (INFO), and a call that another thread
    # (a daemon still polling Spark) makes meanwhile fails with an ERROR and its traceback: the
    # command has finished, nothing it could say here is news
    logging.disable(logging.ERROR)
    _quiet_accumulator_server()
    try:
        if proc.stdin is not None:
            proc.stdin.close()  # pyspark's gateway server exits when its stdin closes
        proc.wait(timeout=JVM_EXIT_WAIT_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    except OSError:  # already gone
        pass
    if plan is not None:
        finish_launch(plan, exited_cleanly=proc.returncode == 0)


def _quiet_accumulator_server() -> None:
    """pyspark's accumulator server (a thread of this process) reads updates from the JVM; when the
    JVM exits under a connected handler, socketserver prints the handler's EOFError with its
    traceback. At exit nothing is left to update: its errors are not reported."""
    from pyspark import SparkContext

    context = SparkContext._active_spark_context
    server = getattr(context, "_accumulatorServer", None) if context is not None else None
    if server is not None:
        server.handle_error = lambda request, client_address: None


def _new_jvm_log(logs_dir: Path) -> Path:
    """A fresh ``spark-<timestamp>-<pid>.log`` in ``logs_dir``; older ones beyond the newest
    :data:`JVM_LOGS_KEPT` (counting the new one) are deleted."""
    logs_dir.mkdir(parents=True, exist_ok=True)
    for old in sorted(logs_dir.glob("spark-*.log"))[:-(JVM_LOGS_KEPT - 1) or None]:
        old.unlink(missing_ok=True)
    return logs_dir / f"spark-{datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}.log"


def write_spark_defaults(cfg: Config) -> Path:
    """Write ``spark-defaults.conf`` into ``$SPARK_CONF_DIR`` (default: the environment's pyspark/conf)
    so that a bare ``spark-submit jobs/<job>.py`` gets the Delta jars (the builder cannot add jars to a
    JVM that spark-submit already started): the local jars when set-up resolved them, else the
    packages. Returns the file written."""
    import pyspark

    conf_dir = Path(os.environ.get("SPARK_CONF_DIR") or Path(pyspark.__file__).parent / "conf")
    conf_dir.mkdir(parents=True, exist_ok=True)
    path = conf_dir / "spark-defaults.conf"
    python = Path(os.path.realpath(sys.prefix)) / "bin" / "python"
    jars = {key: value for key, value in delta_jar_settings(cfg.spark.ivy_cache).items() if value}
    lines = [
        "# Written by catalogfs (python -m catalogfs.spark, run by scripts/ensure_env.sh):",
        "# Delta and this environment's Python for spark-submit.",
        *(f"{key} {value}" for key, value in jars.items()),
        f"spark.jars.ivy {cfg.spark.ivy_cache}",
        # The driver's log levels (spark-submit's JVM prints them on the terminal: warnings only).
        f"spark.driver.extraJavaOptions -Dlog4j.configurationFile={LOG4J_CONFIG.as_uri()}",
        "spark.sql.extensions io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog org.apache.spark.sql.delta.catalog.DeltaCatalog",
        f"spark.pyspark.python {python}",
        f"spark.pyspark.driver.python {python}",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def set_up(cfg: Config) -> Path:
    """What set-up runs (``python -m catalogfs.spark``): resolve the Delta jars once (a warning,
    not a failure, when Maven Central cannot be reached: sessions then resolve at start), then
    write spark-defaults.conf. Returns the spark-defaults file."""
    from catalogfs.jars import JarResolutionError, ensure_delta_jars

    try:
        jars, resolved_now = ensure_delta_jars(cfg.spark.ivy_cache)
        if resolved_now:
            print(f"catalogfs: resolved {delta_packages()} ({len(jars)} jars) into "
                  f"{jars_dir(cfg.spark.ivy_cache)}", file=sys.stderr)
    except JarResolutionError as exc:
        print(f"catalogfs: warning: {exc}; Spark sessions will resolve the Delta jars at every start",
              file=sys.stderr)
    defaults = write_spark_defaults(cfg)
    if cfg.spark.class_archive:
        _write_class_archive(cfg)
    return defaults


def _write_class_archive(cfg: Config) -> None:
    """Write this JDK and Spark installation's class archive when it has none (a warm-up run in its
    own process, :mod:`catalogfs.jvm_warmup`); a failure is a warning: commands then write it."""
    from pyspark.find_spark_home import _find_spark_home

    from catalogfs.class_archive import current_archive

    spark_home = Path(_find_spark_home())
    if current_archive(cfg.spark.ivy_cache, spark_home) is not None:
        return
    started = datetime.now()
    done = subprocess.run([sys.executable, "-m", "catalogfs.jvm_warmup"], capture_output=True, text=True)
    archive = current_archive(cfg.spark.ivy_cache, spark_home)
    if done.returncode != 0 or archive is None:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"catalogfs: warning: the JVM class archive was not written ({tail}); the first command "
              "writes it", file=sys.stderr)
        return
    print(f"catalogfs: wrote the JVM class archive {archive} ({archive.stat().st_size >> 20} MB) in "
          f"{(datetime.now() - started).total_seconds():.0f} s", file=sys.stderr)


if __name__ == "__main__":
    from catalogfs.config import load_config

    print(set_up(load_config()))
