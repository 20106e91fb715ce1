"""The nearest videos to one video by cosine, within one embedding space (exact).

    catalogfs similar --video-id cat_chelsea [--space SPACE] [-k 10] [--json]
"""

from __future__ import annotations

import json
import sys
from typing import Sequence

from catalogfs.config import Config
from jobs.job_main import run_main
from features.similarity import similar_videos


def run(spark, cfg: Config, *, video_id: str, space: str | None = None, k: int = 10, as_json: bool = False):
    space_id, neighbours = similar_videos(spark, cfg.storage, video_id, space=space, k=k)  # SimilarityError: exit 4
    return video_id, space_id, neighbours, as_json


def print_result(result, cfg: Config) -> None:
    video_id, space, neighbours, as_json = result
    if as_json:
        print(json.dumps({"video_id": video_id, "embedding_space": space,
                          "neighbours": [n.__dict__ for n in neighbours]}))
        return
    print(f"nearest to {video_id} in {space}:")
    for n in neighbours:
        print(f"  {n.rank:>3}. {n.video_id:<30} {n.score:.4f}")


def _arguments(parser) -> None:
    parser.add_argument("--video-id", required=True)
    parser.add_argument("--space", default=None, help="embedding space id (default: the current space)")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--json", dest="as_json", action="store_true")


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, argv, prog="catalogfs similar", description=__doc__, report=print_result,
                    configure=_arguments)


if __name__ == "__main__":
    sys.exit(main())
