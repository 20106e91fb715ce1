"""A catalogue held by another process: one line naming it and exit code 7, at once, no JVM started.

The embedded Derby metastore admits one process; its JVM holds a POSIX lock on
``metastore_db/dbex.lck``. A stand-in process holds the same lock here (no JVM needed), and a
second command on the data root must say who holds it instead of waiting ~45 s for a Java stack.
The stand-in is the ``held`` fixture (tests/conftest.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from catalogfs.catalog_lock import metastore_holder


def test_the_holder_is_found_and_released(held):
    root, proc = held
    assert metastore_holder(root / "metastore_db") == proc.pid
    proc.kill()
    proc.wait()
    assert metastore_holder(root / "metastore_db") is None  # the kernel dropped the lock with it
    assert metastore_holder(root / "no_such_metastore") is None


def test_a_second_command_names_the_holder_and_exits_7(held):
    root, proc = held
    catalogfs = Path(sys.executable).parent / "catalogfs"
    started = time.monotonic()
    done = subprocess.run([str(catalogfs), "sql", "--set", f"storage.data_root={root}", "SELECT 1"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"})
    seconds = time.monotonic() - started
    assert done.returncode == 7, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"pid {proc.pid} ({sys.executable} -c import fcntl" in lines[0], lines
    assert "in use" in lines[0] and str(root) in lines[0]
    assert done.stdout == ""
    assert not (root / "logs").exists()  # refused before a JVM was started
    assert seconds < 60, seconds  # generous: the point is no 45 s Derby wait plus a JVM start


_ORPHAN_HOLDER = """
import fcntl, os, subprocess, sys
path, hold, pid_file = sys.argv[1], float(sys.argv[2]), sys.argv[3]
if os.fork():  # the parent exits at once: the holder is orphaned, like a JVM whose command ended
    os._exit(0)
fh = open(path, "a+")
fcntl.lockf(fh, fcntl.LOCK_EX)
with open(pid_file, "w") as out:
    out.write(str(os.getpid()))
import time
time.sleep(hold)
"""


def _orphan_holder(tmp_path, hold: float) -> tuple[Path, int]:
    root = tmp_path / "data"
    (root / "metastore_db").mkdir(parents=True)
    pid_file = tmp_path / "holder.pid"
    subprocess.run([sys.executable, "-c", _ORPHAN_HOLDER, str(root / "metastore_db" / "dbex.lck"), str(hold),
                    str(pid_file)], check=True, timeout=30)
    deadline = time.monotonic() + 30
    while not (pid_file.exists() and pid_file.read_text()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return root, int(pid_file.read_text())


def test_back_to_back_commands_wait_for_the_last_ones_exiting_jvm(tmp_path):
    """The holder's parent has exited (a command whose JVM is still shutting down): wait for it."""
    from catalogfs.catalog_lock import ensure_catalog_free, orphaned

    root, pid = _orphan_holder(tmp_path, hold=1.5)
    assert metastore_holder(root / "metastore_db") == pid and orphaned(pid)
    started = time.monotonic()
    ensure_catalog_free(root, root / "metastore_db")
    assert time.monotonic() - started >= 0.5
    assert metastore_holder(root / "metastore_db") is None


def test_an_exiting_holder_that_never_lets_go_is_still_reported(tmp_path):
    from catalogfs.catalog_lock import ensure_catalog_free
    from catalogfs.errors import CatalogBusy

    root, pid = _orphan_holder(tmp_path, hold=60)
    try:
        started = time.monotonic()
        try:
            ensure_catalog_free(root, root / "metastore_db", grace=1.0)
            raise AssertionError("no CatalogBusy")
        except CatalogBusy as exc:
            assert f"pid {pid}" in str(exc)
        assert 1.0 <= time.monotonic() - started < 10
    finally:
        os.kill(pid, 9)
