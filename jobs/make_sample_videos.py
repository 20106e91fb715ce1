"""Job: write the sample videos (real photos from scikit-image / scikit-learn, slow pan or zoom).

    python jobs/make_sample_videos.py [--output DIR] [--overwrite]
    catalogfs make-samples

Needs no Spark. Also writes one truncated file (``corrupt_upload.mp4``) unless --no-corrupt, to
show how a bad upload is recorded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from catalogfs.config import Config
from catalogfs.errors import EXIT_OK
from catalogfs.jobs.job_main import add_common_arguments, parse_and_load
from catalogfs.jobs.samples import make_sample_videos, write_corrupt_sample


def run(cfg: Config, *, output: Path | None = None, overwrite: bool = False,
        corrupt: bool = True) -> list[Path]:
    out = output or cfg.storage.samples_dir
    s = cfg.samples
    paths = make_sample_videos(out, seconds=s.seconds, fps=s.fps, width=s.width, height=s.height,
                               overwrite=overwrite)
    if corrupt:
        paths.append(write_corrupt_sample(out, source=paths[0]))
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make_sample_videos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--output", type=Path, default=None, help="folder (default: <data_root>/samples)")
    parser.add_argument("--overwrite", action="store_true", help="re-encode videos that exist")
    parser.add_argument("--no-corrupt", dest="corrupt", action="store_false",
                        help="do not write the truncated corrupt_upload.mp4")
    parsed = parse_and_load(parser, argv, "make_sample_videos")
    if isinstance(parsed, int):
        return parsed
    args, cfg = parsed
    paths = run(cfg, output=args.output, overwrite=args.overwrite, corrupt=args.corrupt)
    print(f"make_sample_videos: {len(paths)} videos in {paths[0].parent}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
