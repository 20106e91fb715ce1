"""Job: all-pairs top-k nearest videos of one space → the ``video_neighbors`` table.

    catalogfs video-neighbors [--space SPACE] [-k 10]
    spark-submit jobs/video_neighbors.py --conf conf/local.yaml

Exact cosine search as batched matrix products on the driver (GPU when present); the space's rows
in ``video_neighbors`` are replaced in one commit.
"""

from __future__ import annotations

import sys
import uuid
from typing import Sequence

from catalogfs.config import Config
from catalogfs.jobs.job_main import run_main
from catalogfs.features.similarity import write_video_neighbors


def run(spark, cfg: Config, *, space: str | None = None, k: int = 10):
    # SimilarityError (unknown space, nothing to search) is an input error: exit 4
    return write_video_neighbors(spark, cfg.storage, space=space, k=k, run_id=f"neighbors-{uuid.uuid4().hex[:12]}")


def print_result(result, cfg: Config) -> None:
    space, n = result
    print(f"video_neighbors: {n} rows for space {space} in {cfg.storage.qualified('video_neighbors')}")


def _arguments(parser) -> None:
    parser.add_argument("--space", default=None, help="embedding space id (default: the current space)")
    parser.add_argument("-k", type=int, default=10)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, argv, prog="video_neighbors", description=__doc__, report=print_result,
                    configure=_arguments)


if __name__ == "__main__":
    sys.exit(main())
