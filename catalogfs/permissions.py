"""File modes of what catalogfs writes: the data root is private to the user who runs the jobs.

The tables, the metastore, staging, reports, logs and the MLflow registry under the data root are
readable through the catalogue's endpoints only, never by other local users reading files:

* a job's process (and the JVM and Python workers it starts) runs with umask ``077``
  (:func:`private_umask`), so every file it creates is 0600 and every folder 0700; Hadoop's file
  systems (table files, Delta logs, staging) set modes from their own setting, which the Spark
  session gets as ``spark.hadoop.fs.permissions.umask-mode`` = ``077`` (:mod:`catalogfs.spark`);
* a data root that catalogfs creates is made 0700 (:func:`ensure_private_dir`), whatever the umask.

A data root that already exists keeps its mode (``chmod 700`` it to close it). Shared caches
outside the data root set their own modes explicitly (the Delta jars' folder 0755,
:mod:`catalogfs.jars`; the ONNX export cache 0700, :mod:`udfs.onnx_runtime`).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
import tempfile
from typing import Iterator

PRIVATE_UMASK = 0o077
PRIVATE_UMASK_TEXT = "077"  # Hadoop's fs.permissions.umask-mode: its file systems ignore the process umask
PRIVATE_DIR_MODE = 0o700


@contextmanager
def private_umask() -> Iterator[None]:
    """Inside: this process (and every process it starts) creates files 0600 and folders 0700;
    the previous umask is restored after (a job run inside a longer-lived process, e.g. a test)."""
    previous = os.umask(PRIVATE_UMASK)
    try:
        yield
    finally:
        os.umask(previous)


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) when missing, then make it 0700; a folder that already
    existed is left as it is. Returns ``path``."""
    path = Path(path)
    if path.is_dir():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=PRIVATE_DIR_MODE)
    except FileExistsError:  # another process created it first: theirs to set
        return path
    path.chmod(PRIVATE_DIR_MODE)  # mkdir's mode is masked by the umask
    return path


def write_private(path: Path, data: str | bytes) -> Path:
    """Replace ``path`` with ``data``, atomically and 0600 from its first byte (a temporary file in
    the same folder, synced, then renamed over it); a missing folder is made 0700. Returns ``path``."""
    path = Path(path)
    if not path.parent.is_dir():
        ensure_private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data.encode() if isinstance(data, str) else data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
