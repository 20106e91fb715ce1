"""The supervisor of `catalogfs serve --detach` (catalogfs/supervisor.py): restarts, back-off, give-up.

Most tests here need no JVM: the supervisor runs a stand-in server (a small Python process that
holds the data root's metastore lock and writes a server record, as a real server does; a control
file makes it "die" the way a server whose JVM died does). The last test starts a real server
with --detach, SIGKILLs its Spark JVM and checks that the supervisor brings it back with the same
tables, that clients get the "restarting" error meanwhile, and that --stop leaves no process.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import re
import signal
import subprocess
import sys
import time

import pytest

from catalogfs.catalog_lock import find_server, metastore_holder
from catalogfs.config import DEFAULT_CONF_DIR, load_config
from catalogfs.errors import ServerUnavailable
from catalogfs.server_record import pid_alive, read_record, record_path
from catalogfs.supervisor import RestartPolicy
from catalogfs.supervisor_state import (
    GAVE_UP, RESTARTING, RUNNING, SupervisorState, live_supervisor, read_state, state_path,
)
from tests.helpers import free_ports, server_env

CATALOGFS = str(Path(sys.executable).parent / "catalogfs")

# --- the back-off schedule and the give-up rule -------------------------------------------------


def _policy(**changes) -> RestartPolicy:
    settings = {"max_attempts": 5, "window_seconds": 600.0, "backoff_seconds": 1.0, "max_backoff_seconds": 60.0}
    return RestartPolicy(**{**settings, **changes})


def test_the_back_off_doubles_and_the_failure_after_max_attempts_in_the_window_gives_up():
    policy = _policy()
    delays = [policy.after_failure(now) for now in (0.0, 40.0, 80.0, 120.0, 160.0, 200.0)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, None]


def test_the_back_off_stops_doubling_at_its_cap():
    policy = _policy(max_attempts=10, backoff_seconds=2.0, max_backoff_seconds=10.0)
    assert [policy.after_failure(float(t)) for t in range(6)] == [2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    assert _policy(backoff_seconds=5.0, max_backoff_seconds=1.0).after_failure(0.0) == 5.0  # never below the first


def test_a_server_that_stayed_up_longer_than_the_window_starts_over():
    policy = _policy(max_attempts=2, window_seconds=100.0)
    assert policy.after_failure(0.0) == 1.0 and policy.after_failure(10.0) == 2.0
    assert policy.after_failure(105.0) == 2.0  # the one at 0 left the window, the one at 10 is in it
    assert policy.after_failure(400.0) == 1.0  # up 295 s: a fresh start, however many failures before
    assert [policy.after_failure(t) for t in (401.0, 402.0)] == [2.0, None]  # then 3 in the window: give up
    assert _policy(max_attempts=0).after_failure(0.0) is None  # 0: never restart


def test_the_restart_keys_are_typed_config():
    cfg = load_config([DEFAULT_CONF_DIR / "local.yaml"], ["server.restart_max_backoff_seconds=2"])
    assert RestartPolicy.from_config(cfg.server) == _policy(max_backoff_seconds=2.0)
    with pytest.raises(Exception, match="server.restart_max_attempts"):
        load_config([DEFAULT_CONF_DIR / "local.yaml"], ["server.restart_max_attempts=-1"])


# --- the supervisor with a stand-in server (no JVM) ---------------------------------------------

FAKE_SERVER = """
import fcntl, os, signal, sys, time
from pathlib import Path
from catalogfs.server_record import ServerRecord, remove_record, write_record

root, control = Path(sys.argv[1]), Path(sys.argv[2])
fail = control / "fail-start"
if fail.exists():
    sys.exit(int(fail.read_text()))
(root / "metastore_db").mkdir(parents=True, exist_ok=True)
lock = open(root / "metastore_db" / "dbex.lck", "a+")
fcntl.lockf(lock, fcntl.LOCK_EX)  # as Derby does in a real server's JVM
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
write_record(root, ServerRecord(pid=os.getpid(), jvm_pid=os.getpid(), connect_url="sc://localhost:1/;token=t0ken",
             jdbc_url="jdbc:hive2://127.0.0.1:1/default", token="t0ken", started_at="now", data_root=str(root),
             log_file=""))
print("stand-in server ready", flush=True)
while not stop:
    if (control / "die").exists():
        (control / "die").unlink()
        remove_record(root, pid=os.getpid())
        print("catalogfs serve: the Spark JVM exited unexpectedly (status 52); stopping", flush=True)
        sys.exit(1)
    time.sleep(0.1)
remove_record(root, pid=os.getpid())
"""

SUPERVISOR = """
import sys
from catalogfs.config import DEFAULT_CONF_DIR, load_config
from catalogfs.supervisor import supervise

cfg = load_config([DEFAULT_CONF_DIR / "local.yaml"], sys.argv[3:])
sys.exit(supervise(cfg, [], command=[sys.executable, sys.argv[1], cfg.storage.data_root.as_posix(), sys.argv[2]]))
"""


class StandIn:
    """A supervisor (its own session) running the stand-in server over ``root``."""

    def __init__(self, tmp_path: Path, *settings: str) -> None:
        self.root, self.control = tmp_path / "data", tmp_path / "control"
        self.control.mkdir()
        script = tmp_path / "fake_server.py"
        script.write_text(FAKE_SERVER)
        self.settings = [f"storage.data_root={self.root}", *settings]
        self.overrides = [a for s in self.settings for a in ("--set", s)]
        self.proc = subprocess.Popen([sys.executable, "-c", SUPERVISOR, str(script), str(self.control),
                                      *self.settings], env=server_env(), start_new_session=True,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    @property
    def storage(self):
        return load_config([DEFAULT_CONF_DIR / "local.yaml"], self.settings).storage

    def wait_for(self, predicate, what: str, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while not (found := predicate()):
            assert time.monotonic() < deadline, f"{what}: not within {timeout} s; state {read_state(self.root)}"
            time.sleep(0.1)
        return found

    def serving(self, restarts: int = 0) -> SupervisorState:
        """Its state once it is running after ``restarts`` restarts, its server the data root's live server."""
        def ready():
            current, server = read_state(self.root), find_server(self.storage)
            return current if (current and current.state == RUNNING and current.restarts == restarts and server
                               and server.pid == current.child_pid) else None
        return self.wait_for(ready, f"a running server after {restarts} restarts")

    def kill_all(self) -> None:
        state = read_state(self.root)
        for pid in {self.proc.pid, *(filter(None, [state and state.child_pid]))}:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


def _catalogfs(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([CATALOGFS, *args], capture_output=True, text=True, timeout=timeout, env=server_env())


def test_a_server_that_dies_is_restarted_after_its_back_off_and_clients_are_told(tmp_path):
    from catalogfs.spark import server_session

    sup = StandIn(tmp_path, "server.restart_backoff_seconds=4", "server.restart_max_backoff_seconds=4")
    try:
        first = sup.serving()
        assert first.pid == sup.proc.pid and first.restarts == 0 and first.last_exit_status is None
        assert oct(state_path(sup.root).stat().st_mode & 0o777) == "0o600"
        (sup.control / "die").touch()  # the server's JVM "died": the server exits 1
        restarting = sup.wait_for(lambda: (s := read_state(sup.root)) and s.state == RESTARTING and s, "restarting")
        assert restarting.restarts == 1 and restarting.last_exit_status == 1 and restarting.last_jvm_exit_status == 52
        # a client does not start its own driver (it would take the catalogue): exit 6, and why
        refused = _catalogfs("sql", *sup.overrides, "SELECT 1")
        assert refused.returncode == 6, refused.stderr
        assert re.search(rf"the catalogue server of {re.escape(str(sup.root))} is restarting \(restart 1, the last "
                         r"one exited with status 1 at \S+ \(its Spark JVM: status 52\)", refused.stderr), refused.stderr
        assert "retry in a few seconds" in refused.stderr and "JVM log" not in refused.stderr  # no JVM started
        always = load_config([DEFAULT_CONF_DIR / "local.yaml"], [*sup.settings, "server.use=always"])
        with pytest.raises(ServerUnavailable, match="is restarting"):
            server_session(always)
        never = load_config([DEFAULT_CONF_DIR / "local.yaml"], [*sup.settings, "server.use=never"])
        assert server_session(never) is None  # `never` keeps its own driver (and its exit 7 when busy)
        status = _catalogfs("serve", "--status", *sup.overrides)
        assert status.returncode == 3 and "restarting, not answering yet" in status.stdout, status.stdout
        second = sup.serving(restarts=1)
        assert second.child_pid != first.child_pid and second.restarts == 1 and second.pid == first.pid
        status = _catalogfs("serve", "--status", *sup.overrides)
        assert status.returncode == 0, status.stdout + status.stderr
        assert f"running (pid {second.child_pid}" in status.stdout
        assert f"supervisor pid {first.pid}, restarts so far 1; the last server exited with status 1" in status.stdout
        log = (sup.root / "logs" / "serve.log").read_text()
        assert re.search(rf"the server \(pid {first.child_pid}\) exited with status 1 at \S+ \(its Spark JVM: "
                         r"status 52\); restart 1 in 4 s", log), log
        stopped = _catalogfs("serve", "--stop", *sup.overrides)
        assert stopped.returncode == 0, stopped.stderr
        assert f"stopped (pid {second.child_pid} and its supervisor, pid {first.pid})" in stopped.stdout
        assert sup.proc.wait(timeout=10) == 0 and not pid_alive(second.child_pid)
        assert read_state(sup.root) is None and read_record(sup.root) is None
    finally:
        sup.kill_all()


def test_the_supervisor_gives_up_after_too_many_failures_and_says_so(tmp_path):
    sup = StandIn(tmp_path, "server.restart_max_attempts=1", "server.restart_backoff_seconds=0.2")
    try:
        sup.serving()
        (sup.control / "die").touch()
        sup.serving(restarts=1)
        (sup.control / "die").touch()  # a second failure within the window: more than 1
        assert sup.proc.wait(timeout=30) == 6
        gave_up = read_state(sup.root)
        assert gave_up.state == GAVE_UP and gave_up.restarts == 1 and gave_up.last_jvm_exit_status == 52
        assert live_supervisor(sup.root) is None and read_record(sup.root) is None
        assert "giving up: 2 failures within 600 s (server.restart_max_attempts=1)" in (
            sup.root / "logs" / "serve.log").read_text()
        status = _catalogfs("serve", "--status", *sup.overrides)
        assert status.returncode == 3 and "gave up after 1 restarts, the last server exited with status 1" in status.stdout
        assert read_state(sup.root) == gave_up  # --status keeps it; --stop clears it
        stopped = _catalogfs("serve", "--stop", *sup.overrides)
        assert stopped.returncode == 0 and "gave up" in stopped.stdout and read_state(sup.root) is None
    finally:
        sup.kill_all()


def test_a_first_start_that_fails_is_not_restarted(tmp_path):
    root, control, script = tmp_path / "data", tmp_path / "control", tmp_path / "fake_server.py"
    control.mkdir()
    (control / "fail-start").write_text("2")  # e.g. a port in use: exit 2 before any JVM
    script.write_text(FAKE_SERVER)
    done = subprocess.run([sys.executable, "-c", SUPERVISOR, str(script), str(control), f"storage.data_root={root}"],
                          env=server_env(), timeout=60)
    assert done.returncode == 2  # the server's own status, for --detach to report
    assert "the first start failed (status 2): not restarting it" in (root / "logs" / "serve.log").read_text()
    assert read_state(root) is None


def test_a_killed_supervisor_leaves_its_server_running_unrestarted_and_found(tmp_path):
    sup = StandIn(tmp_path)
    try:
        state = sup.serving()
        os.kill(state.pid, signal.SIGKILL)
        sup.proc.wait(timeout=10)
        assert live_supervisor(sup.root) is None and pid_alive(state.child_pid)
        status = _catalogfs("serve", "--status", *sup.overrides)
        assert status.returncode == 0 and f"running (pid {state.child_pid}" in status.stdout
        assert "not supervised: its supervisor" in status.stdout and read_state(sup.root) is None  # stale: removed
        stopped = _catalogfs("serve", "--stop", *sup.overrides)
        assert stopped.returncode == 0 and f"stopped (pid {state.child_pid})" in stopped.stdout
        assert not pid_alive(state.child_pid) and read_record(sup.root) is None
        time.sleep(1.5)
        assert read_record(sup.root) is None and metastore_holder(sup.root / "metastore_db") is None  # none came back
    finally:
        sup.kill_all()


def test_no_second_server_or_supervisor_while_one_supervises(tmp_path):
    sup = StandIn(tmp_path, "server.restart_backoff_seconds=30")
    try:
        sup.serving()
        (sup.control / "die").touch()
        sup.wait_for(lambda: (s := read_state(sup.root)) and s.state == RESTARTING, "restarting")
        for args in (("serve",), ("serve", "--detach")):  # the catalogue is free, but its server comes back
            done = _catalogfs(*args, *sup.overrides, "--set", f"server.connect_port={free_ports(1)[0]}")
            assert done.returncode == 7, done.stderr
            assert f"served under the supervisor pid {sup.proc.pid} (restarting; restart 1" in done.stderr
        assert read_state(sup.root).state == RESTARTING  # untouched
        stopped = _catalogfs("serve", "--stop", *sup.overrides)  # during the back-off: at once, no restart
        assert stopped.returncode == 0 and f"stopped (the supervisor, pid {sup.proc.pid})" in stopped.stdout
        assert sup.proc.wait(timeout=10) == 0 and read_state(sup.root) is None and read_record(sup.root) is None
    finally:
        sup.kill_all()


# --- a real server, supervised: its JVM killed, brought back with the same tables -----------------

CREATE = """
import sys
from pyspark.sql import SparkSession
spark = SparkSession.builder.remote(sys.argv[1]).create()
spark.sql("CREATE DATABASE IF NOT EXISTS served")
spark.sql("CREATE TABLE served.items (k INT, v STRING) USING delta")
spark.sql("INSERT INTO served.items VALUES (1, 'one'), (2, 'two'), (3, 'three')")
"""


def _rows(overrides: list[str]) -> list[dict]:
    done = _catalogfs("sql", *overrides, "--json", "SELECT k, v FROM served.items ORDER BY k", timeout=180)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _processes_naming(root: Path) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if proc.name.isdigit() and str(root) in cmdline and pid_alive(int(proc.name)):
            found.append(f"{proc.name}: {cmdline[:200]}")
    return found


@pytest.mark.spark
@pytest.mark.slow
def test_a_killed_jvm_is_restarted_with_the_same_tables_and_stop_leaves_nothing(tmp_path):
    root = tmp_path / "data"
    connect_port, jdbc_port = free_ports(2)
    settings = [f"storage.data_root={root}", "spark.master=local[2]", "spark.settings.spark.driver.memory=1g",
                f"server.connect_port={connect_port}", f"server.jdbc_port={jdbc_port}",
                "server.restart_backoff_seconds=5"]
    overrides = [a for s in settings for a in ("--set", s)]
    started = time.monotonic()
    done = _catalogfs("serve", "--detach", *overrides, timeout=400)
    supervisor = read_state(root)
    try:
        assert done.returncode == 0, done.stderr + done.stdout
        first = read_record(root)
        assert supervisor.state == RUNNING and supervisor.child_pid == first.pid and supervisor.pid != first.pid
        assert f"started in the background (pid {first.pid})" in done.stdout and f"pid {supervisor.pid}" in done.stdout
        created = subprocess.run([sys.executable, "-c", CREATE, first.connect_url], capture_output=True, text=True,
                                 timeout=300, env=server_env())
        assert created.returncode == 0, created.stderr[-3000:]
        before = _rows(overrides)
        assert before == [{"k": 1, "v": "one"}, {"k": 2, "v": "two"}, {"k": 3, "v": "three"}]
        delta_log = root / "warehouse" / "served.db" / "items" / "_delta_log"
        versions = sorted(p.name for p in delta_log.glob("*.json"))
        print(f"ready and written after {time.monotonic() - started:.0f} s")

        killed = time.monotonic()
        os.kill(first.jvm_pid, signal.SIGKILL)  # as the OOM killer would (an OutOfMemoryError exits 52)
        deadline = time.monotonic() + 30
        while (state := read_state(root)) is None or state.state != RESTARTING:
            assert time.monotonic() < deadline, f"not restarting: {state}"
            time.sleep(0.2)
        refused = _catalogfs("sql", *overrides, "SELECT 1")  # server.use=auto
        assert refused.returncode == 6, refused.stderr
        assert re.search(r"is restarting \(restart 1, the last one exited with status 1 at \S+ \(its Spark JVM: "
                         r"killed by SIGKILL\)", refused.stderr), refused.stderr
        status = _catalogfs("serve", "--status", *overrides)
        assert status.returncode == 3 and "restarting" in status.stdout, status.stdout

        deadline = time.monotonic() + 300
        while (second := find_server(load_config([DEFAULT_CONF_DIR / "local.yaml"], settings).storage)) is None:
            assert time.monotonic() < deadline, (root / "logs" / "serve.log").read_text()[-3000:]
            time.sleep(0.5)
        print(f"back {time.monotonic() - killed:.0f} s after the kill")
        assert second.pid != first.pid and not pid_alive(first.pid) and not pid_alive(first.jvm_pid)
        status = _catalogfs("serve", "--status", *overrides)
        assert status.returncode == 0 and f"running (pid {second.pid}" in status.stdout, status.stdout
        assert f"supervisor pid {supervisor.pid}, restarts so far 1" in status.stdout
        assert _rows(overrides) == before  # nothing published was lost …
        assert sorted(p.name for p in delta_log.glob("*.json")) == versions  # … and no version was added

        stopped = _catalogfs("serve", "--stop", *overrides, timeout=180)
        assert stopped.returncode == 0, stopped.stderr
        for pid in (supervisor.pid, second.pid, second.jvm_pid):
            assert not pid_alive(pid), pid
        assert read_state(root) is None and not record_path(root).exists()
        assert metastore_holder(root / "metastore_db") is None
        assert _processes_naming(root) == []
        print(f"whole test {time.monotonic() - started:.0f} s")
    finally:
        _catalogfs("serve", "--stop", *overrides, timeout=180)
        if supervisor is not None and pid_alive(supervisor.pid):
            os.killpg(supervisor.pid, signal.SIGKILL)
        for leftover in _processes_naming(root):
            os.kill(int(leftover.split(":")[0]), signal.SIGKILL)
