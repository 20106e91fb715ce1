"""Job: frames → frame_embeddings, video_embeddings, video_labels (validated, then published).

    spark-submit jobs/embed_frames.py --conf conf/local.yaml
    catalogfs embed

The model is ``models:/<model.name>@<model.alias>`` from the MLflow registry, resolved once here
on the driver; every row written names the concrete version.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Sequence

from catalogfs.config import Config, ConfigError
from catalogfs.run_report import write_run_report
from catalogfs.job_main import InputError, run_main
from catalogfs.tracking import job_run
from features.embedding_run import EmbedResult, ValidationFailed, run_embedding
from features.tables import FRAMES
from udfs.model_registry import ensure_default_model, resolve_model

log = logging.getLogger(__name__)


def run(spark, cfg: Config, *, model: str | None = None) -> EmbedResult:
    """Embed new frames with ``model`` (``NAME@ALIAS``; default: model.name@model.alias)."""
    import mlflow
    from mlflow import MlflowClient

    if model:
        name, sep, alias = model.removeprefix("models:/").partition("@")
        if not sep or not name or not alias:
            raise ConfigError(f"--model {model!r}: expected NAME@ALIAS")
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"name": name, "alias": alias})})

    if not spark.catalog.tableExists(cfg.storage.qualified(FRAMES.name)):
        raise InputError(f"table {cfg.storage.qualified(FRAMES.name)} does not exist: "
                         f"run `catalogfs extract-frames` first")
    with job_run(cfg, "embed_frames") as run_info:
        client = MlflowClient()
        if cfg.model.register_default:
            ensure_default_model(client, cfg.model.name, cfg.model.alias,
                                 experiment_id=run_info.info.experiment_id)
        model = resolve_model(client, cfg.model.name, cfg.model.alias,
                              cache_dir=cfg.storage.model_cache_dir)
        log.info("resolved %s to version %s", cfg.model.uri, model.version)
        mlflow.set_tags({"model.name": model.name, "model.version": model.version,
                         "embedding_space": f"{model.name}@{model.version}"})
        try:
            result = run_embedding(spark, cfg, model, run_id=run_info.info.run_id)
        except ValidationFailed as exc:
            mlflow.set_tag("validation", "failed")
            mlflow.log_artifacts(exc.report_dir, artifact_path="validation")
            raise
        result.report_html = str(write_run_report(spark, cfg, result))
        mlflow.log_artifacts(str(Path(result.report_html).parent), artifact_path="report")
        mlflow.set_tag("embedding_space", result.space.id)
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
    return 0.0 if total == 0 else 1 - result.status_counts.get("ok", 0) / total


def print_result(result: EmbedResult, cfg: Config) -> None:
    statuses = ", ".join(f"{k}={v}" for k, v in sorted(result.status_counts.items())) or "none"
    print(f"embed_frames: space {result.space.id}: {result.frames_embedded} frames embedded "
          f"({statuses}) in {result.forward_passes} forward passes, "
          f"{result.frames_per_second:.1f} frames/s; "
          + ("published" if result.published else "nothing new to publish")
          + f"; table versions {result.table_versions}")
    print(f"embed_frames: run report: {result.report_html}")
    if result.report_dir:
        print(f"embed_frames: validation {result.validation.summary}; report: {result.report_dir}")
        if result.validation.data_docs:
            print(f"embed_frames: Data Docs: {result.validation.data_docs}")


def _arguments(parser) -> None:
    parser.add_argument("--model", default=None, metavar="NAME@ALIAS",
                        help="registered model to use instead of model.name@model.alias "
                             "(e.g. a challenger backfilled beside the current space)")


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, argv, prog="embed_frames", description=__doc__, report=print_result,
                    configure=_arguments)


if __name__ == "__main__":
    sys.exit(main())
