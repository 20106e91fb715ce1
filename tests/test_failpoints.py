"""Failpoint logging when several processes reach a ``kill@`` point at once (no Spark).

Two Python workers of one job can reach ``kill@udf`` together; each kills the job. Whichever
process kills, the log must already say ``kill@udf`` exactly once: CI once saw a run killed before
the winner's line was written (the loser skipped logging and killed the group first).
"""

from __future__ import annotations

import multiprocessing as mp

from catalogfs import failpoints


def _reach(log: str, barrier, results) -> None:
    import os

    os.environ[failpoints.LOG_ENV] = log
    barrier.wait()
    failpoints._log_first_kill("udf", 4242)
    # this is where the process would kill the job: the line must be there already
    lines = open(log, encoding="utf-8").read().splitlines()
    results.put(sum(line.endswith(" kill@udf") for line in lines))


def test_a_kill_is_logged_once_before_any_racer_kills(tmp_path):
    ctx = mp.get_context("fork")
    log = str(tmp_path / "failpoints.log")
    racers = 6
    barrier, results = ctx.Barrier(racers), ctx.Queue()
    procs = [ctx.Process(target=_reach, args=(log, barrier, results)) for _ in range(racers)]
    for p in procs:
        p.start()
    seen = [results.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert seen == [1] * racers
    assert open(log, encoding="utf-8").read().count("kill@udf") == 1
