"""The supervisor of ``catalogfs serve --detach``: it runs the server and starts it again when it dies.

``serve --detach`` starts this process (``catalogfs serve --supervise …``, in its own session);
it runs the foreground server (``python -m jobs.cli serve …``, same arguments) as its child and
waits. When the server exits unexpectedly — a non-zero status (its Spark JVM died: an
``OutOfMemoryError`` exits 52, a SIGKILL …) or killed by a signal the supervisor did not send — it
starts a new one on the same data root after a back-off (:class:`RestartPolicy`): published
tables are Delta tables in the warehouse and the metastore is on disk, so the new server serves
exactly what was committed. It does not restart a server that stopped cleanly (status 0: someone
sent it SIGTERM) nor one whose first start failed (``--detach`` reports that one itself).

Its state (:mod:`catalogfs.supervisor_state`) is in ``<data_root>/serve-supervisor.json``; what it
does is appended, one line each, to ``<data_root>/logs/serve.log``, where the server's own output
goes too. SIGTERM or SIGINT stops it: SIGTERM to the server, wait for it (SIGKILL to the server and
its JVM after :data:`STOP_GRACE_SECONDS`), no restart. If the supervisor itself is killed, the server
runs on unsupervised (``serve --status`` and ``--stop`` find it by its record) and nothing restarts it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
import os
from pathlib import Path
import re
import signal
import subprocess
import sys
import threading
import time
from typing import BinaryIO, Sequence

from catalogfs.catalog_lock import find_server
from catalogfs.config import Config
from catalogfs.errors import EXIT_ERROR, EXIT_OK, EXIT_UNAVAILABLE, CatalogBusy
from catalogfs.server_record import pid_alive, read_record
from catalogfs.supervisor_state import (
    GAVE_UP, RESTARTING, RUNNING, STARTING, STOPPING, SupervisorState, describe_exit, live_supervisor, now_iso,
    remove_state, stale_state, supervisor_lock, write_state,
)

SERVE_LOG = "serve.log"  # under <data_root>/logs: the supervisor's lines and the server's output
SUPERVISE_FLAG = "--supervise"  # `catalogfs serve --supervise …`: run as the supervisor (what --detach starts)
STOP_GRACE_SECONDS = 120.0  # after SIGTERM, how long the server may take before it and its JVM are killed
POLL_SECONDS = 0.5
# What the server prints when its JVM died under it (jobs/serve.py `_wait`)
_JVM_EXITED = re.compile(rb"the Spark JVM exited unexpectedly \(status (-?\d+)\)")


@dataclass
class RestartPolicy:
    """When to start the server again after a failure, and when to give up.

    Failures are counted within a sliding window of ``window_seconds``: the n-th failure in the
    window waits ``backoff_seconds * 2**(n-1)`` (at most ``max_backoff_seconds``) before the next
    start, and the one after ``max_attempts`` failures in the window gives up. A server that stayed
    up longer than the window therefore starts over at the first delay."""

    max_attempts: int
    window_seconds: float
    backoff_seconds: float
    max_backoff_seconds: float
    failures: list[float] = field(default_factory=list)  # monotonic times of the failures in the window

    @classmethod
    def from_config(cls, server) -> RestartPolicy:
        """From ``cfg.server`` (:class:`~catalogfs.config.ServerConfig`)."""
        return cls(max_attempts=server.restart_max_attempts, window_seconds=server.restart_window_seconds,
                   backoff_seconds=server.restart_backoff_seconds,
                   max_backoff_seconds=server.restart_max_backoff_seconds)

    def after_failure(self, now: float) -> float | None:
        """Record a failure at ``now`` (monotonic seconds): the delay before the next start, or None
        to give up."""
        self.failures = [t for t in self.failures if now - t < self.window_seconds] + [now]
        count = len(self.failures)
        if count > self.max_attempts:
            return None
        return min(self.backoff_seconds * 2 ** (count - 1), max(self.max_backoff_seconds, self.backoff_seconds))


def server_command(argv: Sequence[str]) -> list[str]:
    """The foreground server the supervisor runs: ``catalogfs serve`` with the same arguments."""
    return [sys.executable, "-m", "catalogfs.jobs.cli", "serve", *argv]


def supervise(cfg: Config, argv: Sequence[str], *, command: Sequence[str] | None = None) -> int:
    """Run the server (``command``, default :func:`server_command` of ``argv``) until SIGTERM or
    SIGINT, restarting it as :class:`RestartPolicy` says. Returns 0 when stopped, the first
    server's own status when its first start failed, 6 when it gave up."""
    root = cfg.storage.data_root
    log_path = root / "logs" / SERVE_LOG
    log_path.parent.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with supervisor_lock(root), open(log_path, "ab", buffering=0) as out:
        run = _Supervision(cfg, list(command or server_command(argv)), out, stop)
        try:
            return run.loop()
        finally:
            run.finish()


class _Supervision:
    """One supervisor's loop; its state is written through :meth:`_set` at each change."""

    def __init__(self, cfg: Config, command: list[str], out: BinaryIO, stop: threading.Event) -> None:
        self.cfg, self.command, self.out, self.stop = cfg, command, out, stop
        self.root = cfg.storage.data_root
        self.policy = RestartPolicy.from_config(cfg.server)
        self.state = SupervisorState(pid=os.getpid(), state=STARTING, started_at=now_iso(),
                                     data_root=str(self.root), log_file=out.name)
        self._set()

    def loop(self) -> int:
        self._say(f"supervising the catalogue server of {self.root} ({self._policy_text()})")
        ever_ready = False
        while not self.stop.is_set():
            status, ready = self._run_once()
            ever_ready = ever_ready or ready
            if self.stop.is_set():
                break
            if status == EXIT_OK:
                self._say(f"the server (pid {self.state.child_pid}) stopped with status 0 (it was asked to "
                          "stop): not restarting it")
                return EXIT_OK
            if not ever_ready:
                self._say(f"the first start failed ({describe_exit(status)}): not restarting it")
                return status if status > 0 else EXIT_ERROR
            if not self._wait_to_restart():
                return EXIT_UNAVAILABLE
        self._say("stopped")
        return EXIT_OK

    def finish(self) -> None:
        """On the way out: keep a gave_up record, remove any other."""
        if self.state.state != GAVE_UP:
            remove_state(self.root, pid=self.state.pid)

    def _run_once(self) -> tuple[int, bool]:
        """Start the server, wait until it exits (or stop it when asked); (its status, was it ready)."""
        offset = os.fstat(self.out.fileno()).st_size
        child = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=self.out, stderr=subprocess.STDOUT)
        self._set(child_pid=child.pid, next_start_at=None)
        self._say(f"started the server (pid {child.pid})")
        ready = False
        while child.poll() is None:
            if self.stop.wait(POLL_SECONDS):
                self._stop_child(child)
                break
            if not ready and _serving(self.cfg, child.pid):
                ready = True
                self._set(state=RUNNING)
                self._say(f"the server (pid {child.pid}) is ready")
        status = child.wait()
        if not self.stop.is_set():
            self._set(last_exit_status=status, last_jvm_exit_status=_jvm_status(Path(self.out.name), offset),
                      last_exit_at=now_iso())
        return status, ready

    def _wait_to_restart(self) -> bool:
        """After an unexpected exit: wait out the back-off (True), or give up (False)."""
        delay, child = self.policy.after_failure(time.monotonic()), self.state.child_pid
        if delay is None:
            self._set(state=GAVE_UP, child_pid=None)
            self._say(f"the server (pid {child}) {self.state.last_exit()}; giving up: "
                      f"{len(self.policy.failures)} failures within {self.policy.window_seconds:g} s "
                      f"(server.restart_max_attempts={self.policy.max_attempts}); start it again with "
                      "catalogfs serve --detach")
            return False
        next_start = datetime.now(timezone.utc) + timedelta(seconds=delay)
        self._set(state=RESTARTING, restarts=self.state.restarts + 1, child_pid=None,
                  next_start_at=next_start.isoformat(timespec="seconds"))
        self._say(f"the server (pid {child}) {self.state.last_exit()}; restart {self.state.restarts} "
                  f"in {delay:g} s")
        self.stop.wait(delay)  # a stop request ends the wait (the loop then stops)
        return True

    def _stop_child(self, child: subprocess.Popen) -> None:
        """SIGTERM to the server, as `serve --stop` does; SIGKILL to it and its JVM after the grace time."""
        self._set(state=STOPPING)
        self._say(f"stopping the server (pid {child.pid})")
        jvm = _jvm_of(self.root, child.pid)
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            self._say(f"the server (pid {child.pid}) did not stop within {STOP_GRACE_SECONDS:g} s: killing it")
            for pid in filter(None, (_jvm_of(self.root, child.pid) or jvm, child.pid)):
                _kill(pid)
            child.wait()

    def _set(self, **changes) -> None:
        if self.stop.is_set() and changes.get("state") not in (None, GAVE_UP):
            changes["state"] = STOPPING
        self.state = replace(self.state, **changes)
        write_state(self.root, self.state)

    def _say(self, message: str) -> None:
        self.out.write(f"{now_iso()} catalogfs serve supervisor (pid {self.state.pid}): {message}\n".encode())

    def _policy_text(self) -> str:
        p = self.policy
        return (f"back-off {p.backoff_seconds:g} s doubling up to {p.max_backoff_seconds:g} s; gives up after "
                f"{p.max_attempts} restarts within {p.window_seconds:g} s")


def _serving(cfg: Config, child_pid: int) -> bool:
    """The child is the data root's live server (its record written, its JVM holding the catalogue)."""
    server = find_server(cfg.storage)
    return server is not None and server.pid == child_pid


def _jvm_of(root: Path, server_pid: int) -> int | None:
    record = read_record(root)
    return record.jvm_pid if record is not None and record.pid == server_pid else None


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _jvm_status(log_file: Path, offset: int) -> int | None:
    """The exit status of the server's Spark JVM, when the server said it in its output (since ``offset``)."""
    try:
        with open(log_file, "rb") as handle:
            handle.seek(offset)
            found = _JVM_EXITED.findall(handle.read())
    except OSError:
        return None
    return int(found[-1]) if found else None


# --- for `serve --detach`, `--status`, `--stop` and a foreground `serve` -----------------------------

def ensure_not_supervised(data_root: Path, *, parent: int | None = None) -> None:
    """Raise :class:`CatalogBusy` when a supervisor runs for ``data_root`` (unless it is ``parent``,
    the supervisor that started this server): a second server would take the catalogue its next
    restart needs."""
    state = live_supervisor(data_root)
    if state is not None and state.pid != parent:
        raise CatalogBusy(f"the catalogue at {data_root} is served under the supervisor pid {state.pid} "
                          f"({state.state}; {state.progress()}): see catalogfs serve --status, or stop it "
                          "with catalogfs serve --stop")


def supervision_note(data_root: Path) -> str:
    """For ``serve --status`` while a server runs: who supervises it, and its restarts so far."""
    state = live_supervisor(data_root)
    if state is not None:
        last = f"; the last server {state.last_exit()}" if state.last_exit_status is not None else ""
        return f" · supervisor pid {state.pid}, restarts so far {state.restarts}{last}"
    stale = stale_state(data_root)
    if stale is not None and stale.state != GAVE_UP:
        remove_state(data_root, pid=stale.pid)
        return (f" · not supervised: its supervisor (pid {stale.pid}) has exited, nothing restarts the server "
                "if it dies (removed the stale supervisor record)")
    return ""


def not_running_note(data_root: Path, *, forget_gave_up: bool = False) -> str:
    """For ``serve --status`` without a live server or supervisor: a gave_up record (kept, unless
    ``forget_gave_up``), or a stale one (removed)."""
    stale = stale_state(data_root)
    if stale is None:
        return ""
    if stale.state == GAVE_UP:
        if forget_gave_up:
            remove_state(data_root, pid=stale.pid)
        return (f"; its supervisor (pid {stale.pid}) gave up after {stale.restarts} restarts, the last server "
                f"{stale.last_exit()} (see {stale.log_file}; start it again with catalogfs serve --detach)")
    remove_state(data_root, pid=stale.pid)
    return f" (removed the stale supervisor record of pid {stale.pid}, which has exited)"


def stop_supervisor(data_root: Path, state: SupervisorState, *, timeout: float) -> list[int]:
    """SIGTERM to the supervisor (it stops its server, no restart), then wait up to ``timeout`` s
    for it, its server and the server's JVM to exit; returns the pids still alive (none: stopped)."""
    record = read_record(data_root)
    pids = {state.pid, *filter(None, (state.child_pid,))}
    if record is not None and record.pid == state.child_pid:
        pids |= {record.pid, record.jvm_pid}
    try:
        os.kill(state.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while (alive := sorted(pid for pid in pids if pid_alive(pid))) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive
