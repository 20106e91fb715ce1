"""Staging folders of dead runs are swept by the next run, never those of live runs (no Spark).

A run holds an exclusive ``flock`` on ``<staging>/<run_id>/.owner.lock`` for its life (the kernel
releases it when the process dies, SIGKILL included). A starting run (extract, embed, relabel)
removes every staging folder whose lock it can take; ``catalogfs maintain`` does too, and keeps its
age rule for folders without a lock file (written by an older version). Issue 25: a killed
extract's staging stayed until ``maintain`` swept folders older than 24 h.
"""

from __future__ import annotations

import fcntl
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

from catalogfs.features.maintenance import sweep_staging

LOCK = ".owner.lock"


def _own_folder(folder: str, ready, stop) -> None:
    """A run's owner: the folder, its lock taken, then its pid and run id written; holds it until
    ``stop`` is set (or it is killed)."""
    path = Path(folder)
    path.mkdir(parents=True)
    (path / "frames").mkdir()
    (path / "frames" / "part-0.parquet").write_bytes(b"staged rows")
    fd = os.open(path / LOCK, os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, f"{os.getpid()} {path.name}\n".encode())
    ready.set()
    stop.wait(60)


def _owner(ctx, folder: Path):
    ready, stop = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_own_folder, args=(str(folder), ready, stop))
    proc.start()
    assert ready.wait(30)
    return proc, stop


def _age(folder: Path, hours: float) -> None:
    then = time.time() - hours * 3600
    for path in [*folder.rglob("*"), folder]:
        os.utime(path, (then, then))


def test_a_dead_runs_folder_is_swept_at_once_and_a_live_runs_never(tmp_path):
    ctx = mp.get_context("fork")
    staging = tmp_path / "staging"
    dead, alive = staging / "run-dead", staging / "run-alive"
    killed, _ = _owner(ctx, dead)
    os.kill(killed.pid, signal.SIGKILL)  # a killed extract: its folder and lock file stay
    killed.join(30)
    running, stop = _owner(ctx, alive)
    _age(alive, 48)  # a long run (or a clock that jumped): age says nothing about its owner
    try:
        removed = sweep_staging(staging, older_than_hours=24)
        assert removed == ["run-dead"]
        assert not dead.exists()
        assert (alive / "frames" / "part-0.parquet").read_bytes() == b"staged rows"
    finally:
        stop.set()
        running.join(30)
    assert sweep_staging(staging, older_than_hours=24) == ["run-alive"]  # its owner has ended


def test_folders_without_an_owner_lock_keep_the_age_rule(tmp_path):
    staging = tmp_path / "staging"
    old, new = staging / "run-old", staging / "run-new"
    for folder in (old, new):
        (folder / "frames").mkdir(parents=True)
        (folder / "frames" / "part-0.parquet").write_bytes(b"rows")
    _age(old, 30)
    assert sweep_staging(staging, older_than_hours=24) == ["run-old"]
    assert new.exists()


def _claim(staging: str, run_id: str, ready, stop) -> None:
    from catalogfs.features.staging_lock import claim_staging

    (claim_staging(Path(staging), run_id) / "frame_state").mkdir()
    ready.set()
    stop.wait(60)


def test_the_next_run_sweeps_what_a_killed_run_claimed_and_nothing_else(tmp_path):
    """What extract, embed and relabel do: claim their folder, and sweep dead runs' at the start."""
    from catalogfs.features.delta_writer import drop_staging
    from catalogfs.features.staging_lock import claim_staging, owner_state, sweep_dead_runs

    ctx = mp.get_context("fork")
    staging = tmp_path / "staging"
    procs = {}
    for run_id in ("killed", "running"):
        ready, stop = ctx.Event(), ctx.Event()
        procs[run_id] = (ctx.Process(target=_claim, args=(str(staging), run_id, ready, stop)), stop)
        procs[run_id][0].start()
        assert ready.wait(30)
    os.kill(procs["killed"][0].pid, signal.SIGKILL)
    procs["killed"][0].join(30)
    (staging / "older-version").mkdir()  # no lock file: left for maintain's age rule
    own = claim_staging(staging, "this-run")
    try:
        assert owner_state(staging / "killed") == "dead" and owner_state(staging / "running") == "alive"
        assert sweep_dead_runs(staging) == ["killed"]
        assert sorted(p.name for p in staging.iterdir()) == ["older-version", "running", "this-run"]
        assert owner_state(own) == "alive"
    finally:
        procs["running"][1].set()
        procs["running"][0].join(30)
    drop_staging(own)  # the run's end: folder gone, lock released
    assert not own.exists() and sweep_dead_runs(staging) == ["running"]
