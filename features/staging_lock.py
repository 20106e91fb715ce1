"""Who owns a staging folder: an exclusive lock held for the life of the run that writes it.

A run stages its candidates under ``<data_root>/staging/<run_id>/`` and removes the folder when it
ends; a run that dies (SIGKILL, a lost machine) leaves it. Its owner — the Python driver of the
run, which chose the run id (through ``catalogfs serve`` the server's JVM writes the files, but the
client process is the run) — holds an exclusive ``flock`` on ``<folder>/.owner.lock`` from the moment
the folder exists; the kernel releases it when that process dies, however it dies. So a lock that
can be taken means a dead owner, and the next run removes the folder at its start
(:func:`sweep_dead_runs`) instead of leaving it for ``catalogfs maintain``'s age rule; a lock that is
held means a live run (another job on the same data root), whose folder is never touched.

The owner writes its pid and run id into the file only after it holds the lock, so an empty file
is a run caught between creating the file and locking it, and is left alone. The descriptor is
not inherited by child processes (Python opens files non-inheritable), so the JVM never holds it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from pathlib import Path

from catalogfs import failpoints
from catalogfs.permissions import ensure_private_dir

log = logging.getLogger(__name__)

LOCK_FILE = ".owner.lock"
_HELD: dict[str, int] = {}  # folder → the descriptor holding its lock (for this process's life)


def claim_staging(staging_dir: Path, run_id: str) -> Path:
    """Create ``staging_dir/run_id`` and hold its owner lock until this process ends (or
    :func:`release_staging`); returns the folder. Where the file system refuses ``flock`` the folder
    is still made, without a lock (``catalogfs maintain``'s age rule then applies to it)."""
    folder = Path(staging_dir) / run_id
    ensure_private_dir(Path(staging_dir))
    folder.mkdir(mode=0o700, exist_ok=True)
    if str(folder) in _HELD:
        return folder
    try:
        fd = os.open(folder / LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o600)
    except OSError as exc:
        log.debug("staging %s: no owner lock (%s)", folder, exc)
        return folder
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, f"{os.getpid()} {run_id}\n".encode())
    except OSError as exc:  # taken by another process (a run id reused?) or no flock here
        os.close(fd)
        log.debug("staging %s: no owner lock (%s)", folder, exc)
        return folder
    _HELD[str(folder)] = fd
    return folder


def release_staging(folder: Path) -> None:
    """Let go of this process's lock on ``folder`` (its run has ended); nothing if not held."""
    fd = _HELD.pop(str(folder), None)
    if fd is not None:
        os.close(fd)


def owner_state(folder: Path) -> str:
    """``dead`` (the lock file exists, was written by its owner, and nobody holds it), ``alive``
    (someone holds it, or its owner is still between creating and locking it) or ``none`` (no lock
    file: an older version's folder, or a file system without ``flock``)."""
    if str(folder) in _HELD:
        return "alive"
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDWR)
    except OSError:
        return "none"
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return "alive"
        return "dead" if os.fstat(fd).st_size > 0 else "alive"
    finally:
        os.close(fd)  # also releases the probe's lock


def sweep_dead_runs(staging_dir: Path) -> list[str]:
    """Remove the staging folders whose owner is dead (:func:`owner_state`); returns their run ids.
    Folders of live runs and folders without a lock file are left alone."""
    failpoints.phase("staging.sweep")
    staging_dir = Path(staging_dir)
    if not staging_dir.is_dir():
        return []
    removed = [folder.name for folder in sorted(staging_dir.iterdir())
               if folder.is_dir() and owner_state(folder) == "dead" and _remove(folder)]
    if removed:
        log.info("removed the staging folders of %d dead runs: %s", len(removed), ", ".join(removed))
    return removed


def _remove(folder: Path) -> bool:
    shutil.rmtree(folder, ignore_errors=True)
    return not folder.exists()
