"""Plan: what a run of one embedding space has to do, found in one Spark job before any model runs.

The plan finds frames that have no row in the space (or only a row with a transient status,
retried), videos whose frame rows lost their frame (the removal policy deletes them) and videos
whose video-level rows are missing or older than their frames.

It looks only where something can have changed (:class:`PlanScope`): the videos whose ``frames``
rows changed since the space's last complete run (the table's change data feed between the two
Delta versions) and the videos with rows to retry. An unchanged catalogue costs no Spark job at
all; the first run of a space, or one that cannot prove what changed, plans over every video.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from catalogfs.config import StorageConfig
from catalogfs.statuses import INPUT_STATUSES, TRANSIENT_STATUSES, Status
from catalogfs.features import delta_writer
from catalogfs.features.spaces import EmbeddingSpace
from catalogfs.features.tables import FRAME_EMBEDDINGS, FRAMES, VIDEO_EMBEDDINGS, VIDEO_FLAGS, VIDEO_LABELS

FRAME_KEYS = ["video_id", "frame_ts_ms"]


@dataclass(frozen=True)
class SpaceTables:
    """The tables a run of one space reads: ``frames`` and the space's published rows."""

    frames: DataFrame
    frame_embeddings: DataFrame
    video_embeddings: DataFrame
    video_labels: DataFrame
    video_flags: DataFrame | None  # None: the model has no flags
    frames_version: int = -1  # the Delta version of ``frames`` the run reads
    # table → the version pinned at plan time: ``frames`` and every published table
    versions: dict[str, int] = field(default_factory=dict, compare=False)

    @classmethod
    def read(cls, spark: SparkSession, storage: StorageConfig, space: EmbeddingSpace, *,
             with_flags: bool) -> "SpaceTables":
        """The tables, each pinned to the Delta version it has now (time travel), so that every
        later action of the run (plan, embed, stage, publish scopes) reads the same snapshot
        whatever other jobs commit meanwhile. A DataFrame read by name re-reads the newest version
        at each action (over Spark Connect it is analysed again each time): a run planned 4 frames,
        an extract committed 2 more, and the embed stage then computed 6."""
        versions: dict[str, int] = {}

        def pinned(table: str) -> DataFrame:
            versions[table] = version = delta_writer.table_version(spark, storage, table)
            return spark.sql(f"SELECT * FROM {storage.qualified(table)} VERSION AS OF {version}")

        def in_space(table: str) -> DataFrame:
            return pinned(table).where(F.col("embedding_space") == space.id)

        frames = pinned(FRAMES.name)
        tables = cls(frames, in_space(FRAME_EMBEDDINGS.name),
                     in_space(VIDEO_EMBEDDINGS.name), in_space(VIDEO_LABELS.name),
                     in_space(VIDEO_FLAGS.name) if with_flags else None, frames_version=versions[FRAMES.name],
                     versions=versions)
        if not with_flags:  # not read, but its version is part of what the run reports
            versions[VIDEO_FLAGS.name] = delta_writer.table_version(spark, storage, VIDEO_FLAGS.name)
        return tables

    def restricted(self, video_ids: list[str]) -> "SpaceTables":
        """The same tables, only the rows of ``video_ids`` (an ``IN`` filter, which Delta's data
        skipping can use to leave out files whose video id range holds none of them)."""
        def only(df: DataFrame | None) -> DataFrame | None:
            return None if df is None else df.where(F.col("video_id").isin(video_ids))

        return SpaceTables(only(self.frames), only(self.frame_embeddings), only(self.video_embeddings),
                           only(self.video_labels), only(self.video_flags), frames_version=self.frames_version,
                           versions=self.versions)


@dataclass(frozen=True)
class PlanScope:
    """Where a run looks for work: every video (``video_ids`` None: a full plan) or only
    ``video_ids``; ``reason`` says why, for the log and the run report."""

    video_ids: list[str] | None
    reason: str

    @property
    def full(self) -> bool:
        return self.video_ids is None


def changed_videos(spark: SparkSession, storage: StorageConfig, *, after: int, until: int) -> list[str]:
    """Videos with a ``frames`` row inserted, updated or deleted in a commit after version
    ``after`` up to ``until`` (the change data feed; raises when it does not cover the range)."""
    if until <= after:
        return []
    changes = (spark.read.format("delta").option("readChangeFeed", "true")
               .option("startingVersion", after + 1).option("endingVersion", until)
               .table(storage.qualified(FRAMES.name)))
    return sorted(r["video_id"] for r in changes.select("video_id").distinct().collect())


def videos_to_retry(tables: SpaceTables) -> list[str]:
    """Videos with a frame row of the space whose status is transient (retried every run)."""
    rows = (tables.frame_embeddings.where(F.col("status").isin(sorted(TRANSIENT_STATUSES)))
            .select("video_id").distinct().collect())
    return sorted(r["video_id"] for r in rows)


def plan_scope(spark: SparkSession, storage: StorageConfig, tables: SpaceTables, *, since: int | None,
               unsafe: str | None = None) -> PlanScope:
    """The scope of a run's plan. ``since``: the ``frames`` version the space's last complete run
    planned on (None: none is known, plan everything); ``unsafe``: why the space's tables may have
    changed outside of runs since then (a commit not made by a run), which asks for a full plan."""
    if since is None:
        return PlanScope(None, "full plan: no complete run of the space recorded the frames version it planned on")
    if unsafe:
        return PlanScope(None, f"full plan: {unsafe}")
    if tables.frames_version < since:
        return PlanScope(None, f"full plan: frames is at version {tables.frames_version}, older than the "
                               f"version {since} the last run planned on (the table was recreated)")
    try:
        changed = changed_videos(spark, storage, after=since, until=tables.frames_version)
    except Exception as exc:  # noqa: BLE001 - no change data for the range: plan everything
        return PlanScope(None, f"full plan: the change data feed of frames does not cover versions "
                               f"{since + 1}..{tables.frames_version} ({str(exc).splitlines()[0][:200]})")
    retry = videos_to_retry(tables)
    videos = sorted(set(changed) | set(retry))
    return PlanScope(videos, f"incremental plan: frames v{since} → v{tables.frames_version}, "
                             f"{len(changed)} videos changed, {len(retry)} with frames to retry")


@dataclass(frozen=True)
class RunPlan:
    """What a run has to do, found by one Spark job (see :func:`plan_run`)."""

    frames_to_embed: int
    orphan_videos: list[str]
    stale_videos: list[str]
    published_frames: int = 0  # rows the space already has (0: its first publish)
    published_bad_input: int = 0  # of which with a bad-input status (a status of the upload's own)
    # video → (frame rows, bad-input frame rows) published in the space, for the planned videos that have rows
    per_video: dict[str, tuple[int, int]] = field(default_factory=dict)
    todo: DataFrame | None = field(default=None, compare=False, repr=False)  # the frames to embed
    scope: PlanScope | None = field(default=None, compare=False)
    frames_version: int | None = None  # the version of ``frames`` planned on (recorded in the lineage)

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


def plan_run(tables: SpaceTables, scope: PlanScope | None = None) -> RunPlan:
    """How many frames need embedding (:func:`frames_to_embed`) and which videos need their rows
    refreshed (:func:`videos_needing_refresh`), within ``scope`` (default: every video), collected
    together with the space's row totals in one Spark job. Rows come back per planned video with
    published rows — in proportion to the change, never to the catalogue for an incremental scope.
    An incremental scope with no video runs no Spark job."""
    scope = scope or PlanScope(None, "full plan")
    if scope.video_ids is not None and not scope.video_ids:
        return RunPlan(0, [], [], todo=None, scope=scope, frames_version=tables.frames_version)
    planned = tables if scope.full else tables.restricted(scope.video_ids)
    todo = frames_to_embed(planned.frames, planned.frame_embeddings)
    null_video = F.lit(None).cast("string").alias("video_id")
    zero = F.lit(0).cast("long")
    count = todo.groupBy().count().select(null_video, F.col("count").alias("todo"), zero.alias("orphans"),
                                          zero.alias("published"), zero.alias("bad_input"), F.lit(False).alias("stale"))
    totals = tables.frame_embeddings.agg(  # the whole space: what validation's bad-input share starts from
        F.count(F.lit(1)).alias("published"),
        F.count(F.when(F.col("status").isin(sorted(INPUT_STATUSES)), 1)).alias("bad_input"))
    totals = totals.select(null_video, zero.alias("todo"), zero.alias("orphans"), "published", "bad_input",
                           F.lit(True).alias("stale"))  # stale=True marks the totals row
    found = (count.unionByName(totals)
             .unionByName(videos_needing_refresh(planned).withColumn("todo", zero)).collect())
    videos = [r for r in found if r["video_id"] is not None]
    total = next(r for r in found if r["video_id"] is None and r["stale"])
    return RunPlan(frames_to_embed=sum(int(r["todo"]) for r in found),
                   orphan_videos=sorted(r["video_id"] for r in videos if r["orphans"]),
                   stale_videos=sorted(r["video_id"] for r in videos if r["stale"]),
                   published_frames=int(total["published"]), published_bad_input=int(total["bad_input"]),
                   per_video={r["video_id"]: (int(r["published"]), int(r["bad_input"]))
                              for r in videos if r["published"]},
                   todo=todo, scope=scope, frames_version=tables.frames_version)


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
