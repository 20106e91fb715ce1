"""Run one SQL query against the feature catalog and print the result.

    catalogfs sql "SELECT video_id, label, score FROM catalog_features.video_labels ORDER BY score DESC LIMIT 5"

Read-only: a statement that would change the catalogue (DDL, DML) is refused with exit code 2
and nothing runs (:mod:`features.read_only`). Operators say so explicitly: ``--allow-writes``.
"""

from __future__ import annotations

import json
import sys
from typing import Sequence

from catalogfs.config import Config
from catalogfs.features.read_only import read_only_sql
from catalogfs.jobs.job_main import run_main


def run(spark, cfg: Config, *, query: str, limit: int = 50, as_json: bool = False, allow_writes: bool = False):
    df = spark.sql(query) if allow_writes else read_only_sql(spark, query)
    return df.columns, [r.asDict(recursive=True) for r in df.limit(limit).collect()], as_json


def _short(value) -> str:
    if isinstance(value, (list, tuple)) and len(value) > 4:
        return "[" + ", ".join(_short(v) for v in value[:3]) + f", … ({len(value)} items)]"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    return str(value)


def print_rows(result, cfg: Config) -> None:
    columns, rows, as_json = result
    if as_json:
        print(json.dumps(rows, default=str))
        return
    if not columns:  # a statement without a result (DDL, SET …): no empty header lines
        print(f"({len(rows)} rows)")
        return
    cells = [[_short(r[c]) for c in columns] for r in rows]
    widths = [min(60, max([len(c)] + [len(row[i]) for row in cells])) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v[:w].ljust(w) for v, w in zip(row, widths)))
    print(f"({len(rows)} rows)")


def _arguments(parser) -> None:
    parser.add_argument("query", help="a Spark SQL query")
    parser.add_argument("--limit", type=int, default=50, help="rows to print (default 50)")
    parser.add_argument("--json", dest="as_json", action="store_true", help="print rows as JSON")
    parser.add_argument("--allow-writes", action="store_true",
                        help="operators only: run a statement that changes the catalogue (DDL/DML)")


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, argv, prog="catalogfs sql", description=__doc__, report=print_rows,
                    configure=_arguments)


if __name__ == "__main__":
    sys.exit(main())
