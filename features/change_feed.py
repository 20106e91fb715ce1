"""Change feeds of the catalogue's tables: what was inserted, updated or deleted per key since a
Delta version, so that a downstream index, cache or history syncs by change instead of diffing
whole tables.

Every catalogfs table has Delta's change data feed on (``delta.enableChangeDataFeed``, set by
:func:`features.delta_writer.ensure_catalog`). A change row carries the table's columns plus
``_change_type`` (``insert``, ``update_preimage``, ``update_postimage``, ``delete``),
``_commit_version`` and ``_commit_timestamp``. SQL consumers get the same rows from
``table_changes('<db>.<table>', <from>, <to>)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from catalogfs.config import StorageConfig
from catalogfs.errors import ChangeFeedError
from catalogfs.features import delta_writer
from catalogfs.features.tables import ALL_TABLES

CHANGE_TYPES = ("insert", "update_preimage", "update_postimage", "delete")
CHANGE_COLUMNS = ("_change_type", "_commit_version", "_commit_timestamp")
# what a consumer applies: the row as it is after the change (inserts and update post-images), or
# the key to drop (deletes); pre-images only say what an update replaced
APPLY_TYPES = ("insert", "update_postimage", "delete")


@dataclass(frozen=True)
class ChangeRange:
    """The versions a change read covers: after ``since`` up to and including ``until``."""

    table: str
    since: int
    until: int

    @property
    def empty(self) -> bool:
        return self.until <= self.since


def table_keys(table: str) -> tuple[str, ...]:
    """Key columns of one of the catalogue's tables (the contract in :mod:`features.tables`)."""
    for t in ALL_TABLES:
        if t.name == table:
            return t.keys
    raise ChangeFeedError(f"unknown table {table!r}; the catalogue's tables are "
                          f"{', '.join(t.name for t in ALL_TABLES)}")


def change_range(spark: SparkSession, storage: StorageConfig, table: str, *, since: int,
                 until: int | None = None) -> ChangeRange:
    """The range of a change read: versions after ``since`` up to ``until`` (default: the table's
    latest). ``since`` may be -1 (from the table's first version)."""
    table_keys(table)
    if since < -1:
        raise ChangeFeedError(f"--since must be a Delta version >= -1, got {since}")
    try:
        latest = delta_writer.table_version(spark, storage, table)
    except Exception as exc:  # noqa: BLE001 - no such table yet
        raise ChangeFeedError(f"table {storage.qualified(table)} cannot be read: "
                              f"{str(exc).splitlines()[0][:200]}") from exc
    end = latest if until is None else until
    if end > latest:
        raise ChangeFeedError(f"{storage.qualified(table)} is at version {latest}; --until {end} is in the future")
    if since > latest:
        raise ChangeFeedError(f"{storage.qualified(table)} is at version {latest}, older than --since {since}: the "
                              f"table was recreated or the version is wrong; resync from a full read")
    if end < since:
        raise ChangeFeedError(f"--until {end} is before --since {since}")
    return ChangeRange(table, since, end)


def read_changes(spark: SparkSession, storage: StorageConfig, rng: ChangeRange, *,
                 columns: tuple[str, ...] | None = None, net: bool = False) -> DataFrame:
    """The change rows of ``rng`` (empty when there is nothing after ``since``).

    ``columns``: the table's columns to keep (default all; the keys and change columns are always
    kept). ``net``: one row per key — its last change in the range, pre-images dropped — which is
    what a consumer applies to a copy that was in step at ``since``. Raises
    :class:`ChangeFeedError` when the feed does not cover the range (it was off for some of those
    versions, or they were vacuumed); sync from a full copy of the table then.
    """
    name = storage.qualified(rng.table)
    keys = table_keys(rng.table)
    if rng.empty:
        changes = spark.table(name).limit(0).select(
            "*", F.lit(None).cast("string").alias("_change_type"), F.lit(None).cast("long").alias("_commit_version"),
            F.lit(None).cast("timestamp").alias("_commit_timestamp"))
    else:
        changes = (spark.read.format("delta").option("readChangeFeed", "true")
                   .option("startingVersion", rng.since + 1).option("endingVersion", rng.until).table(name))
    if columns is not None:
        wanted = list(dict.fromkeys([*keys, *columns]))
        changes = changes.select(*wanted, *CHANGE_COLUMNS)
    if net:
        changes = net_changes(changes, keys)
    return changes


def net_changes(changes: DataFrame, keys: tuple[str, ...]) -> DataFrame:
    """One row per key: its newest insert, update post-image or delete (by commit version)."""
    from pyspark.sql import Window

    newest = Window.partitionBy(*keys).orderBy(F.col("_commit_version").desc(),
                                               # in one commit a delete + insert of a key is an update
                                               F.when(F.col("_change_type") == "delete", 1).otherwise(0))
    return (changes.where(F.col("_change_type").isin(*APPLY_TYPES))
            .withColumn("_newest", F.row_number().over(newest)).where("_newest = 1").drop("_newest"))


def check_covered(spark: SparkSession, changes: DataFrame, rng: ChangeRange, storage: StorageConfig) -> DataFrame:
    """``changes`` after forcing Delta to resolve the range, as a :class:`ChangeFeedError` when
    the change data feed does not cover it."""
    if rng.empty:
        return changes
    try:  # every change file of the range read (a limit would stop at the first partition)
        changes.select("_commit_version").agg(F.count(F.lit(1))).collect()
    except Exception as exc:  # noqa: BLE001 - Delta says which version lacks change data
        raise ChangeFeedError(
            f"the change data feed of {storage.qualified(rng.table)} does not cover versions "
            f"{rng.since + 1}..{rng.until} ({str(exc).splitlines()[0][:300]}); it is on for every catalogfs "
            f"table from the version that turned it on, and VACUUM removes old change files. Resync the "
            f"consumer from a full read of the table at version {rng.until}") from exc
    return changes
