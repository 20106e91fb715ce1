"""A point-in-time training set: each event joined to the video embedding that was current at the
event's time in a space — never a later one — written as Parquet.

    catalogfs training-set --events FILE --key video_id --ts event_ts [--space SPACE] --out PATH [--overwrite]

FILE is Parquet, CSV (with a header) or JSON lines, by its extension. Without --space, each event
reads the space that was current (promoted) at its time. Every event is kept; ``feature_status``
says ``ok`` or why it has no value. Exit 4: missing file, column or space; exit 2: bad arguments.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from catalogfs.config import Config
from catalogfs.errors import TrainingSetArgumentError
from catalogfs.features.training_set import OK, read_events, training_set
from catalogfs.jobs.job_main import run_main


@dataclass(frozen=True)
class TrainingSetSummary:
    out: str
    events: int
    matched: int
    unmatched: dict[str, int] = field(default_factory=dict)  # feature_status → events
    spaces: dict[str, int] = field(default_factory=dict)  # space read → events matched in it


def run(spark, cfg: Config, *, events: str, key: str = "video_id", ts: str = "event_ts", space: str | None = None,
        out: str, overwrite: bool = False) -> TrainingSetSummary:
    target = Path(out)
    if target.exists() and not overwrite:
        raise TrainingSetArgumentError(f"--out {target} already exists; pass --overwrite to replace it")
    result = training_set(spark, cfg.storage, read_events(spark, events), key=key, ts=ts, space=space)
    result.write.mode("overwrite").parquet(str(target))
    counts = (spark.read.parquet(str(target)).groupBy("feature_status", "embedding_space").count().collect())
    unmatched: dict[str, int] = {}
    spaces: dict[str, int] = {}
    for r in counts:
        if r["feature_status"] == OK:
            spaces[r["embedding_space"]] = spaces.get(r["embedding_space"], 0) + r["count"]
        else:
            unmatched[r["feature_status"]] = unmatched.get(r["feature_status"], 0) + r["count"]
    return TrainingSetSummary(str(target), sum(r["count"] for r in counts), sum(spaces.values()),
                              dict(sorted(unmatched.items())), dict(sorted(spaces.items())))


def print_result(summary: TrainingSetSummary, cfg: Config) -> None:
    print(f"training-set: {summary.events} events, {summary.matched} matched, "
          f"{summary.events - summary.matched} unmatched → {summary.out}")
    for space, n in summary.spaces.items():
        print(f"  ok in {space}: {n}")
    for status, n in summary.unmatched.items():
        print(f"  {status}: {n}")


def _arguments(parser) -> None:
    parser.add_argument("--events", required=True, metavar="FILE", help="events: .parquet, .csv (header) or .json")
    parser.add_argument("--key", default="video_id", help="the events' video id column (default video_id)")
    parser.add_argument("--ts", default="event_ts", help="the events' time column (default event_ts)")
    parser.add_argument("--space", default=None,
                        help="embedding space to read (default: the space current at each event's time)")
    parser.add_argument("--out", required=True, metavar="PATH", help="where to write the training set (Parquet)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, argv, prog="catalogfs training-set", description=__doc__, report=print_result,
                    configure=_arguments)


if __name__ == "__main__":
    sys.exit(main())
