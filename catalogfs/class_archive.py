"""A class-data archive (the JDK's CDS) for the JVM that a command starts: a second start loads
Spark's, Hive's and Derby's classes from one mapped file instead of parsing and verifying them
from the jars again. Measured here (2 cores): a `catalogfs sql` on an idle catalogue went from
11 s to 7 s wall and from 17 to 11 CPU-seconds; every job, server and test pays a JVM start.

How (``spark.class_archive``, default on; :func:`plan_launch` and :func:`finish_launch`, used by
:mod:`catalogfs.spark` when it starts the JVM itself, i.e. not under spark-submit or a platform):

* the archive belongs to one JDK and one Spark installation: its file is
  ``<spark.ivy_cache>/class-archives/<key>.jsa``, the key a digest of the ``java`` binary, the
  JVM library and the name, size and mtime of every jar of Spark's (and of
  ``spark.driver.extraClassPath``). A different JDK or Spark gets a new key; the JVM also
  checks the archive's class path itself and runs without it on a mismatch (a warning in the
  JVM's log), never with a wrong class;
* the first command of a key writes it: its JVM starts with ``-XX:ArchiveClassesAtExit`` and
  dumps the classes it loaded when it exits (a few seconds more, once); the file is renamed into
  place after the JVM has exited, so a reader never maps a partial one. One command at a time
  dumps (a claim file with its pid); a killed one leaves nothing that a later one does not clean.
  Set-up (``python -m catalogfs.spark``) runs a small Delta workload so that the archive holds
  what the jobs load;
* the JVM refuses an archive whose class path holds a non-empty folder, and Spark puts its conf
  folder first on the class path: when that folder holds nothing but ``spark-defaults.conf``,
  the JVM gets an empty conf folder and the file through ``--properties-file`` (what spark-submit
  reads either way); a conf folder with more (``hive-site.xml``, a log4j file) keeps the JVM on
  its jars, without the archive;
* the JVM maps the file as code: it is used only when it is a regular file owned by this user in
  a folder owned by this user, neither writable by anyone else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import hashlib
import logging
import os
from pathlib import Path
import shutil
import stat
import time

from catalogfs.permissions import ensure_private_dir
from catalogfs.server_record import pid_alive

__all__ = ["ARCHIVE_DIR_NAME", "LaunchPlan", "archive_dir", "archive_key", "current_archive", "finish_launch",
           "plan_launch"]

log = logging.getLogger(__name__)

ARCHIVE_DIR_NAME = "class-archives"
ARCHIVES_KEPT = 3  # keys (JDK × Spark installations) whose archives are kept; the least recently used go
CLAIM_STALE_SECONDS = 15 * 60  # a claim older than this is taken over even if its pid lives (pid reuse)
_FORMAT = "1"  # part of the key: a change in how archives are made makes new ones


@dataclass
class LaunchPlan:
    """What a JVM launch adds for the archive: JVM options, environment for spark-submit, and
    (when this launch writes the archive) the files to settle after the JVM exits."""
    java_options: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    archive: Path | None = None
    dump: Path | None = None   # the file this JVM writes at exit, renamed to ``archive`` after
    claim: Path | None = None


def archive_dir(ivy_cache: Path) -> Path:
    """The folder of the archives beside the Delta jars."""
    return Path(ivy_cache) / ARCHIVE_DIR_NAME


def _java_binary() -> Path | None:
    java_home = os.environ.get("JAVA_HOME")
    candidate = Path(java_home) / "bin" / "java" if java_home else None
    if candidate is None or not candidate.is_file():
        found = shutil.which("java")
        candidate = Path(found) if found else None
    return Path(os.path.realpath(candidate)) if candidate else None


def _stamp(path: Path) -> str:
    info = path.stat()
    return f"{path}:{info.st_size}:{info.st_mtime_ns}"


def archive_key(spark_home: Path, extra_class_path: str = "") -> str | None:
    """The digest that names the archive of this JDK and Spark installation; None when there is no
    ``java`` or no Spark jars folder (then no archive)."""
    java = _java_binary()
    jars = Path(spark_home) / "jars"
    if java is None or not jars.is_dir():
        return None
    digest = hashlib.sha256(_FORMAT.encode())
    parts = [_stamp(java)]
    parts += [_stamp(lib) for lib in sorted(java.parent.parent.glob("lib/server/libjvm.so"))]
    parts += [_stamp(jar) for jar in sorted(jars.glob("*.jar"))]
    parts += [entry for entry in extra_class_path.split(os.pathsep) if entry]
    for part in parts:
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:24]


def current_archive(ivy_cache: Path, spark_home: Path, extra_class_path: str = "") -> Path | None:
    """The archive file of this JDK and Spark installation when it exists, else None."""
    key = archive_key(spark_home, extra_class_path)
    archive = archive_dir(ivy_cache) / f"{key}.jsa" if key else None
    return archive if archive is not None and archive.is_file() else None


def _private(path: Path, *, regular: bool) -> bool:
    """True when ``path`` is a regular file (or a folder) owned by this user and not writable by
    anyone else (not a link)."""
    try:
        info = path.lstat()
    except OSError:
        return False
    kind_ok = stat.S_ISREG(info.st_mode) if regular else stat.S_ISDIR(info.st_mode)
    return kind_ok and info.st_uid == os.geteuid() and not info.st_mode & 0o022


def _conf_env(spark_home: Path, folder: Path) -> dict[str, str] | None:
    """Environment for spark-submit so that the JVM's class path has no non-empty folder: {} when
    the conf folder is missing or empty; an empty conf folder plus ``--properties-file`` when it
    holds only spark-defaults.conf; None (no archive) otherwise."""
    conf_dir = Path(os.environ.get("SPARK_CONF_DIR") or Path(spark_home) / "conf")
    entries = sorted(conf_dir.iterdir()) if conf_dir.is_dir() else []
    if not entries:
        return {}
    if [entry.name for entry in entries] != ["spark-defaults.conf"]:
        log.debug("no class archive: %s holds more than spark-defaults.conf", conf_dir)
        return None
    submit_args = os.environ.get("PYSPARK_SUBMIT_ARGS", "pyspark-shell")
    if "--properties-file" in submit_args:
        return None
    empty = ensure_private_dir(folder / "empty-conf")
    if any(empty.iterdir()):
        return None
    return {"SPARK_CONF_DIR": str(empty),
            "PYSPARK_SUBMIT_ARGS": f"--properties-file {entries[0]} {submit_args}"}


def plan_launch(ivy_cache: Path, spark_home: Path, extra_class_path: str = "") -> LaunchPlan:
    """What the next JVM launch adds: the archive to map when a usable one exists; else, when no
    other live command is writing it, the options that make this JVM write it at exit. An empty
    plan when neither (no JDK or Spark found, a conf folder the archive cannot live with)."""
    key = archive_key(spark_home, extra_class_path)
    if key is None:
        return LaunchPlan()
    folder = archive_dir(ivy_cache)
    ensure_private_dir(folder)
    if not _private(folder, regular=False):
        log.warning("no class archive: %s is not a private folder of this user", folder)
        return LaunchPlan()
    env = _conf_env(spark_home, folder)
    if env is None:
        return LaunchPlan()
    archive = folder / f"{key}.jsa"
    if archive.exists():
        if not _private(archive, regular=True):
            log.warning("class archive %s not used: not a private file of this user", archive)
            return LaunchPlan()
        os.utime(archive)  # the newest used survive _clean
        return LaunchPlan(java_options=[f"-XX:SharedArchiveFile={archive}"], env=env, archive=archive)
    claim = folder / f"{key}.claim"
    if not _take_claim(claim):
        return LaunchPlan(env=env)
    _clean(folder, keep=key)
    dump = folder / f"{key}.{os.getpid()}.tmp"
    # the dump lists each class it could not archive as a warning: errors only
    return LaunchPlan(java_options=[f"-XX:ArchiveClassesAtExit={dump}", "-Xlog:cds*=error"],
                      env=env, archive=archive, dump=dump, claim=claim)


def _take_claim(claim: Path) -> bool:
    """Claim the writing of an archive for this process: False when a live command holds it."""
    for _ in range(2):
        try:
            fd = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            try:
                holder = int(claim.read_text().strip() or 0)
                age = time.time() - claim.stat().st_mtime
            except (OSError, ValueError):
                holder, age = 0, CLAIM_STALE_SECONDS
            if holder and pid_alive(holder) and age < CLAIM_STALE_SECONDS:
                return False
            claim.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as out:
            out.write(str(os.getpid()))
        return True
    return False


def _clean(folder: Path, keep: str) -> None:
    """Remove dumps that dead commands left, and archives beyond the :data:`ARCHIVES_KEPT` most
    recently used (a launch that maps one touches it)."""
    for dump in folder.glob("*.tmp"):
        try:
            pid = int(dump.name.split(".")[1])
        except (IndexError, ValueError):
            pid = 0
        if not pid or not pid_alive(pid):
            dump.unlink(missing_ok=True)
    archives = sorted((path for path in folder.glob("*.jsa") if path.stem != keep),
                      key=lambda path: path.stat().st_mtime, reverse=True)
    for old in archives[ARCHIVES_KEPT - 1:]:
        old.unlink(missing_ok=True)


def finish_launch(plan: LaunchPlan, exited_cleanly: bool) -> None:
    """After the JVM of ``plan`` exited: put the archive it wrote in place (only after a clean
    exit: a killed JVM's file may be partial) and give up the claim."""
    if plan.dump is None or plan.archive is None:
        return
    try:
        if exited_cleanly and _private(plan.dump, regular=True) and plan.dump.stat().st_size > 0:
            os.replace(plan.dump, plan.archive)
            log.info("class archive written: %s", plan.archive)
    finally:
        plan.dump.unlink(missing_ok=True)
        if plan.claim is not None:
            plan.claim.unlink(missing_ok=True)
