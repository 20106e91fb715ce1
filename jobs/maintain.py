"""Job: table maintenance — bring ``video_embeddings_history`` up to date (features/history.py), then
VACUUM every table, keeping its newest versions readable, remove staging folders left by runs
that died (older than ``--staging-hours``, default 24) and old ANN index versions (all but the
current one and the newest ``index.keep_versions`` of each space and level).

    catalogfs maintain [--keep-versions N]        (default: retention.keep_versions)
    spark-submit jobs/maintain.py --conf conf/local.yaml

Run it on a schedule (e.g. daily after the embed job). Time travel (``VERSION AS OF`` /
``TIMESTAMP AS OF``) works for the kept versions, and for older ones while they are younger than
the table's ``delta.deletedFileRetentionDuration`` (raised here when the kept versions need it);
data files removed longer ago are deleted.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Sequence

from catalogfs import failpoints
from catalogfs.config import Config
from catalogfs.jobs.job_main import run_main
from catalogfs.features.ann import prune_versions
from catalogfs.features.history import sync_history
from catalogfs.features.maintenance import VacuumResult, apply_retention, sweep_staging


@dataclass(frozen=True)
class MaintainResult:
    tables: list[VacuumResult]
    staging_removed: list[str]  # run ids whose staging folders were removed
    index_versions_removed: list[str] = field(default_factory=list)  # <space>/<level>/<index id>


def run(spark, cfg: Config, *, keep_versions: int | None = None, staging_hours: float = 24.0) -> MaintainResult:
    failpoints.phase("maintain.history")
    sync_history(spark, cfg.storage)  # before VACUUM removes change data the history has not recorded
    failpoints.phase("maintain.vacuum")
    results = apply_retention(spark, cfg.storage, keep_versions or cfg.retention.keep_versions)
    failpoints.phase("maintain.sweep")
    swept = sweep_staging(cfg.storage.staging_dir, older_than_hours=staging_hours)
    failpoints.phase("maintain.prune")
    pruned = prune_versions(cfg.storage.indexes_dir, keep=cfg.index.keep_versions)
    return MaintainResult(results, swept, [str(p.relative_to(cfg.storage.indexes_dir)) for p in pruned])


def print_result(outcome: MaintainResult, cfg: Config) -> None:
    results = outcome.tables
    print(f"maintain: staging folders of dead runs removed: {len(outcome.staging_removed)}")
    print(f"maintain: old index versions removed: {len(outcome.index_versions_removed)} "
          f"(kept per space and level: the current one and the newest {cfg.index.keep_versions})")
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
