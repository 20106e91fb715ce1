"""Approximate nearest-neighbour indexes per space: build (validated before it becomes current), list.

    catalogfs index build [--space SPACE] [--level video|frame] [--full]
    catalogfs index list [--space SPACE] [--json]

``build`` adds what changed since the current index (the source table's change data feed) or
builds anew (first build, ``--full``, drift over ``index.rebuild_drift``, change data missing); the
new version becomes current only if its recall@k against exact search reaches ``index.min_recall``
(exit 3 otherwise, the previous version stays current). Settings: the ``index`` config section.
"""

from __future__ import annotations

import json
import sys
from typing import Sequence

from catalogfs.config import Config
from catalogfs.errors import IndexRejected
from catalogfs.jobs.job_main import run_main
from catalogfs.features.vector_index import build_index, list_indexes


def run(spark, cfg: Config, *, action: str, space: str | None = None, level: str = "video", full: bool = False,
        as_json: bool = False):
    if action == "list":
        return action, list_indexes(spark, cfg, space), as_json
    build = build_index(spark, cfg, space=space, level=level, full=full)
    if build.status == "rejected":
        m = build.manifest
        raise IndexRejected(
            f"index {m.index_id} of space {m.space} ({m.level}) was rejected: mean recall@{m.k} "
            f"{m.recall_at_k:.4f} < index.min_recall {cfg.index.min_recall} even at nprobe {m.nprobe} "
            f"({'; '.join(build.failures)}); the current index is unchanged. Report: {build.path}/validation")
    return action, build, as_json


def print_result(result, cfg: Config) -> None:
    action, data, as_json = result
    if action == "list":
        if as_json:
            print(json.dumps(data, default=str, indent=2))
            return
        for r in data:
            mark = "*" if r["current"] else " "
            print(f"{mark} {r['embedding_space']:<48} {r['level']:<5} {r['index_id']}  {r['kind']:<8} "
                  f"{r['status']:<9} {r['build_mode']:<11} n={r['n_vectors']} recall@{r['k']}={r['recall_at_k']:.4f} "
                  f"nprobe={r['nprobe']} from {r['source_table']} v{r['source_version']}")
        print("(* = current: what `catalogfs similar` and VectorIndex.open_current load)")
        return
    m = data.manifest
    summary = {"status": data.status, "build_mode": data.build_mode, "reason": data.reason, "path": data.path,
               "seconds": round(data.seconds, 2), **(m.__dict__ if m else {}),
               "recall_by_nprobe": [list(t) for t in data.recalls_tried]}
    if as_json:
        print(json.dumps(summary, default=str, indent=2))
        return
    for key, value in summary.items():
        print(f"{key:<22} {value}")


def _arguments(parser) -> None:
    parser.add_argument("action", choices=["build", "list"])
    parser.add_argument("--space", default=None, help="embedding space id (default: the current space)")
    parser.add_argument("--level", choices=["video", "frame"], default="video",
                        help="index video embeddings (default) or ok frame embeddings")
    parser.add_argument("--full", action="store_true", help="rebuild from scratch (retrain the quantizer)")
    parser.add_argument("--json", dest="as_json", action="store_true")


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, argv, prog="catalogfs index", description=__doc__, report=print_result,
                    configure=_arguments)


if __name__ == "__main__":
    sys.exit(main())
