"""Job: videos → the ``frames`` Delta table.

    spark-submit jobs/extract_frames.py --conf conf/local.yaml [--input DIR_OR_GLOB | --manifest CSV] [--replace]
    catalogfs extract-frames [--input DIR_OR_GLOB | --manifest CSV] [--replace]

A video's id is its path relative to the input folder, without the extension (or the id a
manifest gives it). An id that the frames table already holds from another file is refused
(exit 4) unless --replace says to take the new file for it.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Sequence

from catalogfs import failpoints
from catalogfs.config import Config
from catalogfs.errors import ConfigError, InputError
from catalogfs.jobs.job_main import run_main
from catalogfs.tracking import job_run
from catalogfs.features import delta_writer
from catalogfs.features.frames import FramesPublish, SourceConflict, frames_dataframe, publish_frames, source_conflicts
from catalogfs.features.staging_lock import claim_staging, sweep_dead_runs
from catalogfs.features.tables import FRAMES
from catalogfs.features.video_frames import ExtractOptions, SkippedFiles, VideoListing, read_manifest, scan_videos

log = logging.getLogger(__name__)
_SHOWN_CONFLICTS = 3


@dataclass(frozen=True)
class ExtractResult:
    run_id: str
    input: str
    publish: FramesPublish
    skipped: SkippedFiles = SkippedFiles()  # input files not taken (extension, hidden, partial)


def extract_options(cfg: Config) -> ExtractOptions:
    """The ``extract.*`` settings a worker needs to decode one video."""
    ex = cfg.extract
    return ExtractOptions(sample_fps=ex.sample_fps, max_side=ex.max_side, jpeg_quality=ex.jpeg_quality,
                          max_frames=ex.max_frames_per_video, max_video_pixels=ex.max_video_pixels,
                          max_video_seconds=ex.max_video_seconds)


def _inputs(cfg: Config, input: str | None, manifest: str | None) -> tuple[str, VideoListing]:
    """(what was read, its videos and skipped files): a manifest, or a folder / glob / file."""
    if input and manifest:
        raise ConfigError("--input and --manifest exclude each other: give one")
    source = manifest or input or cfg.input_pattern
    try:
        if manifest:
            return source, VideoListing(videos=tuple(read_manifest(manifest)))
        return source, scan_videos(source, cfg.extract.extensions) if source else VideoListing(videos=())
    except ValueError as exc:  # two files map to one video id, a bad name, a bad manifest
        raise InputError(str(exc)) from exc


def _conflict_message(conflicts: Sequence[SourceConflict], table: str) -> str:
    """One line: which ids the table holds from other files, and what to do about it."""
    if len(conflicts) == 1:
        c = conflicts[0]
        return (f"video id {c.video_id!r} is already in {table} from {c.table_uri}, not from {c.input_uri}; "
                f"nothing written: pass --replace to take the new file for this id (e.g. a moved file), "
                f"or give it another id (a --manifest)")
    shown = ", ".join(f"{c.video_id!r} ({c.table_uri} → {c.input_uri})" for c in conflicts[:_SHOWN_CONFLICTS])
    more = f" and {len(conflicts) - _SHOWN_CONFLICTS} more" if len(conflicts) > _SHOWN_CONFLICTS else ""
    return (f"{len(conflicts)} video ids are already in {table} from other files: {shown}{more}; "
            f"nothing written: pass --replace to take the new files for these ids (e.g. moved files), "
            f"or give them other ids (a --manifest)")


def _check_sources(spark, cfg: Config, videos: Sequence[tuple[str, str]], replace: bool) -> None:
    """Refuse (InputError) ids the table holds from another file, unless ``replace``."""
    conflicts = source_conflicts(spark, cfg.storage, videos)
    if conflicts and not replace:
        raise InputError(_conflict_message(conflicts, cfg.storage.qualified(FRAMES.name)))
    for c in conflicts:
        log.warning("--replace: video id %r now comes from %s (was %s)", c.video_id, c.input_uri, c.table_uri)


def run(spark, cfg: Config, *, input: str | None = None, manifest: str | None = None,
        replace: bool = False) -> ExtractResult:
    """Decode every video under ``input`` (default: the configured input), or listed in
    ``manifest``, into ``frames``; ``replace``: accept new files for ids the table already has."""
    import mlflow

    failpoints.phase("extract.scan")
    source, listing = _inputs(cfg, input, manifest)
    videos, skipped = list(listing.videos), listing.skipped
    if skipped.count:
        log.warning("%s", skipped.describe())
    if not videos:
        where = f"in manifest {source}" if manifest else f"at {source!r} (extract.input)"
        if skipped.count:
            raise InputError(f"no videos found {where}: {skipped.describe()}; "
                             f"widen extract.extensions or point --input at a folder of videos")
        raise InputError(f"no videos found {where}; "
                         f"run `catalogfs make-samples` or point --input at a folder of videos")
    options = extract_options(cfg)
    delta_writer.ensure_catalog(spark, cfg.storage, log_retention_days=cfg.retention.log_retention_days)
    _check_sources(spark, cfg, videos, replace)
    with job_run(cfg, "extract_frames") as run_info:
        run_id = run_info.info.run_id
        log.info("extracting frames from %d videos at %s frame/s", len(videos), options.sample_fps)
        sweep_dead_runs(cfg.storage.staging_dir)
        staging = claim_staging(cfg.storage.staging_dir, run_id) / FRAMES.name
        failpoints.phase("extract.decode")
        staged = delta_writer.write_staging(frames_dataframe(spark, videos, options), staging)
        failpoints.phase("extract.merge")
        published = publish_frames(spark, cfg.storage, staged, [v for v, _ in videos], run_id=run_id)
        delta_writer.drop_staging(staging.parent)
        mlflow.log_metrics({"videos": published.videos, "frames_ok": published.frames,
                            "rows_changed": published.changed_rows, "files_skipped": skipped.count})
        mlflow.set_tag("delta.frames.version", str(published.table_version))
    return ExtractResult(run_id=run_id, input=source, publish=published, skipped=skipped)


def print_result(result: ExtractResult, cfg: Config) -> None:
    p = result.publish
    statuses = ", ".join(f"{k}={v}" for k, v in sorted(p.status_counts.items()))
    skipped = f"; {result.skipped.describe()}" if result.skipped.count else ""
    print(f"extract_frames: {p.videos} videos → {p.frames} ok frames ({statuses}); "
          f"{p.changed_rows} rows changed; {cfg.storage.qualified(FRAMES.name)} is at version {p.table_version}"
          f"{skipped}")


def _arguments(parser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--input", default=None, help="folder or glob of videos (default: extract.input)")
    source.add_argument("--manifest", default=None, metavar="FILE.csv",
                        help="CSV with a header video_id,uri: your own ids (uri relative to the CSV's folder)")
    parser.add_argument("--replace", action="store_true",
                        help="take the input's file for a video id the frames table has from another file")


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, argv, prog="extract_frames", description=__doc__, report=print_result,
                    configure=_arguments)


if __name__ == "__main__":
    sys.exit(main())
