"""What changed in a catalogue table since a Delta version: inserts, updates and deletes per key
(the table's change data feed), so that a downstream index, cache or copy syncs by change.

    catalogfs changes TABLE --since VERSION [--until VERSION] [--net] [--space SPACE]
                            [--columns a,b] [--out FILE.parquet] [--limit N] [--json]

``--net``: one row per key, its last change in the range (what a copy in step at ``--since``
applies: upsert inserts and update post-images, drop deletes). Without ``--out`` the rows are
printed (keys, change type, commit version and time, and ``--columns``); with it, every column is
written to Parquet. SQL: ``SELECT * FROM table_changes('<db>.<table>', <since + 1>, <until>)``.
Exit 4 when the table is unknown or the feed does not cover the range (resync from a full read).
"""

from __future__ import annotations

import json
import sys
from typing import Sequence

from pyspark.sql import functions as F

from catalogfs.config import Config
from catalogfs.errors import ChangeFeedError
from catalogfs.features.change_feed import CHANGE_COLUMNS, change_range, check_covered, read_changes, table_keys
from catalogfs.jobs.job_main import run_main


def run(spark, cfg: Config, *, table: str, since: int, until: int | None = None, net: bool = False,
        space: str | None = None, columns: str = "", out: str | None = None, limit: int = 100,
        as_json: bool = False):
    rng = change_range(spark, cfg.storage, table, since=since, until=until)
    changes = check_covered(spark, read_changes(spark, cfg.storage, rng, net=net), rng, cfg.storage)
    if space:
        if "embedding_space" not in changes.columns:
            raise ChangeFeedError(f"{cfg.storage.qualified(table)} has no embedding_space column: drop --space")
        changes = changes.where(F.col("embedding_space") == space)
    changes = changes.orderBy("_commit_version", *table_keys(table))
    counts = {r["_change_type"]: r["n"] for r in changes.groupBy("_change_type").agg(F.count(F.lit(1)).alias("n")).collect()}
    summary = {"table": cfg.storage.qualified(table), "since": rng.since, "until": rng.until, "net": net,
               "counts": counts}
    if out:
        changes.write.mode("overwrite").parquet(out)
        return {**summary, "written_to": out}, [], as_json
    shown = [*table_keys(table), *[c.strip() for c in columns.split(",") if c.strip()], *CHANGE_COLUMNS]
    rows = [r.asDict() for r in changes.select(*dict.fromkeys(shown)).limit(limit).collect()]
    return summary, rows, as_json


def print_result(result, cfg: Config) -> None:
    summary, rows, as_json = result
    if as_json:
        print(json.dumps({**summary, "rows": rows}, default=str, indent=2))
        return
    span = (f"versions {summary['since'] + 1}..{summary['until']}" if summary["until"] > summary["since"]
            else f"no versions after v{summary['since']}")
    print(f"{summary['table']}: {span}"
          f"{' (net: last change per key)' if summary['net'] else ''}: "
          + (", ".join(f"{n} {kind}" for kind, n in sorted(summary["counts"].items())) or "no changes"))
    if "written_to" in summary:
        print(f"written to {summary['written_to']}")
    for r in rows:
        print("  " + "  ".join(f"{k}={v}" for k, v in r.items()))


def _arguments(parser) -> None:
    parser.add_argument("table", help="a catalogue table: frame_embeddings, video_embeddings, video_labels, …")
    parser.add_argument("--since", type=int, required=True,
                        help="Delta version the consumer is in step with; changes after it are listed (-1: all)")
    parser.add_argument("--until", type=int, default=None, help="last version to include (default: the latest)")
    parser.add_argument("--net", action="store_true", help="one row per key: its last change in the range")
    parser.add_argument("--space", default=None, help="only rows of this embedding space")
    parser.add_argument("--columns", default="", help="comma-separated extra columns to print")
    parser.add_argument("--out", default=None, help="write every column of the changes to this Parquet folder")
    parser.add_argument("--limit", type=int, default=100, help="rows printed (default 100)")
    parser.add_argument("--json", dest="as_json", action="store_true")


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, argv, prog="catalogfs changes", description=__doc__, report=print_result,
                    configure=_arguments)


if __name__ == "__main__":
    sys.exit(main())
