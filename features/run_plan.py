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
from catalogfs.features.tables import FRAME_EMBEDDINGS, FRAMES, PUBLISHED, VIDEO_LABELS, VIDEO_LEVEL, run_tables

FRAME_KEYS = ["video_id", "frame_ts_ms"]


@dataclass(frozen=True)
class SpaceTables:
    """The tables a run of one space reads: ``frames`` and the space's published rows."""

    frames: DataFrame
    # published table → the space's rows, in registry order, for the tables the run writes
    # (features.tables.run_tables: the flag tables only when the model has flags)
    published: dict[str, DataFrame]
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
        tables = cls(frames, {t.name: in_space(t.name) for t in run_tables(with_flags=with_flags)},
                     frames_version=versions[FRAMES.name], versions=versions)
        for t in PUBLISHED:  # a table not read: its version is part of what the run reports
            if t.name not in versions:
                versions[t.name] = delta_writer.table_version(spark, storage, t.name)
        return tables

    @property
    def frame_embeddings(self) -> DataFrame:
        """The space's frame rows."""
        return self.published[FRAME_EMBEDDINGS.name]

    @property
    def video_labels(self) -> DataFrame:
        """The space's video label rows."""
        return self.published[VIDEO_LABELS.name]

    def restricted(self, video_ids: list[str]) -> "SpaceTables":
        """The same tables, only the rows of ``video_ids`` (an ``IN`` filter, which Delta's data
        skipping can use to leave out files whose video id range holds none of them)."""
        def only(df: DataFrame) -> DataFrame:
            return df.where(F.col("video_id").isin(video_ids))

        return SpaceTables(only(self.frames), {name: only(df) for name, df in self.published.items()},
                           frames_version=self.frames_version, versions=self.versions)


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

    Every video-level table read (the registry's) counts. Flag tables (models with flags) count
    too: a video may rightly have no flag rows, so they are missing only where an ok frame carries
    a flag, and stale wherever they are older than the video's newest frame row. One pass over the
    frame rows (a join of frame and published keys, then per-video aggregates), so the plan of a
    run stays a few Spark stages.
    """
    video_level = [t for t in PUBLISHED if t.fill.level == VIDEO_LEVEL and t.name in tables.published]
    per_video = _frame_rows_per_video(tables.frames, tables.frame_embeddings,
                                      with_flags=any(t.fill.flags for t in video_level))
    for t in video_level:  # full: video rows whose frame rows are all gone count too
        newest = tables.published[t.name].groupBy("video_id").agg(F.max("computed_at").alias(f"{t.name}_at"))
        per_video = per_video.join(newest, "video_id", "full")
    frame_at = F.col("frame_at")

    def behind(at: str, newest_frame) -> "F.Column":
        return newest_frame.isNotNull() & (F.col(at).isNull() | (F.col(at) < newest_frame))

    stale = F.coalesce(F.col("published"), F.lit(0)) == 0  # video rows, but no frame rows left
    for t in video_level:
        at = f"{t.name}_at"
        if t.fill.flags:  # missing where a frame is flagged, or present but older than a frame row
            stale = stale | behind(at, F.col("flag_frame_at")) | (F.col(at).isNotNull() & behind(at, frame_at))
        else:  # missing or older than the newest ok frame row
            stale = stale | behind(at, frame_at)
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
