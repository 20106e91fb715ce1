"""Job: re-point a copied or moved data root's catalogue and model registry at the root itself.

    catalogfs relocate [--dry-run] [--from OLD_ROOT]

The embedded metastore and the MLflow registry store absolute folders (tables, databases, model
artifacts). After a copy or a move they name the old root; every job re-points them when it opens
the catalogue (one warning line) and refuses when it cannot (a table whose folder is missing here).
This command shows what changes (``--dry-run``: nothing is written) or does it explicitly; a
location under neither root is listed and left alone. ``--from`` names the old root when the
catalogue cannot tell it (its ``default`` database is not at ``<root>/warehouse``).
It needs the catalogue to itself (exit 7 while a server or a job has it open); it starts a JVM for
the metastore but no Spark session.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from catalogfs.config import Config
from catalogfs.errors import EXIT_OK, CatalogfsError
from catalogfs.jobs.job_main import add_common_arguments, parse_and_load
from catalogfs.relocation import RelocationPlan, apply_plan, plan_catalogue, plan_registry, summary

PROG = "relocate"


def run(cfg: Config, *, dry_run: bool = False, old_root: Path | None = None) -> list[RelocationPlan]:
    """Plan (and unless ``dry_run``, apply) the re-pointing of this data root's metastore and registry."""
    from catalogfs.spark import catalogue_jvm

    jvm = catalogue_jvm(cfg) if cfg.storage.metastore_dir.exists() else None
    plans = ([plan_catalogue(jvm, cfg.storage, old_root=old_root)] if jvm is not None else []) \
        + [plan_registry(cfg.storage, cfg.mlflow.tracking_uri, old_root=old_root)]
    if not dry_run:
        apply_plan([p for p in plans if p.moves], cfg.storage, jvm)
    return plans


def report(plans: list[RelocationPlan], cfg: Config, *, dry_run: bool) -> None:
    for line in summary(plans):
        print(f"{PROG}: {line}")
    changes = sum(len(p.moves) for p in plans)
    if changes:
        print(f"{PROG}: {changes} locations {'would be' if dry_run else 'were'} re-pointed to {cfg.storage.data_root}"
              + (" (dry run: nothing written)" if dry_run else ""))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--dry-run", action="store_true", help="show what would be re-pointed; change nothing")
    parser.add_argument("--from", dest="old_root", type=Path, default=None, metavar="OLD_ROOT",
                        help="the data root the catalogue was written under (default: read from the catalogue)")
    parsed = parse_and_load(parser, argv, PROG)
    if isinstance(parsed, int):
        return parsed
    args, cfg = parsed
    if args.check:
        print(f"{PROG}: arguments and config ok ({', '.join(cfg.sources)})")
        return EXIT_OK
    try:
        plans = run(cfg, dry_run=args.dry_run, old_root=args.old_root.absolute() if args.old_root else None)
    except CatalogfsError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exc.exit_code
    report(plans, cfg, dry_run=args.dry_run)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
