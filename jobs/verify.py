"""Job: check every published table against the lineage table ``feature_versions``.

    catalogfs verify
    spark-submit jobs/verify.py --conf conf/local.yaml

Each space's newest published run: the table versions it recorded exist and are its MERGEs; every
commit after them in each published table was made by a recorded run or is metadata-only (the
rule that sends an embed run to a full plan); keys are unique; every row names a space with a
lineage row; every frame the space's last complete run planned on has a row in the space.
One line per check (``ok`` / ``skip`` / ``MISMATCH`` with the table, version and what is wrong);
exit 0 when every check passed, 8 on any mismatch (see :mod:`features.verification`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Sequence

from catalogfs.config import Config
from catalogfs.errors import InputError, IntegrityMismatch
from catalogfs.features.tables import FEATURE_VERSIONS
from catalogfs.features.verification import Check, verify_catalogue
from catalogfs.jobs.job_main import run_main


@dataclass(frozen=True)
class VerifyResult:
    checks: list[Check]

    @property
    def mismatches(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]


def run(spark, cfg: Config) -> VerifyResult:
    """Every check of :func:`features.verification.verify_catalogue` (nothing is written)."""
    if not spark.catalog.tableExists(cfg.storage.qualified(FEATURE_VERSIONS.name)):
        raise InputError(f"table {cfg.storage.qualified(FEATURE_VERSIONS.name)} does not exist: nothing was "
                         f"published yet (run `catalogfs embed` first)")
    return VerifyResult(verify_catalogue(spark, cfg.storage))


def print_result(result: VerifyResult, cfg: Config) -> None:
    """One line per check; raises :class:`IntegrityMismatch` (exit 8) after them on any mismatch."""
    for check in result.checks:
        for line in check.lines():
            print(f"verify: {line}")
    bad = result.mismatches
    if bad:
        raise IntegrityMismatch(f"{len(bad)} of {len(result.checks)} checks found a mismatch in "
                                f"{cfg.storage.schema_name}: " + "; ".join(f"{c.name} {c.subject}" for c in bad))
    print(f"verify: all {len(result.checks)} checks passed ({cfg.storage.schema_name})")


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, argv, prog="verify", description=__doc__, report=print_result)


if __name__ == "__main__":
    sys.exit(main())
