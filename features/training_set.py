"""Point-in-time training sets: each event joined to the video embedding that was published at the
event's time — never a later one.

Values come from ``video_embeddings_history`` (:mod:`features.history`): a value matches an event
when ``valid_from <= event time < coalesce(valid_to, +inf)``, so a value published (or replaced)
after the event is never used. The space is the one asked for, or — ``space=None`` — the space that
was *current* at the event's time: the newest ``promoted`` row of ``feature_versions`` whose
``finished_at`` is at or before it (a space published in shadow is not used before its promotion;
a rollback counts as a promotion of the older space).

Every event row is kept, once, with its own columns unchanged, plus :data:`FEATURE_COLUMNS`;
``feature_status`` says ``ok`` or why there is no value (:data:`STATUSES`).
"""

from __future__ import annotations

from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import DateType, StringType, TimestampNTZType, TimestampType

from catalogfs.config import StorageConfig
from catalogfs.errors import TrainingSetArgumentError, TrainingSetError
from catalogfs.statuses import RunStatus
from catalogfs.features.history import sync_history
from catalogfs.features.tables import FEATURE_VERSIONS, VIDEO_EMBEDDINGS_HISTORY

FEATURE_COLUMNS = ("embedding_space", "embedding", "model_version", "run_id", "valid_from", "feature_status")
OK = "ok"
STATUSES = {
    OK: "the value that was current in the space at the event's time",
    "no_value_at_event_time": "the video has values in the space, but none at that time (before its first "
                              "publish, or after it was removed)",
    "unknown_key": "the video never had a value in the space",
    "no_current_space": "no space was current yet at the event's time (space=None only)",
    "null_key": "the event's key is null",
    "null_event_time": "the event's time is null",
    "unreadable_event_time": "the event's time is not a timestamp (e.g. a malformed string)",
}
READERS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json",
           ".ndjson": "json"}
_P = "__catalogfs_ts_"  # prefix of the columns used while joining (dropped)


def read_events(spark: SparkSession, path: str | Path) -> DataFrame:
    """Events from a Parquet, CSV (with a header) or JSON-lines file or folder, by its extension."""
    path = Path(path)
    fmt = READERS.get(path.suffix.lower())
    if fmt is None:
        raise TrainingSetArgumentError(f"--events {path}: unsupported extension {path.suffix or '(none)'!r}; "
                                       f"expected one of {', '.join(sorted(READERS))}")
    if not path.exists():
        raise TrainingSetError(f"--events {path}: no such file or folder")
    reader = spark.read.option("header", "true") if fmt == "csv" else spark.read
    return reader.format(fmt).load(str(path))


def check_events(events: DataFrame, *, key: str, ts: str) -> None:
    """Refuse events without the key or time column, with a time column that cannot be a
    timestamp, or with columns of the result's names."""
    if key == ts:
        raise TrainingSetArgumentError(f"the key and the time must be different columns, both are {key!r}")
    fields = {f.name: f.dataType for f in events.schema.fields}
    missing = [c for c in (key, ts) if c not in fields]
    if missing:
        raise TrainingSetError(f"events have no column {' or '.join(map(repr, missing))} (--key {key} --ts {ts}); "
                               f"their columns: {', '.join(fields) or 'none'}")
    if not isinstance(fields[ts], (TimestampType, TimestampNTZType, DateType, StringType)):
        raise TrainingSetError(f"event time column {ts!r} is {fields[ts].simpleString()}; expected a timestamp, "
                               f"a date or a string such as '2026-11-29 14:03:00'")
    taken = [c for c in fields if c.lower() in FEATURE_COLUMNS or c.startswith(_P)]
    if taken:
        raise TrainingSetError(f"events already have columns {taken}, which the training set adds; rename them")


def training_set(spark: SparkSession, storage: StorageConfig, events: DataFrame, *, key: str = "video_id",
                 ts: str = "event_ts", space: str | None = None, sync: bool = True) -> DataFrame:
    """``events`` with the video embedding of the event's key at the event's time (module doc).

    ``space``: the embedding space to read (default: the space current at each event's time).
    ``sync``: first bring the history up to date with ``video_embeddings`` (:func:`sync_history`;
    a no-op when nothing changed). Raises :class:`TrainingSetError` (exit 4) for missing columns or
    an unknown space, :class:`TrainingSetArgumentError` (exit 2) for bad arguments.
    """
    check_events(events, key=key, ts=ts)
    if sync:
        sync_history(spark, storage)
    history_name = storage.qualified(VIDEO_EMBEDDINGS_HISTORY.name)
    if not spark.catalog.tableExists(history_name):
        raise TrainingSetError(f"{history_name} does not exist: nothing was published in {storage.schema_name}")
    history = spark.table(history_name)
    if space is not None:
        require_space(history, space, history_name)
    prepared = events.select("*", F.monotonically_increasing_id().alias(f"{_P}row"),
                             F.col(f"`{key}`").cast("string").alias(f"{_P}key"),
                             F.col(f"`{ts}`").try_cast("timestamp").alias(f"{_P}time"))
    spaced = prepared.withColumn(f"{_P}space", F.lit(space) if space is not None
                                 else space_at(spark, storage, F.col(f"{_P}time")))
    return _finish(_join_values(spaced, history), events.columns, ts)


def require_space(history: DataFrame, space: str, history_name: str) -> None:
    """:class:`TrainingSetError` naming the spaces the history has, unless it has ``space``."""
    spaces = sorted(r[0] for r in history.select("embedding_space").distinct().collect())
    if space not in spaces:
        raise TrainingSetError(f"space {space!r} has no history in {history_name}; spaces with history: "
                               f"{', '.join(spaces) or 'none'}")


def space_at(spark: SparkSession, storage: StorageConfig, time: Column) -> Column:
    """The space current at ``time``: the newest promotion at or before it (null before the first)."""
    promotions = (spark.table(storage.qualified(FEATURE_VERSIONS.name))
                  .where(F.col("status") == RunStatus.PROMOTED)
                  .orderBy(F.desc("finished_at")).select("embedding_space", "finished_at").collect())
    chosen = F.lit(None).cast("string")
    for row in reversed(promotions):  # oldest first, so the newest promotion is the outermost test
        chosen = F.when(time >= F.lit(row["finished_at"]), F.lit(row["embedding_space"])).otherwise(chosen)
    return chosen


def _join_values(events: DataFrame, history: DataFrame) -> DataFrame:
    """``events`` left-joined to the value valid at each event's time (at most one per event), and
    ``__known``: whether the key has any value in the space."""
    values = history.select(*[F.col(c).alias(f"{_P}h_{c}") for c in
                              ("video_id", "embedding_space", "embedding", "model_version", "run_id",
                               "valid_from", "valid_to")])
    time = F.col(f"{_P}time")
    on = ((F.col(f"{_P}key") == F.col(f"{_P}h_video_id")) & (F.col(f"{_P}space") == F.col(f"{_P}h_embedding_space"))
          & (F.col(f"{_P}h_valid_from") <= time)
          & (F.col(f"{_P}h_valid_to").isNull() | (time < F.col(f"{_P}h_valid_to"))))
    joined = events.join(values, on, "left")
    # spans of one key never overlap; this keeps an event to one row even if they did
    newest = Window.partitionBy(f"{_P}row").orderBy(F.col(f"{_P}h_valid_from").desc_nulls_last())
    joined = joined.withColumn(f"{_P}n", F.row_number().over(newest)).where(F.col(f"{_P}n") == 1)
    known = (history.select(F.col("video_id").alias(f"{_P}k_key"), F.col("embedding_space").alias(f"{_P}k_space"))
             .distinct().withColumn(f"{_P}known", F.lit(True)))
    return joined.join(known, (F.col(f"{_P}key") == F.col(f"{_P}k_key"))
                       & (F.col(f"{_P}space") == F.col(f"{_P}k_space")), "left")


def _finish(joined: DataFrame, event_columns: list[str], ts: str) -> DataFrame:
    """The events' own columns, then :data:`FEATURE_COLUMNS`."""
    p = _P
    status = (F.when(F.col(f"{p}key").isNull(), "null_key")
              .when(F.col(f"`{ts}`").isNull(), "null_event_time")
              .when(F.col(f"{p}time").isNull(), "unreadable_event_time")
              .when(F.col(f"{p}space").isNull(), "no_current_space")
              .when(F.col(f"{p}h_valid_from").isNotNull(), OK)
              .when(F.col(f"{p}known"), "no_value_at_event_time")
              .otherwise("unknown_key"))
    return joined.select(*[F.col(f"`{c}`") for c in event_columns],
                         F.col(f"{p}space").alias("embedding_space"), F.col(f"{p}h_embedding").alias("embedding"),
                         F.col(f"{p}h_model_version").alias("model_version"), F.col(f"{p}h_run_id").alias("run_id"),
                         F.col(f"{p}h_valid_from").alias("valid_from"), status.alias("feature_status"))
