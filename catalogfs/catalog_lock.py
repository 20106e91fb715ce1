"""Who holds a data root's embedded catalogue, found before this process starts a JVM.

The embedded Hive metastore is a Derby database (``<data_root>/metastore_db``) that one process
at a time may open: Derby's JVM holds a POSIX write lock on ``metastore_db/dbex.lck`` while it has
the database booted. A second process that starts Spark on the same data root used to wait ~45 s
and then print a 21,000-line Java stack ("Unable to instantiate SessionHiveMetaStoreClient").
``fcntl(F_GETLK)`` asks the kernel who holds the lock, in about a millisecond, without taking it
(the kernel releases it when the holder dies, so a stale file means nothing).

When the holder is this data root's ``catalogfs serve`` (its server record names it, or the Python
process whose JVM it is: :mod:`catalogfs.server_record`), :func:`find_server` returns that record
and the :class:`CatalogBusy` message says where the catalogue is served instead.

Do not call this from a process whose own JVM holds the lock: closing any descriptor of a file
drops the closing process's POSIX locks on it. The JVM is a child process of Python, so a check
from Python is safe.
"""

from __future__ import annotations

import fcntl
import os
import struct
import time
from pathlib import Path

from catalogfs.errors import CatalogBusy
from catalogfs.server_record import ServerRecord, descends_from, pid_alive, read_record, record_path

LOCK_FILE = "dbex.lck"
_FLOCK = "hhqqi"  # struct flock on Linux: l_type, l_whence, l_start, l_len, l_pid (native alignment)


def metastore_holder(metastore_dir: Path) -> int | None:
    """The pid of the process that has the Derby metastore at ``metastore_dir`` open, or None."""
    return lock_holder(metastore_dir / LOCK_FILE)


def lock_holder(path: Path) -> int | None:
    """The pid of the process that holds a POSIX write lock on the file ``path``, or None (no
    lock, or no such file). Asks the kernel (``F_GETLK``) without taking the lock."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:  # never booted (no file), or not ours to open: Derby will say so itself
        return None
    try:
        probe = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        l_type, _, _, _, pid = struct.unpack(_FLOCK, fcntl.fcntl(fd, fcntl.F_GETLK, probe))
    finally:
        os.close(fd)
    return None if l_type == fcntl.F_UNLCK else pid


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
    return " ".join(raw.split())  # one line, whatever the arguments hold


def _parent(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("PPid:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def orphaned(pid: int) -> bool:
    """True when ``pid``'s parent has exited (it was re-parented to init or a subreaper, or is gone):
    a Spark JVM whose command ended and which is still shutting down."""
    parent = _parent(pid)
    return parent is None or parent <= 1


def describe_process(pid: int) -> str:
    """``pid N (command …)`` — for a Spark JVM, the command of the Python process that started it."""
    cmdline, parent = _cmdline, _parent
    command = cmdline(pid)
    owner = parent(pid) if "java" in command.split(" ", 1)[0] and not orphaned(pid) else None
    if owner and cmdline(owner):
        return f"pid {owner} ({_short(cmdline(owner))}), whose Spark JVM is pid {pid}"
    return f"pid {pid} ({_short(command)})" if command else f"pid {pid}"


def serving_record(data_root: Path, holder: int | None) -> ServerRecord | None:
    """The server record of ``data_root`` when the metastore lock's ``holder`` is that server
    (its pid, or its Spark JVM child) and it is alive; else None (no record, or a stale one)."""
    if holder is None:
        return None
    record = read_record(data_root)
    if record is None or not pid_alive(record.pid) or not descends_from(holder, record.pid):
        return None
    return record


def find_server(storage) -> ServerRecord | None:
    """The live ``catalogfs serve`` of ``storage`` (a :class:`~catalogfs.config.StorageConfig`):
    its record is present, its process is alive and it (through its JVM) holds the metastore lock.
    None otherwise: no server, a stale record (the process died), or a server still starting."""
    return serving_record(storage.data_root, metastore_holder(storage.metastore_dir))


EXITING_GRACE_SECONDS = 60.0


def ensure_catalog_free(data_root: Path, metastore_dir: Path, *, grace: float = EXITING_GRACE_SECONDS) -> None:
    """Raise :class:`CatalogBusy` naming the holder when another process has the catalogue open
    (and the endpoints, when that process is this data root's ``catalogfs serve``).

    A holder whose parent has exited is the JVM of a command that has just ended and is still
    shutting down (its Python driver is gone; Spark's shutdown takes seconds on a loaded machine):
    back-to-back commands wait up to ``grace`` seconds for it to let go instead of failing."""
    holder = metastore_holder(metastore_dir)
    deadline = time.monotonic() + grace
    while holder is not None and holder != os.getpid() and orphaned(holder) and time.monotonic() < deadline:
        time.sleep(0.2)
        holder = metastore_holder(metastore_dir)
    if holder is None or holder == os.getpid():
        return
    server = serving_record(data_root, holder)
    if server is not None:
        raise CatalogBusy(
            f"the catalogue at {data_root} is served by catalogfs serve ({describe_process(holder)}): "
            f"connect to it at {server.redacted_connect_url()} (token in {record_path(data_root)}) or "
            f"{server.jdbc_url}, or stop it (catalogfs serve --stop) to use it directly.")
    raise CatalogBusy(
        f"the catalogue at {data_root} is in use by {describe_process(holder)}: its embedded metastore "
        f"admits one process at a time. Wait for that process to finish (or stop it), then run this again.")


def _short(command: str, limit: int = 160) -> str:
    return command if len(command) <= limit else command[:limit] + " …"
