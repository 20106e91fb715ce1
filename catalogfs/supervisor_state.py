"""The supervisor record: what the supervisor of ``catalogfs serve --detach`` tells other processes.

``<data_root>/serve-supervisor.json``, mode 0600, written by the supervisor (:mod:`catalogfs.supervisor`)
at each change of state and removed when it stops (kept when it gave up)::

    {"version": 1, "pid": 4200, "state": "running", "child_pid": 4242, "restarts": 1,
     "last_exit_status": 1, "last_jvm_exit_status": 52, "last_exit_at": "2026-…+00:00",
     "next_start_at": null, "started_at": "2026-…+00:00", "data_root": "/srv/catalogfs/data",
     "log_file": "/srv/catalogfs/data/logs/serve.log"}

``state`` is one of :data:`STATES`: starting (the first server is starting), running (its server is
ready), restarting (the server exited unexpectedly; the next one starts at ``next_start_at``, or is
starting), gave_up (too many failures in a row: no supervisor runs any more), stopping.
``restarts`` counts the restarts decided so far; ``last_exit_status`` is the exit status of the
server process that ended last (negative: killed by that signal), ``last_jvm_exit_status`` that of
its Spark JVM when the server said (e.g. 52, the JVM's OutOfMemoryError exit).

Whether a record belongs to a live supervisor is decided with a lock, not with the pid (a SIGKILLed
supervisor leaves its record, and pids are reused): the supervisor holds a POSIX lock on
``<data_root>/serve-supervisor.lock`` while it runs, which the kernel releases when it dies, and
:func:`live_supervisor` asks the kernel who holds it. A record without a live supervisor is stale
(:func:`stale_state`), unless it says gave_up.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
import fcntl
from pathlib import Path
import signal
from typing import Iterator

from catalogfs.catalog_lock import lock_holder
from catalogfs.errors import CatalogBusy
from catalogfs.server_record import read_json_record, remove_json_record, write_json_record

STATE_NAME = "serve-supervisor.json"
LOCK_NAME = "serve-supervisor.lock"
STATE_VERSION = 1
STARTING, RUNNING, RESTARTING, GAVE_UP, STOPPING = "starting", "running", "restarting", "gave_up", "stopping"
STATES = (STARTING, RUNNING, RESTARTING, GAVE_UP, STOPPING)
# A supervisor in one of these states will have a server answering soon: clients wait for it
# (they must not open the catalogue themselves, which would keep the next server from starting).
COMING_BACK = (STARTING, RUNNING, RESTARTING)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def describe_exit(status: int) -> str:
    """``status 52`` or ``killed by SIGKILL`` (a negative status, as ``Popen.returncode`` gives it)."""
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"status {status}"


@dataclass(frozen=True)
class SupervisorState:
    """One supervisor, as recorded in ``<data_root>/serve-supervisor.json``."""

    pid: int
    state: str
    started_at: str
    data_root: str
    log_file: str
    child_pid: int | None = None
    restarts: int = 0
    last_exit_status: int | None = None
    last_jvm_exit_status: int | None = None
    last_exit_at: str | None = None
    next_start_at: str | None = None
    version: int = STATE_VERSION

    def last_exit(self) -> str:
        """``exited with status 1 at <time> (its Spark JVM: status 52)``, or "" before any exit."""
        if self.last_exit_status is None:
            return ""
        jvm = "" if self.last_jvm_exit_status is None else f" (its Spark JVM: {describe_exit(self.last_jvm_exit_status)})"
        verb = "was" if self.last_exit_status < 0 else "exited with"
        return f"{verb} {describe_exit(self.last_exit_status)} at {self.last_exit_at}{jvm}"

    def next_start_in(self, now: datetime | None = None) -> float | None:
        """Seconds until the next start (restarting, waiting out its back-off), else None."""
        if self.state != RESTARTING or not self.next_start_at:
            return None
        wait = (datetime.fromisoformat(self.next_start_at) - (now or datetime.now(timezone.utc))).total_seconds()
        return max(wait, 0.0)

    def progress(self) -> str:
        """Where it stands, for ``serve --status`` and the clients' error: ``restart 1, the last
        one exited with status 1 at … (its Spark JVM: status 52); next start in 18 s``."""
        parts = [f"restart {self.restarts}" if self.restarts else "no restart yet"]
        if self.last_exit_status is not None:
            parts[0] += f", the last one {self.last_exit()}"
        wait = self.next_start_in()
        if wait is not None:
            parts.append(f"next start in {wait:.0f} s")
        elif self.state in (STARTING, RESTARTING) and self.child_pid:
            parts.append(f"server pid {self.child_pid} starting")
        return "; ".join(parts)

    def client_message(self) -> str:
        """Why a command cannot use the server now, and what to do (``ServerUnavailable``)."""
        what = "is starting" if self.state == STARTING else "is restarting"
        if self.state == RUNNING:  # its server has just died; the supervisor has not seen it yet
            return (f"the catalogue server of {self.data_root} is restarting (its server, pid {self.child_pid}, "
                    f"has just stopped; supervisor pid {self.pid}); retry in a few seconds")
        return (f"the catalogue server of {self.data_root} {what} ({self.progress()}); retry in a few "
                f"seconds (catalogfs serve --status shows it; its log: {self.log_file})")


def state_path(data_root: Path) -> Path:
    return Path(data_root) / STATE_NAME


def write_state(data_root: Path, state: SupervisorState) -> Path:
    """Write ``state`` atomically (0600); returns its path."""
    return write_json_record(state_path(data_root), state)


def read_state(data_root: Path) -> SupervisorState | None:
    """The record under ``data_root``, or None (none, or not one we can read)."""
    return read_json_record(state_path(data_root), SupervisorState)


def remove_state(data_root: Path, *, pid: int | None = None) -> bool:
    """Remove the record (only if it is ``pid``'s, when given). True when a file was removed."""
    return remove_json_record(state_path(data_root), SupervisorState, pid=pid)


def live_supervisor(data_root: Path) -> SupervisorState | None:
    """The record of the supervisor that runs now for ``data_root`` (it holds the supervisor lock
    and the record is its own), else None. Never call this from the supervisor itself: closing a
    descriptor of the lock file would drop its lock."""
    state = read_state(data_root)
    if state is None:
        return None
    holder = lock_holder(Path(data_root) / LOCK_NAME)
    return state if holder is not None and holder == state.pid else None


def returning_supervisor(data_root: Path) -> SupervisorState | None:
    """The live supervisor when a server of it will answer soon (starting, running, restarting)."""
    state = live_supervisor(data_root)
    return state if state is not None and state.state in COMING_BACK else None


def stale_state(data_root: Path) -> SupervisorState | None:
    """A record that no live supervisor holds (it was SIGKILLed, or gave up), else None."""
    state = read_state(data_root)
    if state is None or live_supervisor(data_root) is not None:
        return None
    return state


@contextmanager
def supervisor_lock(data_root: Path) -> Iterator[None]:
    """Held by the supervisor while it runs (see the module's doc): a second supervisor of the same
    data root fails at once with :class:`CatalogBusy`. POSIX ``lockf`` (not inherited by children,
    released by the kernel when the process dies) on ``<data_root>/serve-supervisor.lock``."""
    path = Path(data_root) / LOCK_NAME
    with open(path, "a+") as handle:
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = lock_holder(path)  # another process's lock: safe to ask from here
            raise CatalogBusy(f"another catalogfs serve supervisor (pid {holder or '?'}) runs for {data_root}; "
                              f"see catalogfs serve --status") from None
        yield
