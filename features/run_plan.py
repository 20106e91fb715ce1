"""Plan: what a run of one embedding space has to do, found in one Spark job before any model runs.

The plan is the whole cost of an unchanged rerun: frames that have no row in the space (or only
a row with a transient status, retried), videos whose frame rows lost their frame (the removal
policy deletes them) and videos whose video-level rows are missing or older than their frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from catalogfs.config import StorageConfig
from catalogfs.statuses import INPUT_STATUSES, TRANSIENT_STATUSES, Status
from features import delta_writer
from features.spaces import EmbeddingSpace
from features.tables import FRAME_EMBEDDINGS, FRAMES, VIDEO_EMBEDDINGS, VIDEO_FLAGS, VIDEO_LABELS

FRAME_KEYS = ["video_id", "frame_ts_ms"]


@dataclass(frozen=True)
class SpaceTables:
    """The tables a run of one space reads: ``frames`` and the space's published rows."""

    frames: DataFrame
    frame_embeddings: DataFrame
    video_embeddings: DataFrame
    video_labels: DataFrame
    video_flags: DataFrame | None  # None: the model has no flags

    @classmethod
    def read(cls, spark: SparkSession, storage: StorageConfig, space: EmbeddingSpace, *,
             with_flags: bool) -> "SpaceTables":
        """The tables, each pinned to the Delta version it has now (time travel), so that every
        later action of the run (plan, embed, stage, publish scopes) reads the same snapshot
        whatever other jobs commit meanwhile. A DataFrame read by name re-reads the newest version
        at each action (over Spark Connect it is analysed again each time): a run planned 4 frames,
        an extract committed 2 more, and the embed stage then computed 6."""
        def pinned(table: str) -> DataFrame:
            version = delta_writer.table_version(spark, storage, table)
            return spark.sql(f"SELECT * FROM {storage.qualified(table)} VERSION AS OF {version}")

        def in_space(table: str) -> DataFrame:
            return pinned(table).where(F.col("embedding_space") == space.id)

        return cls(pinned(FRAMES.name), in_space(FRAME_EMBEDDINGS.name),
                   in_space(VIDEO_EMBEDDINGS.name), in_space(VIDEO_LABELS.name),
                   in_space(VIDEO_FLAGS.name) if with_flags else None)


@dataclass(frozen=True)
class RunPlan:
    """What a run has to do, found by one Spark job (see :func:`plan_run`)."""

    frames_to_embed: int
    orphan_videos: list[str]
    stale_videos: list[str]
    published_frames: int = 0  # rows the space already has (0: its first publish)
    # video → (frame rows, bad-input frame rows) published in the space, for the videos that have rows
    per_video: dict[str, tuple[int, int]] = field(default_factory=dict)
    todo: DataFrame | None = field(default=None, compare=False, repr=False)  # the frames to embed

    @property
    def published_bad_input(self) -> int:
        """Frame rows of the space with a bad-input status (a status of the upload's own)."""
        return sum(bad for _, bad in self.per_video.values())

    @property
    def nothing_to_do(self) -> bool:
        return self.frames_to_embed == 0 and not self.orphan_videos and not self.stale_videos


def frames_to_embed(frames: DataFrame, published: DataFrame) -> DataFrame:
    """Frames whose (video_id, frame_ts_ms, content_sha256) has no row in ``published`` (one space),
    or only a row with a transient status (an inference error on the device): those are retried."""
    done = (published.where(~F.col("status").isin(sorted(TRANSIENT_STATUSES)))
            .select(*FRAME_KEYS, F.col("content_sha256").alias("_done_sha")))
    cond = [frames[k] == done[k] for k in FRAME_KEYS] + [frames["content_sha256"].eqNullSafe(done["_done_sha"])]
    return frames.join(done, cond, "left_anti")


def plan_run(tables: SpaceTables) -> RunPlan:
    """How many frames need embedding (:func:`frames_to_embed`) and which videos need their rows
    refreshed (:func:`videos_needing_refresh`), collected together in one Spark job — the whole
    cost of an unchanged rerun."""
    todo = frames_to_embed(tables.frames, tables.frame_embeddings)
    count = (todo.groupBy().count()
             .select(F.lit(None).cast("string").alias("video_id"), F.col("count").alias("todo"),
                     F.lit(0).cast("long").alias("orphans"), F.lit(0).cast("long").alias("published"),
                     F.lit(0).cast("long").alias("bad_input"), F.lit(False).alias("stale")))
    found = count.unionByName(videos_needing_refresh(tables).withColumn("todo", F.lit(0).cast("long"))).collect()
    videos = [r for r in found if r["video_id"] is not None]
    return RunPlan(frames_to_embed=sum(int(r["todo"]) for r in found),
                   orphan_videos=sorted(r["video_id"] for r in videos if r["orphans"]),
                   stale_videos=sorted(r["video_id"] for r in videos if r["stale"]),
                   published_frames=sum(int(r["published"]) for r in videos),
                   per_video={r["video_id"]: (int(r["published"]), int(r["bad_input"]))
                              for r in videos if r["published"]},
                   todo=todo)


def videos_needing_refresh(tables: SpaceTables) -> DataFrame:
    """Per video with rows in one space: ``orphans`` (its frame rows whose frame is gone from
    ``frames`` — the removal policy deletes them), ``published`` (its frame rows), ``bad_input``
    (of which bad-input statuses) and ``stale``: its video-level rows are missing or older than its
    newest ok frame row (e.g. after a publish that stopped between tables), or it has video-level
    rows but no frame rows left (a removal whose publish stopped after the frame table).

    With ``video_flags`` (models with flags), flag rows count too: a video may rightly have none,
    so they are missing only where an ok frame carries a flag, and stale wherever they are older
    than the video's newest frame row. One pass over the frame rows (a join of frame and published
    keys, then per-video aggregates), so the plan of a run stays a few Spark stages.
    """
    flags = tables.video_flags
    per_video = _frame_rows_per_video(tables.frames, tables.frame_embeddings, with_flags=flags is not None)
    newest = {"emb_at": tables.video_embeddings, "lab_at": tables.video_labels}
    if flags is not None:
        newest["flags_at"] = flags
    for name, table in newest.items():  # full: video rows whose frame rows are all gone count too
        per_video = per_video.join(table.groupBy("video_id").agg(F.max("computed_at").alias(name)), "video_id", "full")
    frame_at = F.col("frame_at")

    def behind(at: str, newest_frame) -> "F.Column":
        return newest_frame.isNotNull() & (F.col(at).isNull() | (F.col(at) < newest_frame))

    no_frame_rows = F.coalesce(F.col("published"), F.lit(0)) == 0
    stale = behind("emb_at", frame_at) | behind("lab_at", frame_at) | no_frame_rows
    if flags is not None:
        stale = (stale | behind("flags_at", F.col("flag_frame_at"))  # missing where a frame is flagged
                 | (F.col("flags_at").isNotNull() & behind("flags_at", frame_at)))  # present but older
    return per_video.select("video_id", *(F.coalesce(F.col(c), F.lit(0)).cast("long").alias(c)
                                          for c in ("orphans", "published", "bad_input")),
                            stale.alias("stale"))


def _frame_rows_per_video(frames: DataFrame, published: DataFrame, *, with_flags: bool) -> DataFrame:
    """Per video of ``published``: orphan rows, rows, bad-input rows, newest ok (and flagged) row."""
    ok = F.col("status") == Status.OK
    rows = published.select(*FRAME_KEYS, "status", "computed_at", *(["flags"] if with_flags else []))
    newest_flagged = [F.max(F.when(ok & (F.size("flags") > 0), F.col("computed_at"))).alias("flag_frame_at")]
    return (rows.join(frames.select(*FRAME_KEYS, F.lit(True).alias("_in_frames")), FRAME_KEYS, "left")
            .groupBy("video_id")
            .agg(F.count(F.when(F.col("_in_frames").isNull(), 1)).alias("orphans"),
                 F.count(F.lit(1)).alias("published"),
                 F.count(F.when(F.col("status").isin(sorted(INPUT_STATUSES)), 1)).alias("bad_input"),
                 F.max(F.when(ok, F.col("computed_at"))).alias("frame_at"),
                 *(newest_flagged if with_flags else [])))
