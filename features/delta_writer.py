"""The one module that writes Delta: tables, staging, merges and commit metadata.

Published tables live in the catalog database at ``<warehouse>/<database>.db/<table>``. Staging
tables are path-based, per run, under ``<data_root>/staging/<run_id>/``; they are what validation
reads and what publish copies from, so the expensive computation runs once.
"""

from __future__ import annotations

import json
import logging
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from catalogfs.config import StorageConfig
from features.tables import ALL_TABLES, TableDef

log = logging.getLogger(__name__)

_USER_METADATA = "spark.databricks.delta.commitInfo.userMetadata"
_TXN_APP_ID = "spark.databricks.delta.write.txnAppId"
_TXN_VERSION = "spark.databricks.delta.write.txnVersion"


def ensure_catalog(spark: SparkSession, storage: StorageConfig,
                   tables: Sequence[TableDef] = ALL_TABLES, *, log_retention_days: int = 30) -> None:
    """Create the database and the tables (empty, with their schemas) when missing."""
    if not spark.catalog.databaseExists(storage.schema_name):
        spark.sql(f"CREATE SCHEMA IF NOT EXISTS {storage.schema_name} COMMENT 'catalogfs feature store'")
    for table in tables:
        name = storage.qualified(table.name)
        if spark.catalog.tableExists(name):
            continue
        columns = ", ".join(
            f"`{f.name}` {f.dataType.simpleString()}{'' if f.nullable else ' NOT NULL'}"
            + (f" COMMENT {sql_literal(f.metadata['comment'])}" if f.metadata.get("comment") else "")
            for f in table.schema.fields)
        properties = {"catalogfs.keys": ",".join(table.keys),
                      "delta.logRetentionDuration": f"interval {log_retention_days} days"}
        props = ", ".join(f"{sql_literal(k)} = {sql_literal(v)}" for k, v in properties.items())
        spark.sql(f"CREATE TABLE IF NOT EXISTS {name} ({columns}) USING DELTA "
                  f"COMMENT {sql_literal(table.comment)} TBLPROPERTIES ({props})")


def table_version(spark: SparkSession, storage: StorageConfig, table: str) -> int:
    """Latest Delta version of a published table."""
    row = DeltaTable.forName(spark, storage.qualified(table)).history(1).select("version").first()
    return int(row["version"]) if row else -1


@contextmanager
def commit_metadata(spark: SparkSession, metadata: Mapping[str, str]) -> Iterator[None]:
    """Attach ``metadata`` (JSON) as Delta commit userMetadata to the commits made inside."""
    spark.conf.set(_USER_METADATA, json.dumps(dict(metadata), sort_keys=True))
    try:
        yield
    finally:
        spark.conf.unset(_USER_METADATA)


@contextmanager
def idempotent(spark: SparkSession, app_id: str, version: int) -> Iterator[None]:
    """Delta idempotent writes: a commit made inside is skipped if ``app_id`` already committed
    ``version`` (or a later one) to the table."""
    spark.conf.set(_TXN_APP_ID, app_id)
    spark.conf.set(_TXN_VERSION, str(version))
    try:
        yield
    finally:
        spark.conf.unset(_TXN_APP_ID)
        spark.conf.unset(_TXN_VERSION)


SPACES_PROPERTY = "catalogfs.embedding_spaces"


def register_space(spark: SparkSession, storage: StorageConfig, tables: Sequence[str], space_id: str) -> None:
    """Record ``space_id`` in each table's ``catalogfs.embedding_spaces`` property (once per space)."""
    for table in tables:
        name = storage.qualified(table)
        props = DeltaTable.forName(spark, name).detail().select("properties").first()["properties"] or {}
        spaces = [s for s in props.get(SPACES_PROPERTY, "").split(",") if s]
        if space_id not in spaces:
            value = ",".join(spaces + [space_id])
            spark.sql(f"ALTER TABLE {name} SET TBLPROPERTIES ('{SPACES_PROPERTY}' = {sql_literal(value)})")


def write_staging(df: DataFrame, path: Path) -> DataFrame:
    """Materialise ``df`` as a Delta table at ``path`` (overwrite) and return it read back."""
    df.write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(str(path))
    return df.sparkSession.read.format("delta").load(str(path))


def drop_staging(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def sql_literal(value: str) -> str:
    """``value`` as a quoted SQL string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def scope_condition(column: str, values: Sequence[str], *, alias: str = "t") -> str:
    """``t.column IN ('a', 'b')`` with each value quoted as a SQL string literal."""
    if not values:
        return "false"
    return f"{alias}.`{column}` IN ({', '.join(sql_literal(v) for v in values)})"


def merge_rows(spark: SparkSession, storage: StorageConfig, table: TableDef, source: DataFrame, *,
               update_condition: str | None = None, delete_scope: str | None = None) -> None:
    """MERGE ``source`` into a published table on its keys.

    Matched rows are updated (only where ``update_condition`` holds, if given), new rows inserted;
    with ``delete_scope``, target rows inside that scope that the source lacks are deleted, so the
    scope ends up holding exactly the source's rows. One Delta commit.
    """
    on = " AND ".join(f"t.`{k}` = s.`{k}`" for k in table.keys)
    columns = [f.name for f in table.schema.fields]
    assignments = {f"`{c}`": F.col(f"s.`{c}`") for c in columns}
    merge = (DeltaTable.forName(spark, storage.qualified(table.name)).alias("t")
             .merge(source.select(*columns).alias("s"), on)
             .whenMatchedUpdate(condition=update_condition, set=assignments)
             .whenNotMatchedInsert(values=assignments))
    if delete_scope:
        merge = merge.whenNotMatchedBySourceDelete(condition=delete_scope)
    merge.execute()


def append_rows(spark: SparkSession, storage: StorageConfig, table: TableDef, rows: DataFrame) -> None:
    """Append to a published table (used for the lineage table)."""
    columns = [f.name for f in table.schema.fields]
    rows.select(*columns).write.format("delta").mode("append").saveAsTable(storage.qualified(table.name))
