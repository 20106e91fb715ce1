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
