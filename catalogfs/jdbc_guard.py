"""The guard of ``catalogfs serve``'s JDBC endpoint, compiled once per pyspark version.

HiveServer2 asks a JDBC client for no credentials, and Spark SQL over it reaches beyond the
catalogue (``TRANSFORM … USING 'cmd'`` runs a shell command, ``reflect`` calls Java methods, file
paths read any file the server can). The guard is a small ``spark.sql.extensions`` class kept as
Java source in ``resources/java/catalogfs/JdbcGuardExtension.java``, which says what it refuses
(and, with ``server.jdbc_read_only``, every statement that would change the catalogue).
:func:`guard_jar` compiles it with the JDK's ``javac`` against pyspark's own jars and packs it into
``<spark.ivy_cache>/local-jars/catalogfs-jdbc-guard-<pyspark version>-<source hash>/catalogfs-jdbc-guard.jar``,
next to the Delta jars (:mod:`catalogfs.jars`); later starts find it there. A new pyspark or an
edited source gets a new folder. A lock file serialises concurrent builds; the folder appears
complete or not at all (rename).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path
import shutil
import subprocess
import tempfile
import zipfile

from catalogfs.config import PROJECT_ROOT
from catalogfs.errors import ConfigError

GUARD_SOURCE = PROJECT_ROOT / "resources" / "java" / "catalogfs" / "JdbcGuardExtension.java"
GUARD_CLASS = "catalogfs.JdbcGuardExtension"
READ_ONLY_KEY = "spark.catalogfs.jdbc.readOnly"  # read by the guard from the driver's SparkConf
JAR_NAME = "catalogfs-jdbc-guard.jar"


def guard_dir(ivy_cache: Path, source: Path = GUARD_SOURCE) -> Path:
    """Where the jar for this pyspark and this source lives."""
    import pyspark

    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    return Path(ivy_cache) / "local-jars" / f"catalogfs-jdbc-guard-{pyspark.__version__}-{digest}"


def guard_jar(ivy_cache: Path, source: Path = GUARD_SOURCE) -> Path:
    """The compiled guard jar, built first when missing. Raises :class:`ConfigError` without a JDK
    (``javac``) or when the source does not compile (the message holds javac's first lines)."""
    if not source.is_file():  # it lives in the repository (resources/), not in an installed wheel
        raise ConfigError(f"the JDBC guard's source {source} is missing: run catalogfs serve from a checkout")
    folder = guard_dir(ivy_cache, source)
    jar = folder / JAR_NAME
    if jar.is_file():
        return jar
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / ".jdbc-guard.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another server may be building the same jar
        if not jar.is_file():
            _build(source, folder)
    return jar


def _build(source: Path, folder: Path) -> None:
    import pyspark

    java_home = os.environ.get("JAVA_HOME")
    javac = (java_home and shutil.which("javac", path=str(Path(java_home) / "bin"))) or shutil.which("javac")
    if not javac:
        raise ConfigError("catalogfs serve needs a JDK's javac (on PATH or in $JAVA_HOME/bin) once, to build the "
                          f"guard of its JDBC endpoint ({GUARD_SOURCE.name}); install a JDK 17")
    jars = Path(pyspark.__file__).parent / "jars"
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        classes = staging / "classes"
        command = [javac, "--release", "17", "-nowarn", "-cp", f"{jars}/*", "-d", str(classes), str(source)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            first = "\n".join((done.stderr or done.stdout).strip().splitlines()[:8])
            raise ConfigError(f"{source.name} did not compile against pyspark {pyspark.__version__}:\n{first}")
        with zipfile.ZipFile(staging / JAR_NAME, "w", zipfile.ZIP_DEFLATED) as out:
            out.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\nCreated-By: catalogfs\n\n")
            for path in sorted(classes.rglob("*.class")):
                out.write(path, path.relative_to(classes).as_posix())
        shutil.rmtree(classes)
        staging.chmod(0o755)  # mkdtemp's 0700 would hide the jar from other users of a shared cache
        if folder.exists():
            shutil.rmtree(folder)
        os.rename(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
