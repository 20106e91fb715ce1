"""Named fault-injection points, for the crash and retry tests (never set in production).

A failpoint is a place in the job where a test can make it die or fail. Set them with the
environment variable ``CATALOGFS_FAILPOINTS`` (a comma list; it reaches Spark's Python workers
too) or, in-process, with :func:`register`:

- ``kill@<point>``: SIGKILL the job's process group (driver, JVM) and the caller's own (Spark's
  Python daemon puts its workers in a group of their own) at ``<point>`` — a machine that loses
  power. ``CATALOGFS_FAILPOINT_PGID`` names the job's group (default: the caller's);
- ``crash-first-attempt@<point>``: a Python worker SIGKILLs itself at ``<point>`` on the first
  attempt of each task, so Spark has to retry the task on a fresh worker.

Points: ``udf`` (each batch in the embed UDF), ``after_staging`` (candidates staged, before
validation), ``before_publish``, ``publish`` (after each table of a publish committed; a kill stops
after the first), ``merged_<table>`` (after that table's MERGE committed), ``before_lineage`` (every
table committed, the lineage row not yet written) and ``before_views`` (just before a run makes its
space current).
When ``CATALOGFS_FAILPOINT_LOG`` names a file, every failpoint that fires appends a line there
first, so a test can prove the fault really happened.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Callable

ENV = "CATALOGFS_FAILPOINTS"
LOG_ENV = "CATALOGFS_FAILPOINT_LOG"
PGID_ENV = "CATALOGFS_FAILPOINT_PGID"

_HOOKS: dict[str, Callable[[], None]] = {}


def register(point: str, hook: Callable[[], None] | None) -> None:
    """Run ``hook`` whenever ``point`` is reached in this process (None removes it)."""
    if hook is None:
        _HOOKS.pop(point, None)
    else:
        _HOOKS[point] = hook


def _actions(point: str) -> set[str]:
    spec = os.environ.get(ENV, "")
    return {item.split("@", 1)[0] for item in spec.split(",") if item.endswith(f"@{point}")}


def _log(line: str) -> None:
    path = os.environ.get(LOG_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"{time.time():.3f} {os.getpid()} {line}\n")
            fh.flush()
            os.fsync(fh.fileno())


def _log_first_kill(point: str, job: int) -> None:
    """Log ``kill@point`` once per job ``job``, however many processes reach it at once.

    Two Python workers can reach a point together; each then kills the job. The log line is written
    under an exclusive lock, with a marker file that says it was written, so the process that loses
    the race waits for the winner's line before it kills anyone (and writes none itself).
    """
    path = os.environ.get(LOG_ENV)
    if not path:
        return
    import fcntl

    with open(f"{path}.lock", "a", encoding="utf-8") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        marker = f"{path}.kill-{point}-{job}"
        if not os.path.exists(marker):
            _log(f"kill@{point}")
            os.close(os.open(marker, os.O_CREAT | os.O_WRONLY))


def reached(point: str, *, task_attempt: int | None = None) -> None:
    """Called by the job at ``point``; does nothing unless a test armed that point."""
    hook = _HOOKS.get(point)
    if hook is not None:
        hook()
    if ENV not in os.environ:
        return
    actions = _actions(point)
    if "kill" in actions:
        own = os.getpgrp()
        job = int(os.environ.get(PGID_ENV, own))
        _log_first_kill(point, job)
        if job != own:
            os.killpg(job, signal.SIGKILL)
        os.killpg(own, signal.SIGKILL)
    if "crash-first-attempt" in actions and task_attempt == 0:
        _log(f"crash-first-attempt@{point}")
        os.kill(os.getpid(), signal.SIGKILL)
