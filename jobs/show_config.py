"""Print the effective configuration, each key with where its value came from.

    catalogfs config show [--conf NAME_OR_FILE …] [--set key=value …] [--json]

Origins, lowest precedence first: ``base.yaml`` (the packaged defaults), each ``--conf`` profile or
file in order, ``environment VAR (in FILE)`` where a file's ``${VAR}`` was set, ``--set KEY``, and
``default`` for keys no file names (the config model's own default). Secrets are shown as ``***``.
Nothing runs: no Spark, no registry. Exit codes: 0 · 2 a bad config (the error names file and key).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Iterator, Sequence

from catalogfs.config import Config, origin_of
from catalogfs.errors import EXIT_OK
from catalogfs.redaction import redact
from catalogfs.jobs.job_main import add_common_arguments, parse_and_load

PROG = "catalogfs config"


def effective_entries(cfg: Config) -> list[tuple[str, Any, str]]:
    """``(dotted key, value, origin)`` for every leaf key of ``cfg``, secrets redacted, in model order."""
    dumped = redact(cfg.model_dump(mode="json", exclude={"sources"}))
    return [(key, value, origin_of(cfg, key)) for key, value in _leaves(dumped, "")]


def _leaves(node: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, node


def render(entries: list[tuple[str, Any, str]]) -> str:
    """One line per key: ``key = value   # origin`` (values as YAML-ish JSON scalars)."""
    width = max(len(key) for key, _, _ in entries)
    lines = []
    for key, value, origin in entries:
        shown = json.dumps(value, ensure_ascii=False)
        lines.append(f"{key:<{width}} = {shown}   # {origin}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("action", choices=("show",), help="show: the effective config with origins")
    parser.add_argument("--json", action="store_true", help="a JSON list of {key, value, origin}")
    parsed = parse_and_load(parser, list(sys.argv[1:] if argv is None else argv), PROG)
    if isinstance(parsed, int):
        return parsed
    args, cfg = parsed
    entries = effective_entries(cfg)
    if args.json:
        print(json.dumps([{"key": k, "value": v, "origin": o} for k, v, o in entries], indent=1))
    else:
        print(f"# files: {', '.join(cfg.sources)}")
        print(render(entries))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
