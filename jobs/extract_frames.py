"""Job: videos → the ``frames`` Delta table.

    spark-submit jobs/extract_frames.py --conf conf/local.yaml [--input DIR_OR_GLOB]
    catalogfs extract-frames [--input DIR_OR_GLOB]
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Sequence

from catalogfs.config import Config
from catalogfs.job_main import InputError, run_main
from catalogfs.tracking import job_run
from features import delta_writer
from features.frames import FramesPublish, frames_dataframe, publish_frames
from features.tables import FRAMES
from features.video_frames import ExtractOptions, list_videos

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractResult:
    run_id: str
    input: str
    publish: FramesPublish


def run(spark, cfg: Config, *, input: str | None = None) -> ExtractResult:
    """Decode every video under ``input`` (default: the configured input) into ``frames``."""
    import mlflow

    pattern = input or cfg.input_pattern
    try:
        videos = list_videos(pattern) if pattern else []
    except ValueError as exc:  # two files map to one video id
        raise InputError(str(exc)) from exc
    if not videos:
        raise InputError(f"no videos found at {pattern!r} (extract.input); "
                         f"run `catalogfs make-samples` or point --input at a folder of videos")
    ex = cfg.extract
    options = ExtractOptions(sample_fps=ex.sample_fps, max_side=ex.max_side,
                             jpeg_quality=ex.jpeg_quality, max_frames=ex.max_frames_per_video)
    delta_writer.ensure_catalog(spark, cfg.storage, log_retention_days=cfg.retention.log_retention_days)
    with job_run(cfg, "extract_frames") as run_info:
        run_id = run_info.info.run_id
        log.info("extracting frames from %d videos at %s frame/s", len(videos), ex.sample_fps)
        staging = cfg.storage.staging_dir / run_id / FRAMES.name
        staged = delta_writer.write_staging(frames_dataframe(spark, videos, options), staging)
        published = publish_frames(spark, cfg.storage, staged, [v for v, _ in videos], run_id=run_id)
        delta_writer.drop_staging(staging.parent)
        mlflow.log_metrics({"videos": published.videos, "frames_ok": published.frames,
                            "rows_changed": published.changed_rows})
        mlflow.set_tag("delta.frames.version", str(published.table_version))
    return ExtractResult(run_id=run_id, input=pattern, publish=published)


def print_result(result: ExtractResult, cfg: Config) -> None:
    p = result.publish
    statuses = ", ".join(f"{k}={v}" for k, v in sorted(p.status_counts.items()))
    print(f"extract_frames: {p.videos} videos → {p.frames} ok frames ({statuses}); "
          f"{p.changed_rows} rows changed; {cfg.storage.qualified(FRAMES.name)} is at version {p.table_version}")


def _arguments(parser) -> None:
    parser.add_argument("--input", default=None, help="folder or glob of videos (default: extract.input)")


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, argv, prog="extract_frames", description=__doc__, report=print_result,
                    configure=_arguments)


if __name__ == "__main__":
    sys.exit(main())
