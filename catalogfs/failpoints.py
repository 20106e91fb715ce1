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

**Phases** (:func:`phase`): when ``CATALOGFS_PHASE_LOG`` names a file, a job appends
``<time.time()> <pid> <name>`` there as it enters each phase of its work, so that a harness
(``scripts/chaos.py``, ``make chaos``) can kill it at a random instant *within* a chosen phase
instead of at a random wall-clock instant (which mostly lands in start-up). Off (the variable
unset) it costs one environment lookup. The names are :data:`PHASES`; ``<table>`` is a published
table's name.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Callable

ENV = "CATALOGFS_FAILPOINTS"
LOG_ENV = "CATALOGFS_FAILPOINT_LOG"
PGID_ENV = "CATALOGFS_FAILPOINT_PGID"

PHASE_LOG_ENV = "CATALOGFS_PHASE_LOG"

# Every phase a job announces, in the order a run passes them (one documented list).
PHASES: dict[str, str] = {
    "job.start": "arguments parsed and config loaded; the Spark session (or server connection) is next",
    "job.run": "Spark is up: the job itself starts",
    "job.report": "the job returned: its result is being printed",
    "job.exit": "the command is about to return its exit code (its JVM shuts down after this)",
    "staging.sweep": "a run removes the staging folders of dead runs (their owner lock is free)",
    "extract.scan": "extract: listing the input and checking video ids against the frames table",
    "extract.decode": "extract: decoding the videos into the run's staging folder",
    "extract.merge": "extract: the MERGE of the staged frames into frames",
    "staging.drop": "a run removes its own staging folder",
    "embed.model": "embed: resolving the model in the registry",
    "embed.plan": "embed: catalogue checked, lineage of killed runs repaired, the plan made",
    "embed.stage": "embed: the embed UDF and the staged rows",
    "embed.audit": "embed: the Great Expectations suites on the staged rows",
    "embed.publish": "embed: the publish starts (one MERGE per table follows)",
    "publish.merge.<table>": "embed or relabel: the MERGE into <table> (between two MERGEs is the next one's start)",
    "lineage.record": "a feature_versions row is written (a run's own, or one recovered for a killed run)",
    "embed.views": "embed: which space is current is settled (a promotion when due)",
    "history.sync": "video_embeddings_history is extended from the change feed",
    "embed.report": "embed: the run report and the MLflow run's metrics and tags",
    "promote.alias": "spaces promote: the serving alias moves in the registry",
    "promote.views": "spaces promote: the current_* views point at the space, then its lineage row",
    "relabel.score": "relabel: the model resolved and the taxonomy's text embeddings made",
    "relabel.stage": "relabel: the space's rows re-labelled into staging",
    "relabel.audit": "relabel: the suites on the re-labelled rows",
    "relabel.publish": "relabel: the publish starts (one MERGE per table follows)",
    "index.plan": "index build: the source version and the previous index read",
    "index.build": "index build: the new version made (full or incremental)",
    "index.recall": "index build: recall checked against exact search",
    "index.write": "index build: the version's files written",
    "index.record": "index build: its vector_indexes row appended",
    "index.current": "index build: CURRENT moved to the new version",
    "maintain.history": "maintain: video_embeddings_history synced before VACUUM",
    "maintain.vacuum": "maintain: VACUUM of every table",
    "maintain.sweep": "maintain: staging folders of dead runs removed",
    "maintain.prune": "maintain: old index versions removed",
}

_HOOKS: dict[str, Callable[[], None]] = {}


def phase(name: str) -> None:
    """Announce that this job enters phase ``name`` (one of :data:`PHASES`): a line in the file
    ``CATALOGFS_PHASE_LOG`` names, if set (nothing otherwise)."""
    path = os.environ.get(PHASE_LOG_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"{time.time():.6f} {os.getpid()} {name}\n")
            fh.flush()


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
