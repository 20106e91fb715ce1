"""The nearest videos (or frames) to one video, frame or image, within one embedding space.

    catalogfs similar --video-id cat_chelsea [--space SPACE] [-k 10] [--json]
    catalogfs similar --level frame --video-id cat_chelsea --frame-ts 1000
    catalogfs similar --image photo.jpg [--level frame]
    catalogfs similar --video-id cat_chelsea --exact

Searches the space's current ANN index (``catalogfs index build``); ``--exact`` (or a space
without an index) searches exactly, by a Spark job over the table. ``--image`` embeds the file
with the space's own model version first.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

from catalogfs.config import Config
from catalogfs.errors import InputError
from catalogfs.jobs.job_main import run_main
from catalogfs.features.similarity import similar


def run(spark, cfg: Config, *, video_id: str | None = None, image: str | None = None, level: str = "video",
        frame_ts: int | None = None, space: str | None = None, k: int = 10, exact: bool = False,
        as_json: bool = False):
    key = None
    if video_id is not None:
        if level == "frame" and frame_ts is None:
            raise InputError("--level frame with --video-id needs --frame-ts (the frame's time in ms)")
        key = (video_id,) if level == "video" else (video_id, int(frame_ts))
    data = None
    if image is not None:
        path = Path(image)
        if not path.is_file():
            raise InputError(f"--image {image}: no such file")
        data = path.read_bytes()
    result = similar(spark, cfg, level=level, key=key, image=data, space=space, k=k, exact=exact)  # exit 4
    return (video_id if image is None else image), result, as_json


def print_result(result, cfg: Config) -> None:
    query, found, as_json = result
    if as_json:
        print(json.dumps({"query": query, "video_id": query, "embedding_space": found.space, "level": found.level,
                          "search": found.search, "neighbours": found.hits}, default=str))
        return
    print(f"nearest {found.level}s to {query} in {found.space} ({found.search}):")
    for hit in found.hits:
        where = hit["video_id"] + (f" @ {hit['frame_ts_ms']} ms" if "frame_ts_ms" in hit else "")
        print(f"  {hit['rank']:>3}. {where:<40} {hit['score']:.4f}")


def _arguments(parser) -> None:
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--video-id", help="query by a stored video (or, with --frame-ts, frame)")
    query.add_argument("--image", help="query by an image file, embedded with the space's model")
    parser.add_argument("--level", choices=["video", "frame"], default="video", help="search videos or frames")
    parser.add_argument("--frame-ts", type=int, default=None, help="the frame's time in ms (--level frame)")
    parser.add_argument("--space", default=None, help="embedding space id (default: the current space)")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--exact", action="store_true", help="exact search (a Spark job) instead of the index")
    parser.add_argument("--json", dest="as_json", action="store_true")


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, argv, prog="catalogfs similar", description=__doc__, report=print_result,
                    configure=_arguments)


if __name__ == "__main__":
    sys.exit(main())
