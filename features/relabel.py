"""Re-label a CLIP-like space from its stored vectors: a new taxonomy (or new flag thresholds)
without a single image forward pass, validated and published like any run.

1. **Resolve**: the space's model version (from its lineage) is resolved in the registry like a
   run's; a space whose labels do not come from text embeddings (a classifier, the default
   EfficientNet) is refused (:class:`catalogfs.errors.RelabelError`, exit 2).
2. **Score**: the taxonomy's text embeddings come from the model's text tower, on the driver
   (:func:`udfs.relabel.zero_shot_scorer`); the space's ok frame vectors are scored on the workers
   with the engine's own functions (:func:`udfs.spark_udf.make_relabel_udf`), so the labels equal
   those of a full re-embed with a model registered with the new taxonomy, to float rounding.
3. **Stage** (Parquet): the space's frame rows with only ``labels``, ``label_scores``, ``flags``,
   ``flag_scores`` and ``run_id`` rewritten (vectors, statuses, content hashes, ``computed_at`` —
   which dates the vector — unchanged), and every video's ``video_labels`` / ``video_flags`` rows
   from them (:mod:`features.pooling`), with the new ``taxonomy_version``.
4. **Audit**: the run's suites on those rows (:mod:`expectations.suites`); **publish** only if all
   pass: one MERGE per table with the run id in the commit metadata (:mod:`features.publish`;
   ``video_embeddings`` is not touched), so the next embed run's incremental plan counts the
   relabel's commits as a run's (:func:`features.lineage.changed_outside_runs`); **lineage**: a
   ``feature_versions`` row either way (note ``relabel: taxonomy <version>``, 0 frames embedded,
   no ``frames_version``: the next embed run still plans from the last embed run's).

Frame labels are rewritten with the video labels, so a consumer never reads frame labels of one
taxonomy beside video labels of another. The taxonomy is recorded (table ``taxonomies``) before the
publish, and later embed runs of the space label their new frames with it
(:mod:`features.taxonomies`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from catalogfs import failpoints
from catalogfs.config import Config
from catalogfs.errors import InputError, ValidationFailed
from catalogfs.statuses import RunStatus
from catalogfs.expectations.runner import ValidationOutcome, validate_candidates
from catalogfs.features import delta_writer
from catalogfs.features.audit import suite_params, table_checks
from catalogfs.features.lineage import Attempt, record_lineage
from catalogfs.features.pooling import PoolParams
from catalogfs.features.promotion import current_space, published_spaces, space_model
from catalogfs.features.publish import publish_with_retries
from catalogfs.features.run_plan import RunPlan, SpaceTables
from catalogfs.features.spaces import EmbeddingSpace
from catalogfs.features.staging import stage_rows
from catalogfs.features.staging_lock import claim_staging, sweep_dead_runs
from catalogfs.features.tables import FRAME_EMBEDDINGS, VIDEO_LABELS, run_tables
from catalogfs.features.taxonomies import check_taxonomy, record_taxonomy, relabelled_frames
from catalogfs.udfs.flags import load_taxonomy
from catalogfs.udfs.model_registry import ModelRef, ResolvedModel, local_bundle_dir, resolve_model
from catalogfs.udfs.relabel import ZeroShotScorer, require_zero_shot, zero_shot_scorer

log = logging.getLogger(__name__)

@dataclass
class RelabelResult:
    run_id: str
    space: EmbeddingSpace  # its taxonomy_version is the new taxonomy's
    previous_taxonomies: list[str] = field(default_factory=list)  # in the space's video_labels before
    frames_relabelled: int = 0
    videos_relabelled: int = 0
    videos_with_new_labels: int = 0  # videos whose ranked video labels differ from the published ones
    image_forward_passes: int = 0  # always 0: nothing runs the image tower
    validation: ValidationOutcome | None = None
    report_dir: str | None = None
    published: bool = False
    dry_run: bool = False
    table_versions: dict[str, int] = field(default_factory=dict)  # this run's own commits
    seconds: float = 0.0


@dataclass(frozen=True)
class RelabelStaged:
    """The relabel's rows, staged as Parquet: what the audit reads and the publish copies."""

    # table → its staged rows, in publish order (features.tables.run_tables(relabel=True)): every
    # frame row of the space with its labels rewritten, and the video rows derived from them (flag
    # rows empty when the taxonomy has no flags: the space's flag rows go)
    rows: dict[str, DataFrame]
    video_ids: list[str]
    frames_total: int
    frames_relabelled: int


def relabel_space(spark: SparkSession, cfg: Config, space: str | None, taxonomy_path: Path, *, run_id: str,
                  client, dry_run: bool = False) -> RelabelResult:
    """Re-label ``space`` (default: the current space) with the taxonomy file ``taxonomy_path``
    (see module doc). ``client``: an MLflow client of the registry. ``dry_run``: compute and
    validate, publish nothing and write no lineage row. Raises :class:`ValidationFailed` (exit 3)
    after recording a ``rejected`` lineage row when a suite fails: nothing is published then."""
    t0, started = time.monotonic(), datetime.now(timezone.utc)
    sweep_dead_runs(cfg.storage.staging_dir)
    failpoints.phase("relabel.score")
    taxonomy = load_taxonomy(Path(taxonomy_path))  # FlagsError: exit 2
    delta_writer.ensure_catalog(spark, cfg.storage, log_retention_days=cfg.retention.log_retention_days)
    model = space_registered_model(spark, cfg, space, client=client)
    target = replace(EmbeddingSpace.for_model(model), taxonomy_version=taxonomy.version)
    check_taxonomy(spark, cfg.storage, model, target.id, taxonomy)  # a version names one taxonomy: exit 2
    bundle = local_bundle_dir(model.source_uri, cfg.storage.model_cache_dir / model.name / model.version)
    scorer = zero_shot_scorer(bundle, taxonomy, top_k=cfg.inference.top_k, what=f"space {target.id}")
    tables = SpaceTables.read(spark, cfg.storage, target, with_flags=True)
    result = RelabelResult(run_id=run_id, space=target, dry_run=dry_run, previous_taxonomies=sorted(
        r["taxonomy_version"] for r in tables.video_labels.select("taxonomy_version").distinct().collect()))
    staging = claim_staging(cfg.storage.staging_dir, run_id)
    staged = stage_relabel(tables, scorer, target, cfg, run_id=run_id, started=started, staging=staging)
    if staged.frames_relabelled == 0:
        delta_writer.drop_staging(staging)
        raise InputError(f"space {target.id} has no ok frame vectors to re-label: run `catalogfs embed` first")
    result.frames_relabelled, result.videos_relabelled = staged.frames_relabelled, len(staged.video_ids)
    result.videos_with_new_labels = videos_with_new_labels(tables.video_labels, staged.rows[VIDEO_LABELS.name])
    report_dir = cfg.storage.reports_dir / run_id / "validation"
    result.validation, result.report_dir = audit_relabel(cfg, target, staged, report_dir=report_dir), str(report_dir)
    if not dry_run:
        if result.validation.success:  # what the new taxonomy_version means, for later embed runs
            record_taxonomy(spark, cfg.storage, model, target.id, taxonomy, run_id=run_id)
        attempt = publish_relabel(spark, cfg, target, staged, result, started=started,
                                  since={t.name: tables.versions[t.name] for t in run_tables(relabel=True)})
        record_lineage(spark, cfg, target, attempt, started=started)
    delta_writer.drop_staging(staging)
    result.seconds = time.monotonic() - t0
    if not result.validation.success:
        raise ValidationFailed(result.validation, str(report_dir))
    return result


def space_registered_model(spark: SparkSession, cfg: Config, space: str | None, *, client) -> ResolvedModel:
    """The registered model version that made ``space`` (default: the current space), resolved like
    a run's and checked to make that very space; refused unless it is CLIP-like (exit 2)."""
    storage = cfg.storage
    space_id = space or current_space(spark, storage)
    if space_id is None:
        raise InputError("no --space given and no space is current: run `catalogfs embed` first")
    owner = space_model(spark, storage, space_id)
    if owner is None:
        known = ", ".join(published_spaces(spark, storage)) or "none"
        raise InputError(f"space {space_id!r} has never been published; published spaces: {known}")
    model = resolve_model(client, ModelRef(owner.model_name, version=owner.model_version),
                          cache_dir=storage.model_cache_dir)  # ModelResolutionError: exit 4
    made = EmbeddingSpace.for_model(model).id
    if made != space_id:
        raise InputError(f"space {space_id!r}: its model models:/{model.name}/{model.version} now makes "
                         f"space {made!r} (its bundle changed in the registry); cannot re-label")
    require_zero_shot(model.spec, what=f"space {space_id}")
    return model


def stage_relabel(tables: SpaceTables, scorer: ZeroShotScorer, space: EmbeddingSpace, cfg: Config, *,
                  run_id: str, started: datetime, staging: Path) -> RelabelStaged:
    """Stage the space's relabelled frame rows, then its video labels and flags from them."""
    failpoints.phase("relabel.stage")
    frames = delta_writer.write_staging(relabelled_frames(tables.frame_embeddings, scorer, run_id=run_id),
                                        staging / FRAME_EMBEDDINGS.name)
    rows = stage_rows(frames, run_tables(relabel=True), PoolParams(cfg.labels.top_k_per_video, scorer.flags),
                      run_id=run_id, started=started, taxonomy_version=space.taxonomy_version, staging=staging)
    per_video = (frames.groupBy("video_id")
                 .agg(F.count(F.lit(1)).alias("n"), F.count(F.when(F.col("run_id") == run_id, 1)).alias("relabelled"))
                 .collect())
    return RelabelStaged(rows, sorted(r["video_id"] for r in per_video),
                         frames_total=sum(int(r["n"]) for r in per_video),
                         frames_relabelled=sum(int(r["relabelled"]) for r in per_video))


def videos_with_new_labels(published: DataFrame, staged: DataFrame) -> int:
    """Videos whose ranked labels (label by rank) differ between ``published`` and ``staged``."""
    def ranked(df: DataFrame, name: str) -> DataFrame:
        return df.groupBy("video_id").agg(F.array_sort(F.collect_list(F.struct("rank", "label"))).alias(name))

    both = ranked(published, "before").join(ranked(staged, "after"), "video_id", "full")
    return both.where(~F.col("before").eqNullSafe(F.col("after"))).count()


def audit_relabel(cfg: Config, space: EmbeddingSpace, staged: RelabelStaged, *, report_dir: Path) -> ValidationOutcome:
    """The run's suites on the relabelled rows: every frame row of the space (one row out per row
    in: vectors, scores in [0, 1], statuses), the video labels and the video flags."""
    failpoints.phase("relabel.audit")
    params = suite_params(cfg, space, RunPlan(frames_to_embed=staged.frames_total, orphan_videos=[], stale_videos=[]))
    return validate_candidates(table_checks(staged.rows, params), report_dir,
                               driver_max_rows=cfg.validation.driver_max_rows)


def publish_relabel(spark: SparkSession, cfg: Config, space: EmbeddingSpace, staged: RelabelStaged,
                    result: RelabelResult, *, started: datetime, since: dict[str, int]) -> Attempt:
    """Publish the staged rows if the audit passed (frame_embeddings, video_labels, video_flags;
    video_embeddings untouched); returns the lineage row's attempt (``published`` or ``rejected``)."""
    outcome = result.validation
    previous = ", ".join(result.previous_taxonomies) or "none"
    attempt = Attempt(run_id=result.run_id, status=RunStatus.REJECTED, table_versions={}, frames_embedded=0,
                      validation_success=outcome.success, validation_report=result.report_dir,
                      failed_expectations=None if outcome.success else outcome.failures,
                      note=f"relabel: taxonomy {space.taxonomy_version} (was {previous}); "
                           f"{staged.frames_relabelled} frames, {len(staged.video_ids)} videos, 0 image forward passes")
    if not outcome.success:
        return attempt
    failpoints.phase("relabel.publish")
    written = publish_with_retries(spark, cfg, space, staged.rows, staged.video_ids, run_id=result.run_id,
                                   txn_version=int(started.timestamp() * 1000), register=True, since=since)
    result.published, result.table_versions = True, dict(written)
    return replace(attempt, status=RunStatus.PUBLISHED, table_versions=written)
