"""Job: table maintenance — VACUUM every table, keeping its newest versions readable.

    catalogfs maintain [--keep-versions N]        (default: retention.keep_versions)
    spark-submit jobs/maintain.py --conf conf/local.yaml

Run it on a schedule (e.g. daily after the embed job). Time travel (``VERSION AS OF`` /
``TIMESTAMP AS OF``) works for the kept versions; older versions' data files are deleted.
"""

from __future__ import annotations

import sys
from typing import Sequence

from catalogfs.config import Config
from catalogfs.job_main import run_main
from features.maintenance import VacuumResult, apply_retention


def run(spark, cfg: Config, *, keep_versions: int | None = None) -> list[VacuumResult]:
    return apply_retention(spark, cfg.storage, keep_versions or cfg.retention.keep_versions)


def print_result(results: list[VacuumResult], cfg: Config) -> None:
    for r in results:
        done = "nothing to vacuum" if r.retain_hours is None else f"files needed in the last {r.retain_hours} h kept"
        print(f"maintain: {r.table}: {r.versions} versions, readable from version "
              f"{r.oldest_readable_version} ({done})")


def _arguments(parser) -> None:
    parser.add_argument("--keep-versions", type=int, default=None, help="versions kept readable per table")


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, argv, prog="maintain", description=__doc__, report=print_result,
                    configure=_arguments)


if __name__ == "__main__":
    sys.exit(main())
