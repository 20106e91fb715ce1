"""Delta's jars: resolved once at set-up, then handed to Spark as local files.

Without this, every session start asks Spark's Ivy to resolve ``spark.jars.packages`` (what
``delta.configure_spark_with_delta_pip`` sets): ~2.5 s and a ~90-line report on the JVM's stderr,
even when every jar is already in the Ivy cache.

Set-up (``python -m catalogfs.spark``, run by ``scripts/ensure_env.sh``) calls
:func:`ensure_delta_jars`. When this key's jars are not recorded yet, it lets **Spark's own Ivy** do
the resolution, exactly as a session start would: pyspark's launcher starts a bare JVM (the py4j
gateway through ``spark-submit``; no SparkContext) with ``spark.jars.packages`` = :func:`delta_packages`
and ``spark.jars.ivy`` = the configured ``spark.ivy_cache``. Ivy downloads from Maven Central (once;
later runs find its cache) and spark-submit then lists the retrieved local files in the JVM's
``spark.jars`` system property, which we read through py4j. For delta-spark 4.4.0 on Spark 4.2 that is
33 jars: delta-spark, delta-storage, delta-kernel-{api,defaults,unitycatalog}, unitycatalog-{client,
hadoop}, parquet, hadoop-client, jackson, log4j, … — all of them, in Ivy's order, so the classpath is
the same as with package resolution (Spark's own classes still come first: spark.jars sit in the
child class loader; antlr4-runtime is not among them, Spark ships it). One difference: with packages,
pyspark also puts these jars on the Python path (``spark.submit.pyFiles``); they hold no Python. Each file is checked to exist, hard-linked (or copied) into
``<spark.ivy_cache>/local-jars/<key>/`` (key: ``delta-spark_<spark major.minor>_2.13-<delta version>``),
and recorded in ``manifest.json`` there. The launcher's output (Ivy's report) goes to
``<spark.ivy_cache>/local-jars/<key>.resolve.log``. A lock file serialises concurrent set-ups (CI
clones sharing the cache); the folder appears atomically (rename) once complete.

:func:`local_delta_jars` returns the recorded paths when the manifest and every jar exist, else
``None`` (then :mod:`catalogfs.spark` falls back to package resolution at session start).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

MANIFEST = "manifest.json"


class JarResolutionError(RuntimeError):
    """Ivy could not resolve the Delta jars (no network, a bad cache); the message names the log."""


def delta_packages() -> str:
    """Maven coordinates of the Delta jars for the installed delta-spark and pyspark: the artifact
    name carries Spark's major.minor (``io.delta:delta-spark_4.2_2.13:<delta version>``), as in
    ``delta.configure_spark_with_delta_pip``."""
    from importlib.metadata import version

    import pyspark

    spark_minor = ".".join(pyspark.__version__.split(".")[:2])
    return f"io.delta:delta-spark_{spark_minor}_2.13:{version('delta_spark')}"


def jars_key(packages: str | None = None) -> str:
    """Folder name for one set of coordinates: ``delta-spark_4.2_2.13-4.4.0``."""
    _, artifact, revision = (packages or delta_packages()).split(":")
    return f"{artifact}-{revision}"


def jars_dir(ivy_cache: Path, packages: str | None = None) -> Path:
    """Where the resolved jars of ``packages`` (default: Delta's) live: ``<ivy_cache>/local-jars/<key>``."""
    return Path(ivy_cache) / "local-jars" / jars_key(packages)


def local_delta_jars(ivy_cache: Path) -> list[Path] | None:
    """The recorded local Delta jars for the installed versions, or ``None`` when set-up has not
    resolved them (or a recorded jar has gone missing)."""
    folder = jars_dir(ivy_cache)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("packages") != delta_packages():
        return None
    jars = [folder / name for name in manifest.get("jars", [])]
    if not jars or not all(jar.is_file() for jar in jars):
        return None
    return jars


def ensure_delta_jars(ivy_cache: Path) -> tuple[list[Path], bool]:
    """The local Delta jars, resolving them first when missing. Returns ``(jars, resolved_now)``.
    Raises :class:`JarResolutionError` when Ivy fails (the message names its log)."""
    jars = local_delta_jars(ivy_cache)
    if jars is not None:
        return jars, False
    folder = jars_dir(ivy_cache)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / ".resolve.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another set-up may be resolving the same key
        jars = local_delta_jars(ivy_cache)
        if jars is not None:
            return jars, False
        resolved = _resolve_with_spark_ivy(delta_packages(), Path(ivy_cache),
                                           folder.parent / f"{folder.name}.resolve.log")
        return _install(resolved, folder), True


def _resolve_with_spark_ivy(packages: str, ivy_cache: Path, log_path: Path) -> list[Path]:
    """Start a bare JVM through pyspark's launcher with ``spark.jars.packages``; spark-submit resolves
    them with Ivy before the gateway starts and lists the local files in ``spark.jars``."""
    from pyspark import SparkConf
    from pyspark.errors import PySparkRuntimeError
    from pyspark.java_gateway import launch_gateway

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    conf = SparkConf(loadDefaults=False)
    conf.set("spark.jars.packages", packages)
    conf.set("spark.jars.ivy", str(ivy_cache))
    conf.set("spark.jars", "")  # only what Ivy resolves (spark-defaults may list jars already)
    with open(log_path, "wb") as out:
        try:
            gateway = launch_gateway(conf, popen_kwargs={"stdout": out, "stderr": subprocess.STDOUT})
        except PySparkRuntimeError as exc:
            raise JarResolutionError(
                f"Spark's Ivy could not resolve {packages} (is Maven Central reachable?); "
                f"its output: {log_path}") from exc
    try:
        listed = gateway.jvm.java.lang.System.getProperty("spark.jars") or ""
    finally:
        gateway.shutdown()
        if gateway.proc is not None:  # the JVM exits when its stdin closes
            gateway.proc.stdin.close()
            try:
                gateway.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                gateway.proc.kill()
    jars = [Path(unquote(urlparse(uri).path)) if uri.startswith("file:") else Path(uri)
            for uri in listed.split(",") if uri.strip()]
    missing = [str(jar) for jar in jars if not jar.is_file()]
    if not jars or missing:
        raise JarResolutionError(f"Ivy resolved {packages} but listed no jars or missing files "
                                 f"({', '.join(missing[:3]) or 'none listed'}); its output: {log_path}")
    return jars


def _install(resolved: list[Path], folder: Path) -> list[Path]:
    """Link (or copy) ``resolved`` into ``folder`` with a manifest; the folder appears complete or not at all."""
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        staging.chmod(0o755)  # mkdtemp's 0700 would hide the jars from other users of a shared cache
        for jar in resolved:
            try:
                os.link(jar, staging / jar.name)
            except OSError:  # another file system, or links not allowed
                shutil.copy2(jar, staging / jar.name)
        manifest = {"packages": delta_packages(), "jars": [jar.name for jar in resolved],
                    "resolved_from": [str(jar) for jar in resolved]}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        if folder.exists():  # an incomplete or outdated record (local_delta_jars said no)
            shutil.rmtree(folder)
        os.rename(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return [folder / jar.name for jar in resolved]
