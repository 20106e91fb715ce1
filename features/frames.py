"""The frames table: build frame rows from videos on the executors and publish them.

Re-extracting a video replaces its rows: changed frames are updated, new ones inserted, frames
that no longer exist (another sample rate, a shorter re-upload) deleted. An extraction that changes
nothing writes no commit.

A video id names one file: before publishing, :func:`source_conflicts` finds the input's ids that
the table already holds from another ``source_uri``; the job refuses those unless told to replace
them, and a replacement rewrites ``source_uri`` even when the frames themselves are unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterator, Sequence

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from catalogfs.config import StorageConfig
from catalogfs.spark import default_parallelism
from catalogfs.features import delta_writer
from catalogfs.features.tables import FRAMES
from catalogfs.features.video_frames import ExtractOptions, extract_video_frames
from catalogfs.statuses import Status

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FramesPublish:
    videos: int
    frames: int
    status_counts: dict[str, int]
    changed_rows: int
    table_version: int


def frames_dataframe(spark: SparkSession, videos: Sequence[tuple[str, str]], options: ExtractOptions) -> DataFrame:
    """A DataFrame with the ``frames`` schema, decoded on the executors (one task per few videos)."""
    columns = FRAMES.schema.fieldNames()
    now = datetime.now(timezone.utc)

    def extract(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            for video_id, uri in zip(pdf["video_id"], pdf["uri"]):
                rows = list(extract_video_frames(video_id, uri, options, now=now))
                yield pd.DataFrame(rows, columns=columns)

    parallelism = max(1, min(len(videos), default_parallelism(spark) * 2))
    source = spark.createDataFrame(list(videos), "video_id string, uri string").repartition(parallelism)
    return source.mapInPandas(extract, FRAMES.schema)


@dataclass(frozen=True)
class SourceConflict:
    """An input video id whose rows in ``frames`` come from another file."""

    video_id: str
    table_uri: str
    input_uri: str


def source_conflicts(spark: SparkSession, storage: StorageConfig,
                     videos: Sequence[tuple[str, str]]) -> list[SourceConflict]:
    """The ids of ``videos`` (video_id, uri) that ``frames`` holds with a different ``source_uri``.

    One small query: the table's distinct (video_id, source_uri) of the input's ids only, joined
    with the input; only conflicts reach the driver.
    """
    if not videos:
        return []
    inputs = spark.createDataFrame(list(videos), "video_id string, input_uri string")
    table = (spark.table(storage.qualified(FRAMES.name))
             .where(F.col("video_id").isin([v for v, _ in videos]))
             .select("video_id", F.col("source_uri").alias("table_uri")).distinct())
    rows = (table.join(inputs, "video_id").where(F.col("table_uri") != F.col("input_uri"))
            .orderBy("video_id", "table_uri").collect())
    return [SourceConflict(r["video_id"], r["table_uri"], r["input_uri"]) for r in rows]


def _compare(staged: DataFrame, current: DataFrame) -> tuple[dict[str, int], int]:
    """(staged rows by status, frame keys whose row is new, gone or different), in one Spark job.

    A row whose ``source_uri`` changed (a file replaced by a copy elsewhere) is different too.
    """
    keys = ["video_id", "frame_ts_ms"]
    s = staged.select(*keys, F.col("content_sha256").alias("s_sha"), F.col("status").alias("s_status"),
                      F.col("source_uri").alias("s_uri"), F.lit(True).alias("in_s"))
    c = current.select(*keys, F.col("content_sha256").alias("c_sha"), F.col("status").alias("c_status"),
                       F.col("source_uri").alias("c_uri"), F.lit(True).alias("in_c"))
    differs = (F.col("in_s").isNull() | F.col("in_c").isNull() | ~F.col("s_sha").eqNullSafe(F.col("c_sha"))
               | ~F.col("s_status").eqNullSafe(F.col("c_status")) | ~F.col("s_uri").eqNullSafe(F.col("c_uri")))
    rows = (s.join(c, keys, "full_outer")
            .groupBy(F.col("s_status").alias("status"))
            .agg(F.count("in_s").alias("staged"), F.count(F.when(differs, 1)).alias("changed"))
            .collect())
    return ({r["status"]: int(r["staged"]) for r in rows if r["status"] is not None and r["staged"]},
            sum(int(r["changed"]) for r in rows))


def publish_frames(spark: SparkSession, storage: StorageConfig, staged: DataFrame,
                   video_ids: Sequence[str], *, run_id: str) -> FramesPublish:
    """Make the ``frames`` rows of ``video_ids`` equal to ``staged`` (one MERGE, or none if equal)."""
    current = spark.table(storage.qualified(FRAMES.name)).where(F.col("video_id").isin(list(video_ids)))
    counts, changed = _compare(staged, current)
    if changed:
        with delta_writer.commit_metadata(spark, {"run_id": run_id, "job": "extract_frames"}):
            delta_writer.merge_rows(
                spark, storage, FRAMES, staged,
                update_condition=("NOT (t.content_sha256 <=> s.content_sha256) OR t.status <> s.status"
                                  " OR t.source_uri <> s.source_uri"),
                delete_scope=delta_writer.scope_condition("video_id", list(video_ids)),
            )
    return FramesPublish(
        videos=len(video_ids), frames=counts.get(Status.OK, 0), status_counts=counts, changed_rows=changed,
        table_version=delta_writer.table_version(spark, storage, FRAMES.name),
    )
