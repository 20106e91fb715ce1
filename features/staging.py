"""Stage: embed the planned frames into a staging folder, then derive every row the publish would
write (the affected videos' next frame state, video embeddings, labels and flags), as Parquet.

Nothing here touches a published table: validation reads the staged rows and publish copies them.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Mapping

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from catalogfs import failpoints
from catalogfs.config import Config
from catalogfs.progress import Progress
from catalogfs.spark import default_parallelism, is_connect
from catalogfs.statuses import Status
from catalogfs.features import delta_writer, pooling
from catalogfs.features.pooling import PoolParams
from catalogfs.features.run_plan import FRAME_KEYS, RunPlan, SpaceTables
from catalogfs.features.spaces import EmbeddingSpace
from catalogfs.features.tables import FRAME_EMBEDDINGS, FRAME_LEVEL, Registered, run_tables
from catalogfs.features.taxonomies import relabelled_frames
from catalogfs.udfs.engine import EngineOptions
from catalogfs.udfs.flags import Taxonomy
from catalogfs.udfs.model_registry import ResolvedModel, local_bundle_dir
from catalogfs.udfs.relabel import zero_shot_scorer
from catalogfs.udfs.spark_udf import make_embed_udf

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageStats:
    """What the embedding stage did (from an Observation of the embed UDF's output and one grouped count)."""

    frames_embedded: int = 0
    forward_passes: int = 0
    model_loads: int = 0  # times a Python worker loaded the model (≤ workers)
    embed_seconds: float = 0.0
    status_counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Staged:
    """A run's candidates, staged as Parquet: what validation reads and publish copies."""

    candidates: DataFrame  # the new frame rows (frame_embeddings schema): what the frame suite checks
    # table → the rows its MERGE writes, in publish order (features.tables.run_tables): the frame
    # table's are every frame row the affected videos will have after publish
    rows: dict[str, DataFrame]
    video_ids: list[str]  # the affected videos: new frames, orphan rows, stale video rows
    stats: StageStats

    @property
    def state(self) -> DataFrame:
        """Every frame row the affected videos will have after publish."""
        return self.rows[FRAME_EMBEDDINGS.name]


def engine_options(cfg: Config) -> EngineOptions:
    """The engine's options, from the ``inference`` section of the config (one source of truth)."""
    return EngineOptions.from_config(cfg.inference)


def compute_frame_candidates(spark: SparkSession, frames: DataFrame, model: ResolvedModel,
                             space: EmbeddingSpace, cfg: Config, *, run_id: str,
                             computed_at: datetime, observation=None, frames_done=None) -> DataFrame:
    """Run the embed UDF over ``frames``; returns rows with the ``frame_embeddings`` schema.

    Frames that arrived with a non-ok status keep it (and get no vector); frames the engine could
    not decode get the engine's status. ``observation`` (a :func:`new_observation`), when given,
    receives ``forward_passes`` and ``model_loads``, the sums over the UDF's output, once an action
    ran; ``frames_done`` is an optional accumulator (classic sessions only) for live progress.
    """
    udf = make_embed_udf(model.source_uri, engine_options(cfg),
                         cache_dir=str(cfg.storage.model_cache_dir / model.name / model.version),
                         frames_done=frames_done)
    out = frames.withColumn("_r", udf(F.col("image")))
    if observation is not None:
        out = out.observe(observation, *(F.coalesce(F.sum(f"_r.{counter}"), F.lit(0)).alias(name)
                                         for counter, name in _OBSERVED.items()))
    frame_ok = F.col("status") == Status.OK
    return out.select(
        "video_id", "frame_ts_ms",
        F.lit(space.id).alias("embedding_space"),
        F.when(frame_ok, F.col("_r.embedding")).alias("embedding"),
        "content_sha256",
        F.when(frame_ok, F.col("_r.labels")).alias("labels"),
        F.when(frame_ok, F.col("_r.label_scores")).alias("label_scores"),
        F.when(frame_ok, F.col("_r.flags")).alias("flags"),
        F.when(frame_ok, F.col("_r.flag_scores")).alias("flag_scores"),
        F.when(frame_ok, F.col("_r.status")).otherwise(F.col("status")).alias("status"),
        F.when(frame_ok, F.col("_r.error")).otherwise(F.col("error")).alias("error"),
        F.lit(model.name).alias("model_name"),
        F.lit(model.version).alias("model_version"),
        F.lit(run_id).alias("run_id"),
        F.lit(computed_at).cast("timestamp").alias("computed_at"),
    )


# the UDF's counter fields (udfs.spark_udf.COUNTER_FIELDS) → the observed metrics, named as StageStats
_OBSERVED = {"forward_passes": "forward_passes", "model_load": "model_loads"}


def new_observation(spark: SparkSession):
    """A fresh, uniquely named ``Observation`` of the session's kind (classic or Spark Connect)."""
    if is_connect(spark):
        from pyspark.sql.connect.observation import Observation
    else:
        from pyspark.sql.observation import Observation
    return Observation(f"catalogfs_embed_{uuid.uuid4().hex}")


def observed_counts(observation) -> dict[str, int]:
    """``forward_passes`` and ``model_loads`` from an observation whose action ran (0 where absent)."""
    metrics = observation.get or {}
    return {name: int(metrics.get(name) or 0) for name in _OBSERVED.values()}


def next_frame_state(frames: DataFrame, candidates: DataFrame, published: DataFrame,
                     video_ids: list[str]) -> DataFrame:
    """The frame embeddings the affected videos will have after publish (candidates win)."""
    current = frames.where(F.col("video_id").isin(video_ids)).select(*FRAME_KEYS, "content_sha256")
    merged = candidates.unionByName(
        published.where(F.col("video_id").isin(video_ids))
        .join(candidates.select(*FRAME_KEYS), FRAME_KEYS, "left_anti"))
    cond = [current[k] == merged[k] for k in FRAME_KEYS] + [current["content_sha256"].eqNullSafe(merged["content_sha256"])]
    return merged.join(current, cond, "left_semi")


def stage_run(spark: SparkSession, cfg: Config, model: ResolvedModel, space: EmbeddingSpace, plan: RunPlan,
              tables: SpaceTables, flags: Mapping[str, float], *, run_id: str, started: datetime,
              staging: Path, taxonomy: Taxonomy | None = None) -> Staged:
    """Embed ``plan.todo`` into ``staging``, then stage the next frame state and the video-level
    rows of every affected video (new frames, orphans, stale rows). ``flags``: label → threshold
    (empty: the model has no flags, no video_flags rows). ``taxonomy``: the space's active
    taxonomy when it is not the registered one (a relabelled CLIP-like space): the new frames'
    labels and flags are scored with it from their vectors (:mod:`features.taxonomies`)."""
    failpoints.phase("embed.stage")
    candidates, stats, embedded = _embed(spark, cfg, model, space, plan, run_id=run_id, started=started,
                                         staging=staging)
    if taxonomy is not None and stats.frames_embedded:
        scorer = zero_shot_scorer(local_bundle_dir(model.source_uri, cfg.storage.model_cache_dir / model.name / model.version),
                                  taxonomy, top_k=cfg.inference.top_k, what=f"space {space.id}")
        candidates = delta_writer.write_staging(relabelled_frames(candidates, scorer, run_id=run_id),
                                                staging / f"{FRAME_EMBEDDINGS.name}_relabelled")
    video_ids = sorted(embedded | set(plan.orphan_videos) | set(plan.stale_videos))
    state = delta_writer.write_staging(next_frame_state(tables.frames, candidates, tables.frame_embeddings, video_ids),
                                       staging / "frame_state")
    rows = stage_rows(state, run_tables(with_flags=bool(flags)),
                      PoolParams(cfg.labels.top_k_per_video, dict(flags)), run_id=run_id, started=started,
                      taxonomy_version=space.taxonomy_version, staging=staging)
    return Staged(candidates, rows, video_ids, stats)


def stage_rows(frame_rows: DataFrame, tables: tuple[Registered, ...], params: PoolParams, *, run_id: str,
               started: datetime, taxonomy_version: str, staging: Path) -> dict[str, DataFrame]:
    """The staged rows of each of ``tables`` (registry entries, in publish order): a frame-level
    table gets ``frame_rows``; a video-level one its rows derived from them (its ``rows`` function
    of :mod:`features.pooling`) with the run's ``run_id``, ``computed_at`` and, where its schema has
    the column, ``taxonomy_version``, written to ``staging/<table>``."""
    rows: dict[str, DataFrame] = {}
    for entry in tables:
        if entry.fill.level == FRAME_LEVEL:
            rows[entry.name] = frame_rows
            continue
        df = getattr(pooling, entry.fill.rows)(frame_rows, params)
        df = df.withColumn("run_id", F.lit(run_id)).withColumn("computed_at", F.lit(started).cast("timestamp"))
        if "taxonomy_version" in entry.table.schema.fieldNames():
            df = df.withColumn("taxonomy_version", F.lit(taxonomy_version))
        rows[entry.name] = delta_writer.write_staging(df, staging / entry.name)
    return rows


def _embed(spark: SparkSession, cfg: Config, model: ResolvedModel, space: EmbeddingSpace, plan: RunPlan, *,
           run_id: str, started: datetime, staging: Path) -> tuple[DataFrame, StageStats, set[str]]:
    """The embed UDF over the planned frames, written to staging (the one step that runs the model).
    Returns the staged candidates, what the stage did, and the videos of the candidates."""
    n_todo, todo = plan.frames_to_embed, plan.todo
    if n_todo:
        todo = todo.repartition(max(1, min(default_parallelism(spark) * 2,
                                           math.ceil(n_todo / cfg.inference.batch_size))))
        log.info("embedding %d frames into space %s", n_todo, space.id)
    # live progress needs an accumulator: classic sessions only (Spark Connect has none)
    frames_done = None if is_connect(spark) else spark.sparkContext.accumulator(0)
    observation = new_observation(spark) if n_todo else None  # nothing to embed: no model runs
    candidates = compute_frame_candidates(spark, todo, model, space, cfg, run_id=run_id, computed_at=started,
                                          observation=observation, frames_done=frames_done)
    t0 = time.monotonic()
    with Progress("embedding", n_todo, frames_done) if frames_done is not None else nullcontext():
        candidates = delta_writer.write_staging(candidates, staging / FRAME_EMBEDDINGS.name)
    seconds = time.monotonic() - t0
    counts: dict[str, int] = {}
    by_video_status = candidates.groupBy("video_id", "status").count().collect()  # one small job for both
    for r in by_video_status:
        counts[r["status"]] = counts.get(r["status"], 0) + int(r["count"])
    counters = observed_counts(observation) if observation is not None else {}
    stats = StageStats(frames_embedded=n_todo, embed_seconds=seconds, status_counts=counts, **counters)
    return candidates, stats, {r["video_id"] for r in by_video_status}
