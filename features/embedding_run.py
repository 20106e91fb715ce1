"""Frames → candidate features → validation → publish, for one resolved model version.

Write-audit-publish:

1. **Candidates**: frames whose (key, content hash) has no row in the target embedding space go
   through the embed UDF into a staging table; video embeddings and labels are recomputed for the
   videos those frames belong to (from the candidates plus the unchanged published frames).
2. **Audit**: the Great Expectations suites run on the staged candidates.
3. **Publish**: only if every suite passed, one MERGE per published table; a lineage row goes to
   ``feature_versions`` either way. A failed audit leaves the published tables untouched.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from catalogfs import failpoints
from catalogfs.config import Config
from catalogfs.progress import Progress
from expectations.runner import ValidationOutcome, validate_candidates
from expectations.drift import label_shift, with_drift_cosine
from expectations.suites import (
    SuiteParams,
    drift_suite,
    frame_embeddings_suite,
    input_rejects_suite,
    video_embeddings_suite,
    video_flags_suite,
    video_labels_suite,
)
from expectations.vector_checks import with_score_checks, with_status_checks, with_vector_checks
from features import delta_writer
from features.lineage import Attempt, record_lineage, repair_lineage
from features.promotion import SpaceModel, current_space, promote, published_spaces, refresh_current_views, space_model
from features.publish import PublishSkipped, publish_with_retries
from features.pooling import aggregate_video_flags, aggregate_video_labels, pool_video_embeddings
from features.spaces import EmbeddingSpace
from catalogfs.statuses import INPUT_STATUSES, TRANSIENT_STATUSES
from features.tables import (
    FRAME_EMBEDDINGS,
    FRAMES,
    PUBLISHED_TABLES,
    VIDEO_EMBEDDINGS,
    VIDEO_FLAGS,
    VIDEO_LABELS,
)
from udfs.engine import EngineOptions
from udfs.model_registry import ResolvedModel
from udfs.spark_udf import make_embed_udf
from catalogfs.errors import ValidationFailed  # noqa: F401 (raised here, importable from here)

log = logging.getLogger(__name__)

FRAME_KEYS = ["video_id", "frame_ts_ms"]


@dataclass
class EmbedResult:
    run_id: str
    space: EmbeddingSpace
    frames_total: int = 0
    frames_embedded: int = 0
    forward_passes: int = 0
    model_loads: int = 0
    videos_updated: list[str] = field(default_factory=list)
    status_counts: dict[str, int] = field(default_factory=dict)
    table_versions: dict[str, int] = field(default_factory=dict)
    validation: ValidationOutcome | None = None
    report_dir: str | None = None
    published: bool = False
    seconds: float = 0.0
    embed_seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)  # plan, embed, stage, validate, publish, lineage
    report_html: str | None = None
    written_versions: dict[str, int] = field(default_factory=dict)  # this run's own commits
    current_space: str | None = None  # what the current_* views select after the run
    recovered_runs: list[str] = field(default_factory=list)  # lineage rows written for crashed runs
    warnings: list[str] = field(default_factory=list)

    @property
    def is_current(self) -> bool:
        """Whether the run's space is what consumers read (else it is a shadow space)."""
        return self.current_space == self.space.id

    @property
    def stage_summary(self) -> str:
        """``plan 3.1, embed 4.2, …`` (seconds per stage), or ``—`` for a run with nothing to do."""
        return ", ".join(f"{k} {v:.1f}" for k, v in self.stage_seconds.items()) or "—"

    @property
    def frames_per_second(self) -> float:
        """Frames through decode + model, per second of the embedding stage (not the whole run)."""
        return self.frames_embedded / self.embed_seconds if self.embed_seconds > 0 else 0.0


def engine_options(cfg: Config) -> EngineOptions:
    inf = cfg.inference
    return EngineOptions(batch_size=inf.batch_size, device=inf.device, num_threads=inf.num_threads,
                         top_k=inf.top_k, max_image_pixels=inf.max_image_pixels,
                         max_batch_bytes=inf.max_batch_bytes, gpu_decode=inf.gpu_decode,
                         runtime=inf.runtime)


def frames_to_embed(frames: DataFrame, published: DataFrame) -> DataFrame:
    """Frames whose (video_id, frame_ts_ms, content_sha256) has no row in ``published`` (one space),
    or only a row with a transient status (an inference error on the device): those are retried."""
    done = (published.where(~F.col("status").isin(sorted(TRANSIENT_STATUSES)))
            .select(*FRAME_KEYS, F.col("content_sha256").alias("_done_sha")))
    cond = [frames[k] == done[k] for k in FRAME_KEYS] + [frames["content_sha256"].eqNullSafe(done["_done_sha"])]
    return frames.join(done, cond, "left_anti")


def compute_frame_candidates(spark: SparkSession, frames: DataFrame, model: ResolvedModel,
                             space: EmbeddingSpace, cfg: Config, *, run_id: str,
                             computed_at: datetime, forward_passes=None, frames_done=None,
                             model_loads=None) -> DataFrame:
    """Run the embed UDF over ``frames``; returns rows with the ``frame_embeddings`` schema.

    Frames that arrived with a non-ok status keep it (and get no vector); frames the engine could
    not decode get the engine's status.
    """
    udf = make_embed_udf(model.source_uri, engine_options(cfg),
                         cache_dir=str(cfg.storage.model_cache_dir / model.name / model.version),
                         forward_passes=forward_passes, frames_done=frames_done, model_loads=model_loads)
    frame_ok = F.col("status") == "ok"
    out = frames.withColumn("_r", udf(F.col("image")))
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


def next_frame_state(frames: DataFrame, candidates: DataFrame, published: DataFrame,
                     video_ids: list[str]) -> DataFrame:
    """The frame embeddings the affected videos will have after publish (candidates win)."""
    current = frames.where(F.col("video_id").isin(video_ids)).select(*FRAME_KEYS, "content_sha256")
    merged = candidates.unionByName(
        published.where(F.col("video_id").isin(video_ids))
        .join(candidates.select(*FRAME_KEYS), FRAME_KEYS, "left_anti"))
    cond = [current[k] == merged[k] for k in FRAME_KEYS] + [current["content_sha256"].eqNullSafe(merged["content_sha256"])]
    return merged.join(current, cond, "left_semi")


def _video_rows(df: DataFrame, *, run_id: str, computed_at: datetime, extra: dict) -> DataFrame:
    df = df.withColumn("run_id", F.lit(run_id)).withColumn("computed_at", F.lit(computed_at).cast("timestamp"))
    for name, value in extra.items():
        df = df.withColumn(name, F.lit(value))
    return df


@dataclass(frozen=True)
class RunPlan:
    """What a run has to do, found by one Spark job (see :func:`plan_run`)."""

    frames_to_embed: int
    orphan_videos: list[str]
    stale_videos: list[str]
    published_frames: int = 0  # rows the space already has (0: its first publish)
    # video → (frame rows, bad-input frame rows) published in the space, for the videos that have rows
    per_video: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def published_bad_input(self) -> int:
        """Frame rows of the space with a bad-input status (a status of the upload's own)."""
        return sum(bad for _, bad in self.per_video.values())

    @property
    def nothing_to_do(self) -> bool:
        return self.frames_to_embed == 0 and not self.orphan_videos and not self.stale_videos


def plan_run(frames: DataFrame, published: DataFrame, video_emb: DataFrame, video_lab: DataFrame,
             video_flags: DataFrame | None = None) -> RunPlan:
    """How many frames need embedding (:func:`frames_to_embed`) and which videos need their rows
    refreshed (:func:`videos_needing_refresh`), collected together in one Spark job — the whole
    cost of an unchanged rerun."""
    todo = (frames_to_embed(frames, published).groupBy().count()
            .select(F.lit(None).cast("string").alias("video_id"), F.col("count").alias("todo"),
                    F.lit(0).cast("long").alias("orphans"), F.lit(0).cast("long").alias("published"),
                    F.lit(0).cast("long").alias("bad_input"), F.lit(False).alias("stale")))
    found = todo.unionByName(videos_needing_refresh(frames, published, video_emb, video_lab, video_flags)
                             .withColumn("todo", F.lit(0).cast("long"))).collect()
    videos = [r for r in found if r["video_id"] is not None]
    return RunPlan(frames_to_embed=sum(int(r["todo"]) for r in found),
                   orphan_videos=sorted(r["video_id"] for r in videos if r["orphans"]),
                   stale_videos=sorted(r["video_id"] for r in videos if r["stale"]),
                   published_frames=sum(int(r["published"]) for r in videos),
                   per_video={r["video_id"]: (int(r["published"]), int(r["bad_input"]))
                              for r in videos if r["published"]})


def videos_needing_refresh(frames: DataFrame, published: DataFrame, video_emb: DataFrame,
                           video_lab: DataFrame, video_flags: DataFrame | None = None) -> DataFrame:
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
    ok = F.col("status") == "ok"
    rows = published.select(*FRAME_KEYS, "status", "computed_at",
                            *(["flags"] if video_flags is not None else []))
    per_video = (rows.join(frames.select(*FRAME_KEYS, F.lit(True).alias("_in_frames")), FRAME_KEYS, "left")
                 .groupBy("video_id")
                 .agg(F.count(F.when(F.col("_in_frames").isNull(), 1)).alias("orphans"),
                      F.count(F.lit(1)).alias("published"),
                      F.count(F.when(F.col("status").isin(sorted(INPUT_STATUSES)), 1)).alias("bad_input"),
                      F.max(F.when(ok, F.col("computed_at"))).alias("frame_at"),
                      *([F.max(F.when(ok & (F.size("flags") > 0), F.col("computed_at"))).alias("flag_frame_at")]
                        if video_flags is not None else [])))
    tables = {"emb_at": video_emb, "lab_at": video_lab}
    if video_flags is not None:
        tables["flags_at"] = video_flags
    for name, table in tables.items():  # full: video rows whose frame rows are all gone count too
        per_video = per_video.join(table.groupBy("video_id").agg(F.max("computed_at").alias(name)), "video_id", "full")
    frame_at = F.col("frame_at")

    def behind(at: str, newest) -> "F.Column":
        return newest.isNotNull() & (F.col(at).isNull() | (F.col(at) < newest))

    no_frame_rows = F.coalesce(F.col("published"), F.lit(0)) == 0
    stale = behind("emb_at", frame_at) | behind("lab_at", frame_at) | no_frame_rows
    if video_flags is not None:
        stale = (stale | behind("flags_at", F.col("flag_frame_at"))  # missing where a frame is flagged
                 | (F.col("flags_at").isNotNull() & behind("flags_at", frame_at)))  # present but older
    return per_video.select("video_id", *(F.coalesce(F.col(c), F.lit(0)).cast("long").alias(c)
                                          for c in ("orphans", "published", "bad_input")),
                            stale.alias("stale"))


def run_embedding(spark: SparkSession, cfg: Config, model: ResolvedModel, *, run_id: str,
                  serve: bool = True) -> EmbedResult:
    """Embed what is new in ``frames`` into ``model``'s space, audit it, publish it. See module doc.

    Removal policy: published rows mirror ``frames``. Rows of frames that left ``frames`` (a
    re-extraction at another rate, a deleted video) are deleted from this space at the next run,
    together with the video-level rows of videos that have no ok frame left.

    ``serve``: the model is the catalogue's serving model (``model.name@model.alias``, the
    scheduled run), so once its space is published it becomes current when no space is, or when
    the current space is another version of the same model (the alias was moved by a promote). A
    ``--model`` backfill (``serve=False``) never changes what consumers read. Every run first
    repairs what a killed run left: lineage rows of runs that committed but never recorded it
    (:func:`features.lineage.repair_lineage`) and a promotion that did not happen.
    """
    storage = cfg.storage
    space = EmbeddingSpace.for_model(model)
    result = EmbedResult(run_id=run_id, space=space)
    started = datetime.now(timezone.utc)
    t0 = time.monotonic()
    delta_writer.ensure_catalog(spark, storage, log_retention_days=cfg.retention.log_retention_days)
    refresh_current_views(spark, storage)  # a data root from an older version: new tables and columns
    flags_spec = dict(model.spec.options.get("flags") or {})

    def in_space(table: str) -> DataFrame:
        return spark.table(storage.qualified(table)).where(F.col("embedding_space") == space.id)

    frames = spark.table(storage.qualified(FRAMES.name))
    published = in_space(FRAME_EMBEDDINGS.name)
    result.frames_total = frames.count()
    todo = frames_to_embed(frames, published)
    plan = plan_run(frames, published, in_space(VIDEO_EMBEDDINGS.name), in_space(VIDEO_LABELS.name),
                    in_space(VIDEO_FLAGS.name) if flags_spec else None)
    result.recovered_runs = repair_lineage(spark, cfg, space, run_id=run_id)
    current = current_space(spark, storage)
    current_model = space_model(spark, storage, current) if current else None
    if plan.nothing_to_do:
        log.info("every frame already has an embedding in space %s: nothing to compute", space.id)
        result.current_space = settle_current(spark, storage, space, current_model, serve=serve, run_id=run_id)
        result.seconds = time.monotonic() - t0
        result.table_versions = _versions(spark, cfg)
        return result

    staging = storage.staging_dir / run_id
    clock = _StageClock(result, t0)
    clock.lap("plan")
    staged = _stage(spark, cfg, model, space, result, plan, frames, todo, published, flags_spec,
                    staging=staging, started=started, clock=clock)
    clock.lap("stage")
    failpoints.reached("after_staging")

    outcome = _validate(spark, cfg, space, result, plan, staged, current_model)
    clock.lap("validate")

    attempt = Attempt(run_id=run_id, status="rejected", table_versions={}, frames_embedded=result.frames_embedded,
                      validation_success=outcome.success, validation_report=result.report_dir,
                      failed_expectations=None if outcome.success else outcome.failures)
    try:
        if outcome.success:
            result.written_versions = publish_with_retries(
                spark, cfg, space, staged.state, staged.video_emb, staged.video_lab, staged.video_ids,
                run_id=run_id, txn_version=int(started.timestamp() * 1000), video_flags=staged.video_flags,
                register=plan.published_frames == 0)
            result.published = True
            attempt = replace(attempt, status="published", table_versions=result.written_versions)
    except PublishSkipped as exc:
        attempt = replace(attempt, status="skipped", table_versions=exc.written, note=str(exc)[:1000])
        record_lineage(spark, cfg, space, attempt, started=started)
        raise
    clock.lap("publish")
    result.table_versions = _versions(spark, cfg)
    failpoints.reached("before_lineage")
    record_lineage(spark, cfg, space, attempt, started=started)
    result.current_space = settle_current(spark, storage, space, current_model, serve=serve, run_id=run_id)
    delta_writer.drop_staging(staging)
    clock.lap("lineage")
    result.seconds = time.monotonic() - t0
    log.info("run %s stage seconds: %s", run_id, result.stage_summary)
    if not outcome.success:
        raise ValidationFailed(outcome, str(result.report_dir))
    return result


def settle_current(spark: SparkSession, storage, space: EmbeddingSpace, current: SpaceModel | None, *,
                   serve: bool, run_id: str) -> str | None:
    """Which space is current after a run, promoting this run's space when it is the serving
    model's and published, and either no space is current (the first publish, or one whose
    promotion a crash cut off) or the current space is another version of the same model (the
    serving alias was moved by ``catalogfs models promote``). A space of another model is never
    made current here: that takes ``catalogfs spaces promote``."""
    if current is not None and (current.space == space.id or not serve or current.model_name != space.model_name):
        return current.space
    if not serve or space.id not in published_spaces(spark, storage):
        return None if current is None else current.space
    note = ("first published space" if current is None
            else f"serving alias moved from version {current.model_version} to {space.model_version}")
    failpoints.reached("before_views")
    promote(spark, storage, space.id, run_id=run_id, note=note)
    return space.id


@dataclass(frozen=True)
class _Staged:
    """A run's candidates, staged as Parquet: what validation reads and publish copies."""

    candidates: DataFrame
    state: DataFrame
    video_emb: DataFrame
    video_lab: DataFrame
    video_flags: DataFrame | None
    video_ids: list[str]


def _stage(spark: SparkSession, cfg: Config, model: ResolvedModel, space: EmbeddingSpace, result: EmbedResult,
           plan: RunPlan, frames: DataFrame, todo: DataFrame, published: DataFrame, flags_spec: dict, *,
           staging, started: datetime, clock: "_StageClock") -> _Staged:
    """Embed the frames to do into staging, then the next frame state and the video-level rows of
    every affected video (new frames, orphans, stale rows)."""
    n_todo, run_id = plan.frames_to_embed, result.run_id
    accumulator = spark.sparkContext.accumulator(0)
    frames_done = spark.sparkContext.accumulator(0)
    model_loads = spark.sparkContext.accumulator(0)
    if n_todo:
        partitions = max(1, min(spark.sparkContext.defaultParallelism * 2,
                                math.ceil(n_todo / cfg.inference.batch_size)))
        todo = todo.repartition(partitions)
        log.info("embedding %d frames into space %s", n_todo, space.id)
    candidates = compute_frame_candidates(spark, todo, model, space, cfg, run_id=run_id,
                                          computed_at=started, forward_passes=accumulator,
                                          frames_done=frames_done, model_loads=model_loads)
    t_embed = time.monotonic()
    with Progress("embedding", n_todo, frames_done):
        candidates = delta_writer.write_staging(candidates, staging / FRAME_EMBEDDINGS.name)
    result.embed_seconds = time.monotonic() - t_embed
    clock.lap("embed")
    result.forward_passes = int(accumulator.value)
    result.model_loads = int(model_loads.value)
    result.frames_embedded = n_todo
    by_video_status = candidates.groupBy("video_id", "status").count().collect()  # one job for both
    result.status_counts = {}
    for r in by_video_status:
        result.status_counts[r["status"]] = result.status_counts.get(r["status"], 0) + int(r["count"])
    video_ids = sorted({r["video_id"] for r in by_video_status} | set(plan.orphan_videos) | set(plan.stale_videos))
    result.videos_updated = video_ids

    state = delta_writer.write_staging(next_frame_state(frames, candidates, published, video_ids),
                                       staging / "frame_state")
    video_emb = delta_writer.write_staging(
        _video_rows(pool_video_embeddings(state), run_id=run_id, computed_at=started, extra={}),
        staging / VIDEO_EMBEDDINGS.name)
    video_lab = delta_writer.write_staging(
        _video_rows(aggregate_video_labels(state, top_k=cfg.labels.top_k_per_video), run_id=run_id,
                    computed_at=started, extra={"taxonomy_version": space.taxonomy_version}),
        staging / VIDEO_LABELS.name)
    video_flags = None
    if flags_spec:  # models without flags write no video_flags rows
        video_flags = delta_writer.write_staging(
            _video_rows(aggregate_video_flags(state, thresholds=flags_spec), run_id=run_id,
                        computed_at=started, extra={"taxonomy_version": space.taxonomy_version}),
            staging / VIDEO_FLAGS.name)
    return _Staged(candidates, state, video_emb, video_lab, video_flags, video_ids)


def _validate(spark: SparkSession, cfg: Config, space: EmbeddingSpace, result: EmbedResult, plan: RunPlan,
              staged: _Staged, current: SpaceModel | None) -> ValidationOutcome:
    """Run every suite on the staged candidates; the outcome also goes into ``result``."""
    v = cfg.validation
    params = SuiteParams(dim=space.dim, norm_tolerance=v.norm_tolerance, max_reject_rate=v.max_reject_rate,
                         expected_rows=plan.frames_to_embed, drift_min_cosine=v.drift_min_cosine,
                         drift_min_share=v.drift_min_share, max_label_shift=v.max_label_shift,
                         max_input_reject_rate=v.max_input_reject_rate,
                         max_input_rejects_per_run=v.max_input_rejects_per_run)
    candidates = staged.candidates
    frame_checks = with_status_checks(with_score_checks(with_vector_checks(candidates)),
                                      input_statuses=INPUT_STATUSES)
    checks = {"input_rejects": (input_rejects(spark, result, plan, staged), input_rejects_suite(params))}
    if staged.video_flags is not None:
        checks[VIDEO_FLAGS.name] = (staged.video_flags, video_flags_suite(params))
    reference = drift_reference(space, current)
    if reference is not None:
        log.info("checking drift against the current space %s", reference)
        ref_rows = in_space_id(spark, cfg, reference)
        frame_checks = with_drift_cosine(frame_checks, ref_rows)
        checks["label_drift"] = (label_shift(candidates, ref_rows), drift_suite(params))
    report_dir = cfg.storage.reports_dir / result.run_id / "validation"
    outcome = validate_candidates({
        FRAME_EMBEDDINGS.name: (frame_checks, frame_embeddings_suite(params, tuple(frame_checks.columns))),
        VIDEO_EMBEDDINGS.name: (with_vector_checks(staged.video_emb), video_embeddings_suite(params)),
        VIDEO_LABELS.name: (staged.video_lab, video_labels_suite(params)),
        **checks,
    }, report_dir, driver_max_rows=v.driver_max_rows)
    result.validation, result.report_dir = outcome, str(report_dir)
    return outcome


def input_rejects(spark: SparkSession, result: EmbedResult, plan: RunPlan, staged: _Staged) -> DataFrame:
    """One row: the share of the space's frame rows that will be bad input after this publish
    (``space_bad_input_share``; the published rows of unaffected videos plus the affected videos'
    next state) and this run's new bad-input frames (``run_bad_input``). Warns when every new
    frame of the run is bad input: those are published as status rows, the run succeeds."""
    bad = F.col("status").isin(sorted(INPUT_STATUSES))
    state = staged.state.agg(F.count(F.lit(1)).alias("n"), F.count(F.when(bad, 1)).alias("bad")).first()
    affected = [plan.per_video.get(v, (0, 0)) for v in staged.video_ids]
    total = plan.published_frames - sum(a[0] for a in affected) + int(state["n"])
    bad_total = plan.published_bad_input - sum(a[1] for a in affected) + int(state["bad"])
    run_bad = sum(n for status, n in result.status_counts.items() if status in INPUT_STATUSES)
    if run_bad and run_bad == result.frames_embedded:
        message = (f"all {run_bad} new frames of this run are bad input "
                   f"({', '.join(sorted(s for s in result.status_counts if s in INPUT_STATUSES))}): published as "
                   f"status rows; the space's share of bad input is {bad_total}/{max(total, 1)}")
        log.warning(message)
        result.warnings.append(message)
    return spark.createDataFrame(
        [(total, bad_total, bad_total / total if total else 0.0, run_bad)],
        "space_frames long, space_bad_input long, space_bad_input_share double, run_bad_input long")


class _StageClock:
    """Seconds spent in each stage of a run, into ``result.stage_seconds``."""

    def __init__(self, result: EmbedResult, start: float) -> None:
        self.result, self.last = result, start

    def lap(self, stage: str) -> None:
        now = time.monotonic()
        self.result.stage_seconds[stage] = now - self.last
        self.last = now


def in_space_id(spark: SparkSession, cfg: Config, space_id: str) -> DataFrame:
    """Published frame embeddings of one space."""
    return (spark.table(cfg.storage.qualified(FRAME_EMBEDDINGS.name))
            .where(F.col("embedding_space") == space_id))


def drift_reference(space: EmbeddingSpace, current: SpaceModel | None) -> str | None:
    """The current space, when it is another version of the same registered model with the same
    dimension (vectors of unrelated models are not comparable); else None."""
    if current is None or current.space == space.id:
        return None
    return current.space if (current.model_name, current.dim) == (space.model_name, space.dim) else None


def _versions(spark: SparkSession, cfg: Config) -> dict[str, int]:
    return {t.name: delta_writer.table_version(spark, cfg.storage, t.name) for t in PUBLISHED_TABLES}
