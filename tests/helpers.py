"""Helpers shared by test modules (fixtures and hooks live in conftest.py)."""

from __future__ import annotations

import atexit
import io
import os
from pathlib import Path
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

from catalogfs.config import Config
from catalogfs.server_record import read_record

PROJECT_ROOT = Path(__file__).resolve().parent.parent  # the checkout the tests run from


def photo_bytes(name: str, fmt: str = "JPEG", **save_args) -> bytes:
    """A scikit-image photo encoded in ``fmt``."""
    import skimage
    from PIL import Image

    buf = io.BytesIO()
    with Image.open(Path(skimage.__file__).parent / "data" / name) as img:
        img.convert("RGB").save(buf, format=fmt, **save_args)
    return buf.getvalue()


def with_database(cfg: Config, database: str) -> Config:
    """The same config writing to another database (tests isolate their tables this way)."""
    return cfg.model_copy(update={"storage": cfg.storage.model_copy(update={"database": database})})


# --- catalogfs serve in tests (tests/test_serve.py, tests/test_shared_catalog.py) ---------------

def server_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET", "SPARK_CONNECT_AUTHENTICATE_TOKEN",
                        "CATALOGFS_SERVE_TOKEN")}
    return {**env, "SPARK_LOCAL_IP": "127.0.0.1"}


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_until_served(root: Path, proc: subprocess.Popen, output: Path, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while read_record(root) is None:
        assert proc.poll() is None, f"catalogfs serve exited {proc.returncode}:\n{output.read_text()}"
        assert time.monotonic() < deadline, f"not ready in {timeout} s:\n{output.read_text()}"
        time.sleep(0.5)


def stop_process_group(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL to the whole process group (the server, its JVM, Python workers)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # its session leader: the group id is its pid
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


_beeline_archive: list[str] | None = None  # the JVM options that map this test process's beeline archive
_beeline_lock = threading.Lock()


def beeline_argv(*args: str) -> list[str]:
    """``java … org.apache.hive.beeline.BeeLine ARGS`` from pyspark's jars (found through
    pyspark.__file__: .venv has no jars of its own). The beeline JVMs of a test process map one
    class-data archive (the JDK's CDS, as catalogfs's own JVMs do: catalogfs/class_archive.py),
    written once by a beeline that only tries a closed port; JVM messages go to stderr, so a
    mismatch never reaches the csv output."""
    import pyspark

    global _beeline_archive
    classpath = ["-cp", f"{Path(pyspark.__file__).parent / 'jars'}/*", "org.apache.hive.beeline.BeeLine"]
    quiet = ["-Xlog:disable", "-Xlog:all=warning:stderr"]
    with _beeline_lock:
        if _beeline_archive is None:
            folder = Path(tempfile.mkdtemp(prefix="catalogfs-test-beeline-"))
            atexit.register(shutil.rmtree, folder, True)
            archive = folder / "beeline.jsa"
            (closed,) = free_ports(1)
            try:
                subprocess.run(["java", *quiet, f"-XX:ArchiveClassesAtExit={archive}", *classpath, "-u",
                                f"jdbc:hive2://127.0.0.1:{closed}/default", "-n", "x", "-p", "x", "-e", "SELECT 1"],
                               capture_output=True, timeout=120)
            except subprocess.TimeoutExpired:
                archive.unlink(missing_ok=True)
            _beeline_archive = [f"-XX:SharedArchiveFile={archive}"] if archive.is_file() else []
    return ["java", *quiet, *_beeline_archive, *classpath, *args]


def beeline_script(jdbc_url: str, folder: Path, statements: list[str], *,
                   login: tuple[str, str] | None = None) -> subprocess.CompletedProcess:
    """Each statement in turn on one connection (a file with --force: a refused one does not stop it),
    logged in as ``login`` (user, password) — the password in a 0600 file (``-w``), not in ``ps``."""
    script = folder / "statements.sql"
    script.write_text("".join(f"{statement};\n" for statement in statements))
    credentials = []
    if login is not None:
        secret = folder / ".beeline-password"
        secret.touch(mode=0o600)
        secret.write_text(login[1])
        credentials = ["-n", login[0], "-w", str(secret)]
    return subprocess.run(beeline_argv("-u", jdbc_url, *credentials, "--silent=true", "--outputformat=csv2",
                                       "--force=true", "-f", str(script)),
                          capture_output=True, text=True, timeout=180, env=server_env())


def beeline_csv_lines(done: subprocess.CompletedProcess) -> list[str]:
    """beeline's csv2 output, without the prompt it echoes ("0: jdbc:hive2://…> ") before a header."""
    return [re.sub(r"^\d+: jdbc:\S*> ", "", line).strip() for line in done.stdout.splitlines()]
