"""``catalogfs verify``: every published table checked against the lineage table ``feature_versions``.

Five checks, each a line (ok, skip, or one MISMATCH per problem naming the table and version):

* **lineage** (per space): the table versions its newest published run recorded exist, and each
  one is that run's MERGE in the table's history (versions older than the kept log are taken as
  they are);
* **commits** (per table): every commit after the oldest version the spaces' newest published runs
  recorded was made by a recorded run or is metadata-only — the rule of the embed run's plan
  (:func:`features.integrity.commit_problem`), so what fails here sends the next run to a full plan;
* **keys** (per table): no key appears twice;
* **spaces**: every row of a published table names a space that has a lineage row of a run that
  committed;
* **coverage** (per space): every frame of ``frames`` at the version the space's last complete run
  planned on, and still in ``frames``, has a row in ``frame_embeddings`` in that space (frames added
  since wait for the next run; rows of frames removed since are deleted by it).

About eight Spark queries whatever the number of spaces: the lineage once, each table's history,
one union over the tables for keys, one for spaces, one union over the spaces for coverage.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F

from catalogfs.config import StorageConfig
from catalogfs.statuses import RunStatus
from catalogfs.features import delta_writer
from catalogfs.features.integrity import RecordedCommit, commits_after, outside_commits, parse_versions
from catalogfs.features.run_plan import FRAME_KEYS
from catalogfs.features.tables import FEATURE_VERSIONS, FRAME_EMBEDDINGS, FRAMES, PUBLISHED_TABLES, TableDef

log = logging.getLogger(__name__)

_COMMITTED = (RunStatus.PUBLISHED, RunStatus.INTERRUPTED, RunStatus.SKIPPED)


@dataclass(frozen=True)
class Check:
    """One check on one table or space: ``problems`` empty when it passed; ``skipped`` says why it
    could not run (not a mismatch)."""

    name: str
    subject: str
    detail: str = ""
    problems: tuple[str, ...] = ()
    skipped: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        """``ok       keys video_labels: …``, ``skip …`` or one ``MISMATCH …`` line per problem."""
        if self.problems:
            return [f"MISMATCH {self.name} {self.subject}: {p}" for p in self.problems]
        if self.skipped:
            return [f"skip     {self.name} {self.subject}: {self.skipped}"]
        return [f"ok       {self.name} {self.subject}: {self.detail}"]


@dataclass(frozen=True)
class Lineage:
    """What ``feature_versions`` says: each space's newest published run, each space's last
    complete run (with the ``frames`` version it planned on), the spaces of runs that committed,
    and every commit a run recorded as its own."""

    newest: dict[str, Row]
    checkpoints: dict[str, int]
    spaces: set[str]
    recorded: set[RecordedCommit]


def read_lineage(spark: SparkSession, storage: StorageConfig) -> Lineage:
    """:class:`Lineage` from one read of ``feature_versions`` (runs that committed only)."""
    rows = (spark.table(storage.qualified(FEATURE_VERSIONS.name)).where(F.col("status").isin(list(_COMMITTED)))
            .select("run_id", "embedding_space", "status", "table_versions", "frames_version", "finished_at")
            .collect())
    newest: dict[str, Row] = {}
    checkpoints: dict[str, int] = {}
    for r in sorted(rows, key=lambda r: r["finished_at"]):
        if r["status"] != RunStatus.PUBLISHED:
            continue
        newest[r["embedding_space"]] = r
        if r["frames_version"] is not None:
            checkpoints[r["embedding_space"]] = max(checkpoints.get(r["embedding_space"], -1), int(r["frames_version"]))
    recorded = {(r["run_id"], table, version)
                for r in rows for table, version in parse_versions(r["table_versions"]).items()}
    return Lineage(newest, checkpoints, {r["embedding_space"] for r in rows}, recorded)


def verify_catalogue(spark: SparkSession, storage: StorageConfig) -> list[Check]:
    """Every check of the module doc, in order: lineage, commits, keys, spaces, coverage."""
    tables = [t for t in PUBLISHED_TABLES if spark.catalog.tableExists(storage.qualified(t.name))]
    lineage = read_lineage(spark, storage)
    histories = {t.name: delta_writer.run_commits(spark, storage, t.name) for t in tables}
    return [*check_lineage_versions(lineage, histories), *check_commits(lineage, histories),
            *check_keys(spark, storage, tables, histories), check_spaces(spark, storage, tables, lineage, histories),
            *check_coverage(spark, storage, lineage)]


def check_lineage_versions(lineage: Lineage, histories: dict[str, list[dict]]) -> list[Check]:
    """Per space: each version its newest published run recorded exists and is that run's MERGE."""
    checks = []
    for space, run in sorted(lineage.newest.items()):
        versions = parse_versions(run["table_versions"])
        problems = []
        for table, version in sorted(versions.items()):
            history = histories.get(table)
            if history is None:
                problems.append(f"{table} version {version} (run {run['run_id']}): the table does not exist")
                continue
            current = history[-1]["version"] if history else -1
            commit = next((c for c in history if c["version"] == version), None)
            if version > current:
                problems.append(f"{table} version {version} recorded by run {run['run_id']} does not exist "
                                f"(the table is at version {current})")
            elif commit is not None and (commit.get("operation") != "MERGE" or commit.get("run_id") != run["run_id"]):
                problems.append(f"{table} version {version} recorded by run {run['run_id']} is a "
                                f"{commit.get('operation') or 'commit without operation'} of "
                                f"{commit.get('run_id') or 'no run'}, not that run's MERGE")
        detail = f"run {run['run_id']}: " + ", ".join(f"{t} v{v}" for t, v in sorted(versions.items()))
        checks.append(Check("lineage", space, detail, tuple(problems)))
    return checks


def check_commits(lineage: Lineage, histories: dict[str, list[dict]]) -> list[Check]:
    """Per table: every commit after the oldest version the spaces' newest runs recorded (after its
    creation when none did) is a recorded run's MERGE or metadata-only."""
    checks = []
    for table, history in sorted(histories.items()):
        recorded = [parse_versions(r["table_versions"]).get(table) for r in lineage.newest.values()]
        since = min((v for v in recorded if v is not None), default=0)
        newer = commits_after({table: history}, {table: since})
        problems = outside_commits(newer, lineage.recorded)
        detail = (f"{len(newer[table])} commits after version {since}, each a recorded run's MERGE or "
                  f"metadata-only")
        checks.append(Check("commits", table, detail, tuple(problems)))
    return checks


def check_keys(spark: SparkSession, storage: StorageConfig, tables: list[TableDef],
               histories: dict[str, list[dict]]) -> list[Check]:
    """Per table: no key twice (one Spark job over the key columns of every table)."""
    keyed = [spark.table(storage.qualified(t.name)).select(F.lit(t.name).alias("_table"),
                                                          F.to_json(F.struct(*t.keys)).alias("_key"))
             for t in tables]
    if not keyed:
        return []
    counts = _union(keyed).groupBy("_table", "_key").count()
    found = counts.where(F.col("count") > 1).groupBy("_table").agg(*_count_and_examples()).collect()
    duplicated = {r["_table"]: r for r in found}
    checks = []
    for t in tables:
        version = histories[t.name][-1]["version"] if histories.get(t.name) else -1
        problems = ()
        if t.name in duplicated:
            r = duplicated[t.name]
            problems = (f"{t.name} version {version}: {r['n']} keys ({', '.join(t.keys)}) appear more than "
                        f"once, e.g. {r['e']}",)
        checks.append(Check("keys", t.name, f"({', '.join(t.keys)}) unique at version {version}", problems))
    return checks


def check_spaces(spark: SparkSession, storage: StorageConfig, tables: list[TableDef], lineage: Lineage,
                 histories: dict[str, list[dict]]) -> Check:
    """Every row of the published tables names a space that has a lineage row (one Spark job)."""
    parts = [spark.table(storage.qualified(t.name)).select(F.lit(t.name).alias("_table"), "embedding_space").distinct()
             for t in tables]
    found = sorted((r["_table"], r["embedding_space"]) for r in _union(parts).collect()) if parts else []
    problems = tuple(f"{table} version {histories[table][-1]['version'] if histories.get(table) else -1} has "
                     f"rows of space {space}, which no lineage row of a run that committed records"
                     for table, space in found if space not in lineage.spaces)
    detail = f"{len({s for _, s in found})} spaces in the tables, each with a lineage row"
    return Check("spaces", ", ".join(t.name for t in tables), detail, problems)


def check_coverage(spark: SparkSession, storage: StorageConfig, lineage: Lineage) -> list[Check]:
    """Per space with a complete run: the frames it planned on (and still in ``frames``) each have a
    row in the space (one Spark job for every space)."""
    frames, rows = storage.qualified(FRAMES.name), storage.qualified(FRAME_EMBEDDINGS.name)
    now = spark.table(frames).select(*FRAME_KEYS)
    parts, skipped = [], {}
    for space, version in sorted(lineage.checkpoints.items()):
        try:  # analysed here: a version beyond the kept log fails now
            then = spark.sql(f"SELECT video_id, frame_ts_ms FROM {frames} VERSION AS OF {int(version)}")
        except Exception as exc:  # noqa: BLE001 - nothing to compare with
            skipped[space] = f"frames version {version} is no longer readable ({_first_line(exc)})"
            continue
        in_space = spark.table(rows).where(F.col("embedding_space") == space).select(*FRAME_KEYS)
        missing = then.join(now, FRAME_KEYS, "left_semi").join(in_space, FRAME_KEYS, "left_anti")
        parts.append(missing.select(F.lit(space).alias("_space"), F.to_json(F.struct(*FRAME_KEYS)).alias("_key")))
    found: dict[str, Row] = {}
    if parts:
        try:
            found = {r["_space"]: r for r in _union(parts).groupBy("_space").agg(*_count_and_examples()).collect()}
        except Exception as exc:  # noqa: BLE001 - files of an old frames version vacuumed
            skipped.update({space: f"frames at the planned versions could not be read ({_first_line(exc)})"
                            for space in lineage.checkpoints if space not in skipped})
    checks = []
    for space, version in sorted(lineage.checkpoints.items()):
        detail = f"every frame of frames version {version} still in frames has a row in the space"
        problems = ((f"{FRAME_EMBEDDINGS.name}: {found[space]['n']} frames of frames version {version} have "
                     f"no row in the space, e.g. {found[space]['e']}",) if space in found else ())
        checks.append(Check("coverage", space, detail, problems, skipped=skipped.get(space)))
    return checks


def _count_and_examples() -> list:
    """Aggregates: ``n`` rows and ``e``, the smallest ``_key`` (an example; nothing collected per row)."""
    return [F.count(F.lit(1)).alias("n"), F.min("_key").alias("e")]


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _union(frames: list[DataFrame]) -> DataFrame:
    out = frames[0]
    for df in frames[1:]:
        out = out.unionByName(df)
    return out
