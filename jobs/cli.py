"""The ``catalogfs`` command: one subcommand per job, each also runnable with spark-submit."""

from __future__ import annotations

import sys
from typing import Callable, Sequence

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("catalogfs.jobs.demo", "sample videos → frames → embeddings → validated, published tables; prints a summary"),
    "make-samples": ("catalogfs.jobs.make_sample_videos", "write the sample videos made from real photos"),
    "extract-frames": ("catalogfs.jobs.extract_frames", "videos → the frames Delta table"),
    "embed": ("catalogfs.jobs.embed_frames", "frames → frame/video embeddings and labels (validated, then published)"),
    "models": ("catalogfs.jobs.models", "model registry: register (bundle or transformers folder), alias, list"),
    "spaces": ("catalogfs.jobs.spaces", "embedding spaces: list, compare two, promote one to current, roll back"),
    "similar": ("catalogfs.jobs.similar", "nearest videos to one video by cosine, within one space"),
    "relabel": ("catalogfs.jobs.relabel", "re-label a CLIP-like space with a new taxonomy from its stored vectors (no re-embed)"),
    "training-set": ("catalogfs.jobs.training_set", "events + a time column → the embeddings current at each event's time"),
    "index": ("catalogfs.jobs.index", "ANN index per space: build (recall-checked before it becomes current), list"),
    "changes": ("catalogfs.jobs.changes", "inserts/updates/deletes of a table since a Delta version (change data feed)"),
    "video-neighbors": ("catalogfs.jobs.video_neighbors", "all-pairs top-k nearest videos of a space → video_neighbors"),
    "maintain": ("catalogfs.jobs.maintain", "VACUUM the tables, keeping the newest retention.keep_versions readable"),
    "relocate": ("catalogfs.jobs.relocate", "re-point a copied or moved data root's catalogue and registry at it (--dry-run)"),
    "verify": ("catalogfs.jobs.verify", "check every published table against the lineage (versions, commits, keys); exit 8 on a mismatch"),
    "sql": ("catalogfs.jobs.sql", "run a SQL query against the feature catalog and print the result"),
    "serve": ("catalogfs.jobs.serve", "serve the catalogue over Spark Connect and JDBC from one driver (--status, --stop)"),
    "serve-users": ("catalogfs.jobs.serve_users", "JDBC users of catalogfs serve: add NAME --role reader|operator, remove, list"),
    "config": ("catalogfs.jobs.show_config", "config show: the effective configuration, each key with its origin"),
}


def _usage() -> str:
    lines = ["usage: catalogfs <command> [options]   (catalogfs <command> --help for its options)",
             "       catalogfs --version", "", "commands:"]
    lines += [f"  {name:<16} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if args[0] == "--version":
        from catalogfs import __version__

        print(f"catalogfs {__version__}")
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"catalogfs: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    import importlib

    module = importlib.import_module(COMMANDS[command][0])
    job_main: Callable[[Sequence[str]], int] = module.main
    try:
        return job_main(rest)
    except SystemExit as exc:  # argparse in a job's own parser: usage and one error line already shown
        return exc.code if isinstance(exc.code, int) else 2


if __name__ == "__main__":
    sys.exit(main())
