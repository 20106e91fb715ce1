"""Job: table maintenance — bring ``video_embeddings_history`` up to date (features/history.py), then
VACUUM every table, keeping its newest versions readable, and remove
staging folders left by runs that died (older than ``--staging-hours``, default 24).

    catalogfs maintain [--keep-versions N]        (default: retention.keep_versions)
    spark-submit jobs/maintain.py --conf conf/local.yaml

Run it on a schedule (e.g. daily after the embed job). Time travel (``VERSION AS OF`` /
``TIMESTAMP AS OF``) works for the kept versions, and for older ones while they are younger than
the table's ``delta.deletedFileRetentionDuration`` (raised here when the kept versions need it);
data files removed longer ago are deleted.
"""

from __future__ import annotations

import sys
from typing import Sequence

from catalogfs.config import Config
from jobs.job_main import run_main
from features.history import sync_history
from features.maintenance import VacuumResult, apply_retention, sweep_staging


def run(spark, cfg: Config, *, keep_versions: int | None = None,
        staging_hours: float = 24.0) -> tuple[list[VacuumResult], list[str]]:
    sync_history(spark, cfg.storage)  # before VACUUM removes change data the history has not recorded
    results = apply_retention(spark, cfg.storage, keep_versions or cfg.retention.keep_versions)
    return results, sweep_staging(cfg.storage.staging_dir, older_than_hours=staging_hours)


def print_result(outcome: tuple[list[VacuumResult], list[str]], cfg: Config) -> None:
    results, swept = outcome
    print(f"maintain: staging folders of dead runs removed: {len(swept)}")
    for r in results:
        print(f"maintain: {r.table}: {r.versions} versions, readable from version "
              f"{r.oldest_readable_version} ({describe(r)})")


def describe(result: VacuumResult) -> str:
    """What VACUUM did to one table, in words."""
    if result.skipped:
        done = f"VACUUM skipped: {result.skipped}"
    elif result.retain_hours is None:
        done = "nothing to vacuum"
    else:
        done = f"files removed in the last {result.retain_hours} h kept"
    if result.raised_from_hours is not None:
        done += f"; delta.deletedFileRetentionDuration raised from {result.raised_from_hours:.0f} h"
    return done


def _arguments(parser) -> None:
    parser.add_argument("--keep-versions", type=int, default=None, help="versions kept readable per table")
    parser.add_argument("--staging-hours", type=float, default=24.0,
                        help="remove staging folders of runs untouched for this long (default 24)")


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, argv, prog="maintain", description=__doc__, report=print_result,
                    configure=_arguments)


if __name__ == "__main__":
    sys.exit(main())
