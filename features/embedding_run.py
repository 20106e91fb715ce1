"""Frames → candidate features → validation → publish, for one resolved model version.

Write-audit-publish, one unit per step, each its own module:

1. **Plan** (:mod:`features.run_plan`): frames whose (key, content hash) has no row in the target
   embedding space, and videos whose rows need refreshing — one Spark job, over the videos whose
   frames changed since the space's last complete run (its lineage row records the ``frames``
   version it planned on) or over every video when that cannot be shown.
2. **Stage** (:mod:`features.staging`): those frames go through the embed UDF into a staging
   folder; video embeddings, labels and flags are recomputed for the videos they belong to (from
   the candidates plus the unchanged published frames).
3. **Audit** (:mod:`features.audit`): the Great Expectations suites run on the staged rows.
4. **Publish** (:mod:`features.publish`): only if every suite passed, one MERGE per published
   table. A failed audit leaves the published tables untouched.
5. **Lineage** (:mod:`features.lineage`): a row in ``feature_versions`` either way, then the space
   becomes current when it should (:func:`settle_current`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

from pyspark.sql import SparkSession

from catalogfs import failpoints
from catalogfs.config import Config
from catalogfs.errors import PublishSkipped, ValidationFailed
from catalogfs.statuses import RunStatus
from catalogfs.expectations.runner import ValidationOutcome
from catalogfs.features import delta_writer
from catalogfs.features.audit import Audit, audit_staged
from catalogfs.features.history import history_behind, sync_after_publish
from catalogfs.features.lineage import (Attempt, changed_outside_runs, history_too_long, last_checkpoint, recent_commits,
                              record_lineage, repair_lineage)
from catalogfs.features.promotion import SpaceModel, current_space, promote, published_spaces, refresh_current_views, space_model
from catalogfs.features.publish import publish_staged
from catalogfs.features.run_plan import PlanScope, RunPlan, SpaceTables, plan_run, plan_scope
from catalogfs.features.spaces import EmbeddingSpace
from catalogfs.features.staging import Staged, stage_run
from catalogfs.features.staging_lock import claim_staging, sweep_dead_runs
from catalogfs.features.tables import PUBLISHED_TABLES
from catalogfs.features.taxonomies import active_taxonomy
from catalogfs.udfs.flags import Taxonomy
from catalogfs.udfs.model_registry import ResolvedModel

log = logging.getLogger(__name__)


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
    plan_scope: str = ""  # where the plan looked, and why (incremental or full)

    def take_stage(self, staged: Staged) -> None:
        stats = staged.stats
        self.frames_embedded, self.forward_passes, self.model_loads = (stats.frames_embedded, stats.forward_passes,
                                                                       stats.model_loads)
        self.embed_seconds, self.status_counts = stats.embed_seconds, dict(stats.status_counts)
        self.videos_updated = list(staged.video_ids)

    def take_audit(self, audit: Audit) -> None:
        self.validation, self.report_dir = audit.outcome, str(audit.report_dir)
        self.warnings.extend(audit.warnings)

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


def run_embedding(spark: SparkSession, cfg: Config, model: ResolvedModel, *, run_id: str,
                  serve: bool = True, full_plan: bool = False) -> EmbedResult:
    """Embed what is new in ``frames`` into ``model``'s space, audit it, publish it. See module doc.

    Removal policy: published rows mirror ``frames``. Rows of frames that left ``frames`` (a
    re-extraction at another rate, a deleted video) are deleted from this space at the next run,
    together with the video-level rows of videos that have no ok frame left.

    ``serve``: the model is the catalogue's serving model (``model.name@model.alias``, the
    scheduled run), so once its space is published it becomes current when no space is, or when
    the current space is another version of the same model (the alias was moved by a promote). A
    ``--model`` backfill (``serve=False``) never changes what consumers read. Every run first
    repairs what a killed run left: lineage rows of runs that committed but never recorded it
    (:func:`features.lineage.repair_lineage`) and a promotion that did not happen. ``full_plan``:
    plan every video, not only what changed (:func:`choose_scope`).
    """
    space, flags, taxonomy, taxonomy_warning = space_labels(spark, cfg, model)
    result = EmbedResult(run_id=run_id, space=space, warnings=[taxonomy_warning] if taxonomy_warning else [])
    started, clock = datetime.now(timezone.utc), _StageClock(result)
    tables, plan = prepare_run(spark, cfg, space, result, with_flags=bool(flags), full_plan=full_plan)
    current = current_space_model(spark, cfg)
    if plan.nothing_to_do:
        log.info("every frame already has an embedding in space %s: nothing to compute", space.id)
        result.current_space = settle_current(spark, cfg.storage, space, current, serve=serve, run_id=run_id)
        if cfg.publish.sync_history and history_behind(spark, cfg.storage, tables.versions.get("video_embeddings")):
            result.warnings.extend(sync_after_publish(spark, cfg.storage))  # a dead run's publish, never synced
        result.table_versions = _versions(tables)
        clock.lap("plan")
        return clock.done()
    clock.lap("plan")

    staging = claim_staging(cfg.storage.staging_dir, run_id)
    staged = stage_run(spark, cfg, model, space, plan, tables, flags, run_id=run_id, started=started, staging=staging,
                       taxonomy=taxonomy)
    result.take_stage(staged)
    clock.lap("stage", embedded=staged.stats.embed_seconds)
    failpoints.reached("after_staging")

    audit = audit_staged(spark, cfg, space, plan, staged, current, report_dir=cfg.storage.reports_dir / run_id / "validation")
    result.take_audit(audit)
    clock.lap("validate")

    attempt = publish_audited(spark, cfg, space, plan, staged, audit, run_id=run_id, started=started,
                              since=_versions(tables))
    result.published = attempt.status == RunStatus.PUBLISHED
    result.written_versions = dict(attempt.table_versions)
    result.table_versions = {**_versions(tables), **result.written_versions}
    clock.lap("publish")

    failpoints.reached("before_lineage")
    record_lineage(spark, cfg, space, attempt, started=started)
    result.current_space = settle_current(spark, cfg.storage, space, current, serve=serve, run_id=run_id)
    if result.published and cfg.publish.sync_history:  # point-in-time history (features/history.py)
        result.warnings.extend(sync_after_publish(spark, cfg.storage))
    delta_writer.drop_staging(staging)
    clock.lap("lineage")
    log.info("run %s stage seconds: %s", run_id, result.stage_summary)
    if not audit.outcome.success:
        raise ValidationFailed(audit.outcome, str(audit.report_dir))
    return clock.done()


def prepare_run(spark: SparkSession, cfg: Config, space: EmbeddingSpace, result: EmbedResult, *,
                with_flags: bool, full_plan: bool = False) -> tuple[SpaceTables, RunPlan]:
    """The catalogue checked, the tables pinned, the plan made (its scope and the frames total
    recorded in ``result``) and what killed runs left repaired: everything before the model runs."""
    sweep_dead_runs(cfg.storage.staging_dir)
    failpoints.phase("embed.plan")
    delta_writer.ensure_catalog(spark, cfg.storage, log_retention_days=cfg.retention.log_retention_days)
    refresh_current_views(spark, cfg.storage)  # a data root from an older version: new tables and columns
    tables = SpaceTables.read(spark, cfg.storage, space, with_flags=with_flags)
    result.frames_total = tables.frames.count()
    commits = recent_commits(spark, cfg)
    # first: a run killed after its MERGEs is recorded, so the plan counts its commits as a run's
    result.recovered_runs = repair_lineage(spark, cfg, space, run_id=result.run_id, recent=commits)
    plan = plan_run(tables, choose_scope(spark, cfg, space, tables, commits, full_plan=full_plan, result=result))
    result.plan_scope = plan.scope.reason
    return tables, plan


def choose_scope(spark: SparkSession, cfg: Config, space: EmbeddingSpace, tables: SpaceTables,
                 commits: dict[str, list[dict]], *, full_plan: bool = False,
                 result: EmbedResult | None = None) -> PlanScope:
    """Where the run's plan looks: the videos changed since the space's last complete run
    (:func:`features.run_plan.plan_scope`), or every video when asked (``full_plan``) or when that
    cannot be shown. ``commits``: the published tables' recent commits (:func:`recent_commits`).
    A commit that no run made (:func:`features.lineage.changed_outside_runs`) is a WARNING naming
    the table and version, also among ``result``'s warnings: the full plan restores what it lost."""
    if full_plan:
        scope = PlanScope(None, "full plan: asked for (--full-plan)")
    else:
        checkpoint = last_checkpoint(spark, cfg, space)
        unsafe = changed_outside_runs(spark, cfg, checkpoint, commits) if checkpoint else None
        if unsafe and not history_too_long(checkpoint, commits):  # a commit no run made: say so loudly
            warning = (f"space {space.id}: {unsafe}; its rows may have changed outside catalogfs: taking "
                       f"the full plan, which restores what was lost")
            log.warning("%s", warning)
            if result is not None:
                result.warnings.append(warning)
        scope = plan_scope(spark, cfg.storage, tables, since=checkpoint.frames_version if checkpoint else None,
                           unsafe=unsafe)
    log.info("space %s: %s", space.id, scope.reason)
    return scope


def publish_audited(spark: SparkSession, cfg: Config, space: EmbeddingSpace, plan: RunPlan, staged: Staged,
                    audit: Audit, *, run_id: str, started: datetime, since: dict[str, int] | None = None) -> Attempt:
    """Publish ``staged`` if its audit passed; returns what the lineage row records: ``rejected``
    (nothing written) or ``published`` with this run's commits. A publish that Delta skipped is
    recorded as ``skipped`` here and raised (:class:`PublishSkipped`). ``since``: table → a version
    older than this run's commits (the plan's), where the search for them in the history starts."""
    outcome = audit.outcome
    attempt = Attempt(run_id=run_id, status=RunStatus.REJECTED, table_versions={},
                      frames_embedded=staged.stats.frames_embedded, validation_success=outcome.success,
                      frames_version=plan.frames_version,
                      validation_report=str(audit.report_dir),
                      failed_expectations=None if outcome.success else outcome.failures)
    if not outcome.success:
        return attempt
    failpoints.phase("embed.publish")
    try:
        written = publish_staged(spark, cfg, space, staged, run_id=run_id, started=started,
                                 first_publish=plan.published_frames == 0, since=since)
    except PublishSkipped as exc:
        skipped = replace(attempt, status=RunStatus.SKIPPED, table_versions=exc.written, note=str(exc)[:1000])
        record_lineage(spark, cfg, space, skipped, started=started)
        raise
    return replace(attempt, status=RunStatus.PUBLISHED, table_versions=written)


def space_labels(spark: SparkSession, cfg: Config, model: ResolvedModel
                 ) -> tuple[EmbeddingSpace, dict[str, float], Taxonomy | None, str | None]:
    """(space, flags, taxonomy, warning) of a run of ``model``: a relabelled CLIP-like space keeps
    its taxonomy (and its flags) for new frames, not the registered one (:mod:`features.taxonomies`)."""
    space = EmbeddingSpace.for_model(model)
    taxonomy, warning = active_taxonomy(spark, cfg.storage, space, model)
    if taxonomy is None:
        return space, model_flags(model), None, warning
    return replace(space, taxonomy_version=taxonomy.version), dict(taxonomy.flags), taxonomy, warning


def model_flags(model: ResolvedModel) -> dict[str, float]:
    """The model's flags (label → threshold); empty for models without flags."""
    return dict(model.spec.flags.thresholds)


def current_space_model(spark: SparkSession, cfg: Config) -> SpaceModel | None:
    """The current space and the model version that made it (None: no space is current)."""
    current = current_space(spark, cfg.storage)
    return space_model(spark, cfg.storage, current) if current else None


def settle_current(spark: SparkSession, storage, space: EmbeddingSpace, current: SpaceModel | None, *,
                   serve: bool, run_id: str) -> str | None:
    """Which space is current after a run, promoting this run's space when it is the serving
    model's and published, and either no space is current (the first publish, or one whose
    promotion a crash cut off) or the current space is another version of the same model (the
    serving alias was moved by ``catalogfs models promote``). A space of another model is never
    made current here: that takes ``catalogfs spaces promote``."""
    failpoints.phase("embed.views")
    if current is not None and (current.space == space.id or not serve or current.model_name != space.model_name):
        return current.space
    if not serve or space.id not in published_spaces(spark, storage):
        return None if current is None else current.space
    note = ("first published space" if current is None
            else f"serving alias moved from version {current.model_version} to {space.model_version}")
    failpoints.reached("before_views")
    promote(spark, storage, space.id, run_id=run_id, note=note)
    return space.id


class _StageClock:
    """Seconds spent in each stage of a run, into ``result.stage_seconds``; ``done`` sets the total."""

    def __init__(self, result: "EmbedResult") -> None:
        self.result = result
        self.start = self.last = time.monotonic()

    def lap(self, stage: str, *, embedded: float | None = None) -> None:
        """Close ``stage``; ``embedded``: seconds of it spent running the model, shown as ``embed``."""
        now = time.monotonic()
        if embedded is not None:
            self.result.stage_seconds["embed"] = embedded
        self.result.stage_seconds[stage] = now - self.last - (embedded or 0.0)
        self.last = now

    def done(self) -> "EmbedResult":
        self.result.seconds = time.monotonic() - self.start
        return self.result


def _versions(tables: SpaceTables) -> dict[str, int]:
    """The published tables' versions the run read (pinned at plan time)."""
    return {t.name: tables.versions[t.name] for t in PUBLISHED_TABLES}
