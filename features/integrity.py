"""Which commits of a published table are provably harmless: the one rule behind an embed run's
choice of an incremental plan (:func:`features.lineage.changed_outside_runs`) and ``catalogfs verify``
(:mod:`features.verification`).

A commit is harmless when it is

* a **MERGE of a recorded run**: its commit metadata names a run whose lineage row in
  ``feature_versions`` records exactly this version of this table (what publish proved from the
  history, or what a crash repair found: :func:`features.lineage.repair_lineage` runs first); or
* an operation that leaves every row as it was (:data:`METADATA_OPERATIONS`: what ``ensure_catalog``,
  a space's first publish and ``catalogfs maintain`` commit — properties, constraints, columns
  added with nulls, VACUUM — and OPTIMIZE).

Everything else counts as a change made outside a run: a commit without ``commitInfo`` (a file
written by hand into ``_delta_log``: ``DESCRIBE HISTORY`` shows its operation as null), an operation
not on the list (DELETE, UPDATE, RESTORE, an overwrite, REORG, anything a later Delta adds), a MERGE
that names no run, or one naming a run that no lineage row records at that version (forged
metadata, or a run that is not ours).

What this cannot see: a commit file that claims one of the allowed operations in a ``commitInfo``
of its own while its actions remove rows. The rule reads what each commit says about itself in
the history; a writer who can write the log can also lie there.
"""

from __future__ import annotations

import json
import logging
from typing import Iterable, Mapping

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from catalogfs.config import StorageConfig
from catalogfs.statuses import RunStatus
from catalogfs.features.tables import FEATURE_VERSIONS

log = logging.getLogger(__name__)

# Delta operations (DESCRIBE HISTORY's `operation`, Delta 4.4's DeltaOperations names) that leave
# every row of the table as it was.
METADATA_OPERATIONS = frozenset({
    "SET TBLPROPERTIES", "UNSET TBLPROPERTIES",  # ensure_catalog, register_space, maintain's retention
    "ADD CONSTRAINT", "DROP CONSTRAINT",  # ensure_catalog (checks); existing rows are not rewritten
    "ADD COLUMNS",  # ensure_catalog on a table from an older release: old rows read null
    "UPGRADE PROTOCOL",
    "OPTIMIZE",  # compaction: the same rows in fewer files (dataChange false)
    "VACUUM START", "VACUUM END",  # maintain: deletes unreferenced files only
})

# (run id, table, version): a commit a lineage row records as its run's own
RecordedCommit = tuple[str, str, int]


def commit_problem(table: str, commit: Mapping, recorded: set[RecordedCommit]) -> str | None:
    """Why ``commit`` (one of :func:`features.delta_writer.run_commits`) of ``table`` may have
    changed rows outside a catalogfs run, or None when it is provably harmless (see module doc)."""
    version, operation = commit["version"], commit.get("operation")
    where = f"{table} version {version}"
    if not operation:
        return (f"{where} has no operation (a commit without commitInfo, e.g. a file written by hand "
                f"into _delta_log) and was not made by a catalogfs run")
    if operation in METADATA_OPERATIONS:
        return None
    run_id = commit.get("run_id")
    if operation != "MERGE" or not isinstance(run_id, str) or not run_id:
        return f"{where} is a {operation} not made by a catalogfs run"
    if (run_id, table, version) not in recorded:
        return (f"{where} is a MERGE naming run {run_id}, which no lineage row records at that version "
                f"(not a catalogfs run)")
    return None


def commits_after(commits: Mapping[str, list[dict]], since: Mapping[str, int]) -> dict[str, list[dict]]:
    """Each table of ``since``: its commits (of ``commits``) newer than ``since[table]``."""
    return {table: [c for c in commits.get(table, []) if c["version"] > version]
            for table, version in sorted(since.items())}


def outside_commits(newer: Mapping[str, list[dict]], recorded: set[RecordedCommit]) -> list[str]:
    """What :func:`commit_problem` says of every commit of ``newer`` (table → commits), in order."""
    problems = (commit_problem(table, c, recorded) for table, commits in sorted(newer.items()) for c in commits)
    return [p for p in problems if p]


def merge_run_ids(newer: Mapping[str, list[dict]]) -> list[str]:
    """The run ids the MERGE commits of ``newer`` name (what :func:`recorded_commits` has to look up)."""
    return sorted({c["run_id"] for commits in newer.values() for c in commits
                   if c.get("operation") == "MERGE" and isinstance(c.get("run_id"), str) and c["run_id"]})


def recorded_commits(spark: SparkSession, storage: StorageConfig, run_ids: Iterable[str] | None = None
                     ) -> set[RecordedCommit]:
    """(run id, table, version) of each commit that a lineage row records as its run's own (rows
    of runs that committed: published, interrupted, skipped), for ``run_ids`` (None: every run).
    No query at all for an empty ``run_ids``."""
    wanted = None if run_ids is None else sorted(set(run_ids))
    if wanted is not None and not wanted:
        return set()
    committed = [RunStatus.PUBLISHED, RunStatus.INTERRUPTED, RunStatus.SKIPPED]
    rows = spark.table(storage.qualified(FEATURE_VERSIONS.name)).where(F.col("status").isin(committed))
    if wanted is not None:
        rows = rows.where(F.col("run_id").isin(wanted))
    return {(r["run_id"], table, version) for r in rows.select("run_id", "table_versions").collect()
            for table, version in parse_versions(r["table_versions"]).items()}


def parse_versions(text: str | None) -> dict[str, int]:
    """A lineage row's ``table_versions`` (JSON table → version); {} when absent or unreadable."""
    try:
        versions = json.loads(text) if text else {}
    except ValueError:
        return {}
    if not isinstance(versions, dict):
        return {}
    return {str(t): int(v) for t, v in versions.items() if isinstance(v, int) and not isinstance(v, bool)}
