"""The server-side guard of ``catalogfs serve``, compiled once per pyspark version.

Spark SQL reaches beyond the catalogue (``TRANSFORM … USING 'cmd'`` runs a shell command,
``reflect`` calls Java methods, file paths read any file the server can, session settings load
catalog plugins), and neither HiveServer2 nor Spark Connect checks who connects the way this
project needs. The guard is a few Java classes kept as source in ``catalogfs/java/`` (package data):
``JdbcGuardExtension`` (a ``spark.sql.extensions`` class: the parser and check rule of consumer
sessions, with ``ConsumerRules``, ``GuardedParser``), ``GuardedThriftServer`` (HiveServer2 whose
OpenSession checks the client's settings and records the user's role; its logins go through
``HeldSaslTransportFactory``, which a garbage collection cannot break), ``PasswordFileAuthenticator``
/ ``UsersFile`` (JDBC logins) and ``ConnectTokenInterceptor`` (the Connect token, checked by hash).
:func:`guard_jar` compiles them with the JDK's ``javac`` against pyspark's own jars and packs them into
``<spark.ivy_cache>/local-jars/catalogfs-jdbc-guard-<pyspark version>-<sources hash>/catalogfs-jdbc-guard.jar``,
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

from catalogfs.packaged import guard_sources
from catalogfs.errors import ConfigError

GUARD_SOURCES = guard_sources()
GUARD_CLASS = "catalogfs.JdbcGuardExtension"
TOKEN_INTERCEPTOR_CLASS = "catalogfs.ConnectTokenInterceptor"
USERS_FILE_KEY = "spark.catalogfs.jdbc.usersFile"  # read by UsersFile.java
TOKEN_HASH_FILE_KEY = "spark.catalogfs.connect.tokenHashFile"  # read by ConnectTokenInterceptor.java
READ_ONLY_KEY = "spark.catalogfs.jdbc.readOnly"  # read by the guard from the driver's SparkConf
JAR_NAME = "catalogfs-jdbc-guard.jar"


def _sources(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.java"))


def guard_dir(ivy_cache: Path, sources: Path = GUARD_SOURCES) -> Path:
    """Where the jar for this pyspark and these sources lives."""
    import pyspark

    digest = hashlib.sha256()
    for source in _sources(sources):
        digest.update(source.name.encode() + b"\0" + source.read_bytes() + b"\0")
    return Path(ivy_cache) / "local-jars" / f"catalogfs-jdbc-guard-{pyspark.__version__}-{digest.hexdigest()[:12]}"


def guard_jar(ivy_cache: Path, sources: Path = GUARD_SOURCES) -> Path:
    """The compiled guard jar, built first when missing. Raises :class:`ConfigError` without a JDK
    (``javac``) or when the sources do not compile (the message holds javac's first lines)."""
    if not _sources(sources):  # they live in the repository (resources/), not in an installed wheel
        raise ConfigError(f"the guard's sources ({sources}/*.java) are missing: run catalogfs serve from a checkout")
    folder = guard_dir(ivy_cache, sources)
    jar = folder / JAR_NAME
    if jar.is_file():
        return jar
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / ".jdbc-guard.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another server may be building the same jar
        if not jar.is_file():
            _build(sources, folder)
    return jar


def _build(sources: Path, folder: Path) -> None:
    import pyspark

    java_home = os.environ.get("JAVA_HOME")
    javac = (java_home and shutil.which("javac", path=str(Path(java_home) / "bin"))) or shutil.which("javac")
    if not javac:
        raise ConfigError("catalogfs serve needs a JDK's javac (on PATH or in $JAVA_HOME/bin) once, to build the "
                          f"guard of its endpoints ({sources}); install a JDK 17")
    jars = Path(pyspark.__file__).parent / "jars"
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        classes = staging / "classes"
        command = [javac, "--release", "17", "-nowarn", "-cp", f"{jars}/*", "-d", str(classes),
                   *map(str, _sources(sources))]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            first = "\n".join((done.stderr or done.stdout).strip().splitlines()[:8])
            raise ConfigError(f"the guard ({sources}) did not compile against pyspark {pyspark.__version__}:\n{first}")
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
