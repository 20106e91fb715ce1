"""The server record: what a running ``catalogfs serve`` tells other processes about itself.

``<data_root>/serve.json``, written once the server is ready and removed when it stops, mode 0600
(it holds the Spark Connect token)::

    {"version": 1, "pid": 4242, "jvm_pid": 4250, "connect_url": "sc://localhost:15002/;token=…",
     "jdbc_url": "jdbc:hive2://127.0.0.1:10000/default", "token": "…", "started_at": "2026-…Z",
     "data_root": "/srv/catalogfs/data", "log_file": "/srv/catalogfs/data/logs/spark-….log"}

``pid`` is the ``catalogfs serve`` (Python) process, ``jvm_pid`` its Spark JVM (a child process),
which is the one that holds the metastore's lock. A record proves nothing by itself: a server
killed with SIGKILL leaves it behind, and its pid may be reused. Whether a record belongs to a live
server is decided with the metastore lock (:func:`catalogfs.catalog_lock.find_server`); this module
only reads, writes and removes the file, and answers questions about processes.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
import fcntl
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, TypeVar

from catalogfs.errors import CatalogBusy
from catalogfs.permissions import write_private

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

R = TypeVar("R", bound="DataclassInstance")

RECORD_NAME = "serve.json"
RECORD_VERSION = 1


@dataclass(frozen=True)
class ServerRecord:
    """One running server, as recorded in ``<data_root>/serve.json``."""

    pid: int
    jvm_pid: int
    connect_url: str
    jdbc_url: str
    token: str
    started_at: str
    data_root: str
    log_file: str
    version: int = RECORD_VERSION

    def redacted_connect_url(self) -> str:
        """The Connect URL with its token shown as ``***`` (for terminals and logs)."""
        return self.connect_url.replace(self.token, "***") if self.token else self.connect_url


def record_path(data_root: Path) -> Path:
    return Path(data_root) / RECORD_NAME


def write_json_record(path: Path, record: Any) -> Path:
    """Write the dataclass ``record`` as JSON, atomically and 0600 (it may hold a secret)."""
    return write_private(path, json.dumps(asdict(record), indent=1) + "\n")


def read_json_record(path: Path, kind: type[R]) -> R | None:
    """The ``kind`` record in ``path`` (unknown keys ignored), or None when there is none or it
    cannot be read."""
    try:
        data = json.loads(Path(path).read_text())
        known = {f.name for f in fields(kind)}
        return kind(**{k: v for k, v in data.items() if k in known})
    except (OSError, ValueError, TypeError):
        return None


def remove_json_record(path: Path, kind: type, *, pid: int | None = None) -> bool:
    """Remove the record (only if it is ``pid``'s, when given). True when a file was removed."""
    if pid is not None:
        record = read_json_record(path, kind)
        if record is not None and record.pid != pid:
            return False
    try:
        Path(path).unlink()
    except FileNotFoundError:
        return False
    return True


def write_record(data_root: Path, record: ServerRecord) -> Path:
    """Write ``record`` atomically (0600: it holds the token); returns its path."""
    return write_json_record(record_path(data_root), record)


def read_record(data_root: Path) -> ServerRecord | None:
    """The record under ``data_root``, or None when there is none (or it is not a record we can read)."""
    return read_json_record(record_path(data_root), ServerRecord)


def remove_record(data_root: Path, *, pid: int | None = None) -> bool:
    """Remove the record (only if it is ``pid``'s, when given). True when a file was removed."""
    return remove_json_record(record_path(data_root), ServerRecord, pid=pid)


def pid_alive(pid: int) -> bool:
    """True when a process ``pid`` exists and is not a zombie."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def parent_pid(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("PPid:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def descends_from(pid: int, ancestor: int, *, levels: int = 3) -> bool:
    """True when ``pid`` is ``ancestor`` or a (grand…)child of it, up to ``levels`` generations."""
    current: int | None = pid
    for _ in range(levels + 1):
        if current is None or current <= 1:
            return False
        if current == ancestor:
            return True
        current = parent_pid(current)
    return False


SERVE_LOCK = "serve.lock"


@contextmanager
def serve_lock(data_root: Path) -> Iterator[None]:
    """Held by a ``catalogfs serve`` process from before its JVM starts until it has stopped: a
    second ``serve`` of the same data root fails at once with :class:`CatalogBusy` (the metastore
    lock is taken only once Derby boots, seconds into a start). ``flock`` on ``<data_root>/serve.lock``,
    released by the kernel when the process dies; the file holds the owner's pid."""
    with open(Path(data_root) / SERVE_LOCK, "a+") as handle:  # not inherited by the JVM (O_CLOEXEC)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip()
            raise CatalogBusy(f"another catalogfs serve (pid {owner or '?'}) is starting or running on "
                              f"{data_root}; see catalogfs serve --status") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
