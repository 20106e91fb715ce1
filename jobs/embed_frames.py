"""Job: frames → frame_embeddings, video_embeddings, video_labels (validated, then published).

    spark-submit jobs/embed_frames.py --conf conf/local.yaml
    catalogfs embed

The model is ``models:/<model.name>@<model.alias>`` from the MLflow registry (the serving alias),
or ``--model NAME@ALIAS|NAME/VERSION`` for a backfill in shadow; resolved once here on the driver,
strictly (a name, alias or version that does not exist is exit code 4, naming what does); every
row written names the concrete version.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Sequence

from catalogfs import failpoints
from catalogfs.config import Config
from catalogfs.jobs.run_report import write_run_report
from catalogfs.errors import ConfigError, InputError, ValidationFailed
from catalogfs.jobs.job_main import run_main
from catalogfs.tracking import job_run
from catalogfs.features.embedding_run import EmbedResult, run_embedding
from catalogfs.features.tables import FRAMES
from catalogfs.udfs.model_registry import ModelRef, ensure_default_model, resolve_model
from catalogfs.statuses import Status

log = logging.getLogger(__name__)


def run(spark, cfg: Config, *, model: str | None = None, full_plan: bool = False) -> EmbedResult:
    """Embed new frames with the serving model ``model.name@model.alias`` (the scheduled run: its
    space becomes current once published, see :func:`features.embedding_run.settle_current`), or
    with ``model`` (``NAME@ALIAS`` or ``NAME/VERSION``: a backfill in shadow, never made current).
    ``full_plan``: look at every video, not only those whose frames changed since the last run."""
    import mlflow
    from mlflow import MlflowClient

    if model:
        try:
            ref = ModelRef.parse(model)
        except ValueError as exc:
            raise ConfigError(f"--model {exc}") from None
    else:
        ref = ModelRef(cfg.model.name, alias=cfg.model.alias)

    if not spark.catalog.tableExists(cfg.storage.qualified(FRAMES.name)):
        raise InputError(f"table {cfg.storage.qualified(FRAMES.name)} does not exist: "
                         f"run `catalogfs extract-frames` first")
    with job_run(cfg, "embed_frames") as run_info:
        failpoints.phase("embed.model")
        client = MlflowClient()
        if not model and cfg.model.register_default:  # the bundled default, only under the configured name
            ensure_default_model(client, cfg.model.name, cfg.model.alias,
                                 experiment_id=run_info.info.experiment_id)
        resolved = resolve_model(client, ref, cache_dir=cfg.storage.model_cache_dir)
        log.info("resolved %s to version %s", ref, resolved.version)
        mlflow.set_tags({"model.name": resolved.name, "model.version": resolved.version,
                         "embedding_space": f"{resolved.name}@{resolved.version}"})
        try:
            result = run_embedding(spark, cfg, resolved, run_id=run_info.info.run_id, serve=not model,
                                   full_plan=full_plan)
        except ValidationFailed as exc:
            mlflow.set_tag("validation", "failed")
            mlflow.log_artifacts(exc.report_dir, artifact_path="validation")
            raise
        failpoints.phase("embed.report")
        result.report_html = str(write_run_report(spark, cfg, result))
        mlflow.log_artifacts(str(Path(result.report_html).parent), artifact_path="report")
        mlflow.set_tag("embedding_space", result.space.id)
        mlflow.set_tag("current_space", str(result.current_space))
        mlflow.log_metrics({
            "frames_total": result.frames_total, "frames_embedded": result.frames_embedded,
            "forward_passes": result.forward_passes, "frames_per_second": result.frames_per_second,
            "reject_rate": _reject_rate(result), "model_loads": result.model_loads,
            **{f"seconds_{stage}": seconds for stage, seconds in result.stage_seconds.items()},
        })
        for table, version in result.table_versions.items():
            mlflow.set_tag(f"delta.{table}.version", str(version))
        if result.report_dir:
            mlflow.set_tag("validation", "passed")
    return result


def _reject_rate(result: EmbedResult) -> float:
    total = sum(result.status_counts.values())
    return 0.0 if total == 0 else 1 - result.status_counts.get(Status.OK, 0) / total


def print_result(result: EmbedResult, cfg: Config) -> None:
    statuses = ", ".join(f"{k}={v}" for k, v in sorted(result.status_counts.items())) or "none"
    print(f"embed_frames: space {result.space.id}: {result.frames_embedded} frames embedded "
          f"({statuses}) in {result.forward_passes} forward passes, "
          f"{result.frames_per_second:.1f} frames/s; "
          + ("published" if result.published else "nothing new to publish")
          + f"; table versions {result.table_versions}")
    if not result.is_current:
        print(f"embed_frames: space {result.space.id} is in shadow (current space: "
              f"{result.current_space or 'none'}): consumers do not read it until "
              f"`catalogfs spaces promote {result.space.id}`")
    for run in result.recovered_runs:
        print(f"embed_frames: recovered the lineage of run {run}, which stopped before writing it")
    for warning in result.warnings:
        print(f"embed_frames: warning: {warning}")
    print(f"embed_frames: run report: {result.report_html}")
    if result.report_dir:
        print(f"embed_frames: validation {result.validation.summary}; report: {result.report_dir}")
        if result.validation.data_docs:
            print(f"embed_frames: Data Docs: {result.validation.data_docs}")


def _arguments(parser) -> None:
    parser.add_argument("--model", default=None, metavar="NAME@ALIAS|NAME/VERSION",
                        help="registered model to use instead of the serving model.name@model.alias: a "
                             "backfill beside the current space (shadow), e.g. clip_b32@challenger or clip_b32/2")
    parser.add_argument("--full-plan", action="store_true",
                        help="plan over every video instead of only those whose frames changed since the "
                             "space's last run (after restoring a table by hand; slower on a large catalogue)")


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, argv, prog="embed_frames", description=__doc__, report=print_result,
                    configure=_arguments)


if __name__ == "__main__":
    sys.exit(main())
