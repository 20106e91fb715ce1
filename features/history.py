"""The published history of ``video_embeddings``: every value a (video, space) ever had, with the
span of time it was visible (SCD2), kept in ``video_embeddings_history`` for point-in-time reads
(:mod:`features.training_set`).

A value is *valid from* the commit timestamp of the Delta commit that wrote it (``commit_version``)
*to* the commit timestamp of the change that replaced or deleted it (``ended_version``; both null
while it is current). The history is extended incrementally from the change data feed of
``video_embeddings`` (:mod:`features.change_feed`): each sync reads the versions after the one the
previous sync recorded in its own commit metadata (``history_synced_version``), so a sync and its
marker are one commit, and a sync with nothing new writes nothing.

Limitation: versions the change feed does not cover (it was turned on after them, or VACUUM
removed their change files) cannot be replayed. Then the current snapshot is recorded instead:
each row valid from the commit of the MERGE of its ``run_id`` (found in ``DESCRIBE HISTORY``; the
snapshot's own commit when that is gone), open rows whose key left the snapshot closed at the
snapshot's commit; values that came and went inside the uncovered versions are not recorded, and a
row edited by hand while the feed was off counts as written by its run. Such rows say
``recorded_from = 'snapshot'``. Sync after every publish and before VACUUM (both done by catalogfs)
and this never happens for a data root created with the feed on.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from catalogfs import failpoints
from catalogfs.config import StorageConfig
from catalogfs.errors import ChangeFeedError
from catalogfs.features import change_feed, delta_writer
from catalogfs.features.tables import VIDEO_EMBEDDINGS, VIDEO_EMBEDDINGS_HISTORY

log = logging.getLogger(__name__)

MARKER = "history_synced_version"
KEYS = ("video_id", "embedding_space")
VALUE_COLUMNS = ("embedding", "n_frames", "model_name", "model_version", "run_id", "computed_at")
OPENING = ("insert", "update_postimage")
# a re-sync of rows already there rewrites only rows whose span changed
_SPAN_CHANGED = "NOT (t.valid_to <=> s.valid_to) OR NOT (t.ended_version <=> s.ended_version)"


@dataclass(frozen=True)
class HistorySync:
    """What one :func:`sync_history` did: versions after ``since`` up to ``until`` of
    ``video_embeddings``, read from its change feed or (``recorded_from = 'snapshot'``) from its
    snapshot at ``until``; ``written``: whether a commit was made (False: nothing new)."""

    since: int
    until: int
    recorded_from: str
    written: bool


def synced_version(spark: SparkSession, storage: StorageConfig) -> int | None:
    """The newest version of ``video_embeddings`` the history holds (the marker of the newest
    sync commit), or None when nothing was ever synced."""
    row = (spark.sql(f"DESCRIBE HISTORY {storage.qualified(VIDEO_EMBEDDINGS_HISTORY.name)}")
           .select(F.max(F.get_json_object("userMetadata", f"$.{MARKER}").cast("long")).alias("v")).first())
    return None if row is None or row["v"] is None else int(row["v"])


def sync_history(spark: SparkSession, storage: StorageConfig) -> HistorySync | None:
    """Extend ``video_embeddings_history`` with the changes of ``video_embeddings`` since the last
    sync (see the module doc); idempotent: a second call with nothing new changes nothing. None
    when ``video_embeddings`` does not exist yet."""
    failpoints.phase("history.sync")
    source, started = storage.qualified(VIDEO_EMBEDDINGS.name), time.monotonic()
    if not spark.catalog.tableExists(source):
        return None
    history = storage.qualified(VIDEO_EMBEDDINGS_HISTORY.name)
    if not spark.catalog.tableExists(history):
        delta_writer.ensure_catalog(spark, storage, [VIDEO_EMBEDDINGS_HISTORY])
    since = synced_version(spark, storage)
    rng = change_feed.change_range(spark, storage, VIDEO_EMBEDDINGS.name, since=-1 if since is None else since)
    if rng.empty:
        return HistorySync(rng.since, rng.until, "change_feed", False)
    try:
        events, recorded_from = feed_events(spark, storage, rng), "change_feed"
    except ChangeFeedError as exc:
        log.warning("%s: recording the snapshot at version %d instead (%s)", history, rng.until, exc)
        events, recorded_from = snapshot_events(spark, storage, rng.until), "snapshot"
    rows = history_rows(events, spark.table(history), recorded_from=recorded_from).persist()  # read 3 times
    try:
        if rows.isEmpty():  # only commits that changed no row (properties, VACUUM): nothing to record
            return HistorySync(rng.since, rng.until, recorded_from, False)
        with delta_writer.commit_metadata(spark, {MARKER: str(rng.until), "history_of": VIDEO_EMBEDDINGS.name,
                                                  "recorded_from": recorded_from}):
            delta_writer.merge_rows(spark, storage, VIDEO_EMBEDDINGS_HISTORY, rows, update_condition=_SPAN_CHANGED)
    finally:
        rows.unpersist()
    log.info("%s: synced versions %d..%d of %s (%s) in %.1f s", history, rng.since + 1, rng.until, source,
             recorded_from, time.monotonic() - started)
    return HistorySync(rng.since, rng.until, recorded_from, True)


def feed_events(spark: SparkSession, storage: StorageConfig, rng: change_feed.ChangeRange) -> DataFrame:
    """The inserts, update post-images and deletes of ``rng`` (:class:`ChangeFeedError` when the
    feed does not cover it): ``KEYS``, ``VALUE_COLUMNS`` and the change columns."""
    changes = change_feed.read_changes(spark, storage, rng, columns=VALUE_COLUMNS)
    changes = change_feed.check_covered(spark, changes, rng, storage)
    return changes.where(F.col("_change_type").isin(*OPENING, "delete"))


def snapshot_events(spark: SparkSession, storage: StorageConfig, version: int) -> DataFrame:
    """``video_embeddings`` at ``version`` as if each row had been inserted by the MERGE of its
    run (``DESCRIBE HISTORY``; the snapshot's own commit for runs whose commit is no longer in
    the log), plus a delete at ``version`` for every open history row whose key is not there."""
    name = storage.qualified(VIDEO_EMBEDDINGS.name)
    commits = (spark.sql(f"DESCRIBE HISTORY {name}").where(F.col("version") <= version)
               .select("version", "timestamp", "operation",
                       F.get_json_object("userMetadata", "$.run_id").alias("run_id")))
    at = commits.where(F.col("version") == version).select("timestamp").first()["timestamp"]
    by_run = (commits.where((F.col("operation") == "MERGE") & F.col("run_id").isNotNull())
              .groupBy("run_id").agg(F.max(F.struct("version", "timestamp")).alias("c")))
    snapshot = spark.sql(f"SELECT * FROM {name} VERSION AS OF {int(version)}").select(*KEYS, *VALUE_COLUMNS)
    inserts = (snapshot.join(by_run, "run_id", "left")
               .select(*KEYS, *VALUE_COLUMNS, F.lit("insert").alias("_change_type"),
                       F.coalesce(F.col("c.version"), F.lit(version)).cast("long").alias("_commit_version"),
                       F.coalesce(F.col("c.timestamp"), F.lit(at)).alias("_commit_timestamp")))
    still_open = spark.table(storage.qualified(VIDEO_EMBEDDINGS_HISTORY.name)).where(F.col("ended_version").isNull())
    deletes = (still_open.join(snapshot.select(*KEYS), list(KEYS), "left_anti")
               .select(*KEYS, *VALUE_COLUMNS, F.lit("delete").alias("_change_type"),
                       F.lit(version).cast("long").alias("_commit_version"), F.lit(at).alias("_commit_timestamp")))
    return inserts.unionByName(deletes)


def history_rows(events: DataFrame, history: DataFrame, *, recorded_from: str) -> DataFrame:
    """The history rows that ``events`` (a key's inserts, update post-images and deletes, each at
    its commit) add or change: one row per value written, valid until the key's next event; and
    each key's open row from before, closed at the key's first event."""
    per_key = Window.partitionBy(*KEYS).orderBy(  # in one commit a delete before an insert
        "_commit_version", F.when(F.col("_change_type") == "delete", 0).otherwise(1))
    spans = (events.withColumn("valid_to", F.lead("_commit_timestamp").over(per_key))
             .withColumn("ended_version", F.lead("_commit_version").over(per_key)))
    opened = (spans.where(F.col("_change_type").isin(*OPENING))
              .select(*KEYS, F.col("_commit_version").alias("commit_version"), *VALUE_COLUMNS,
                      F.col("_commit_timestamp").alias("valid_from"), "valid_to", "ended_version",
                      F.lit(recorded_from).alias("recorded_from")))
    first = events.groupBy(*KEYS).agg(F.min(F.struct("_commit_version", "_commit_timestamp")).alias("first"))
    closed = (history.where(F.col("ended_version").isNull()).join(first, list(KEYS))
              .where(F.col("commit_version") < F.col("first._commit_version"))
              .withColumn("valid_to", F.col("first._commit_timestamp"))
              .withColumn("ended_version", F.col("first._commit_version")).drop("first"))
    columns = [f.name for f in VIDEO_EMBEDDINGS_HISTORY.schema.fields]
    return opened.select(*columns).unionByName(closed.select(*columns))


def history_behind(spark: SparkSession, storage: StorageConfig, version: int | None) -> bool:
    """Whether the history misses changes of ``video_embeddings`` up to ``version`` (its version
    a run read): a run killed after its MERGEs, before or during its sync, leaves it so."""
    if version is None or not spark.catalog.tableExists(storage.qualified(VIDEO_EMBEDDINGS_HISTORY.name)):
        return version is not None and version > 0
    synced = synced_version(spark, storage)
    return synced is None or synced < version


def sync_after_publish(spark: SparkSession, storage: StorageConfig) -> list[str]:
    """:func:`sync_history` after a publish, best effort: the publish stands whatever happens here,
    so a failure is returned as a warning (the next sync, or the next training set, catches up)."""
    try:
        sync_history(spark, storage)
        return []
    except Exception as exc:  # noqa: BLE001 - the publish already committed
        message = (f"{storage.qualified(VIDEO_EMBEDDINGS_HISTORY.name)} not synced after the publish "
                   f"({type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}); the next "
                   f"publish, `catalogfs maintain` or training set syncs it")
        log.warning(message)
        return [message]
