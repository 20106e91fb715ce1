"""Embedding spaces: list them, compare two, promote one to current, roll back.

    catalogfs spaces list
    catalogfs spaces compare SPACE_A SPACE_B [-k 10]
    catalogfs spaces promote SPACE
    catalogfs spaces rollback

A new model version is backfilled beside the current space (shadow) with
``catalogfs embed --model NAME@ALIAS``; consumers keep reading ``current_*`` views until promote.
"""

from __future__ import annotations

import json
import sys
import uuid
from typing import Sequence

from catalogfs.config import Config
from catalogfs.job_main import InputError, run_main
from features import promotion


def run(spark, cfg: Config, *, action: str, spaces: list[str], k: int = 10, as_json: bool = False):
    storage = cfg.storage
    run_id = f"spaces-{uuid.uuid4().hex[:12]}"
    try:
        if action == "list":
            return action, promotion.describe_spaces(spark, storage), as_json
        if action == "compare":
            if len(spaces) != 2:
                raise InputError("compare needs two space ids")
            return action, promotion.compare_spaces(spark, storage, *spaces, k=k).to_dict(), as_json
        if action == "promote":
            if len(spaces) != 1:
                raise InputError("promote needs one space id")
            promotion.promote(spark, storage, spaces[0], run_id=run_id)
            return action, {"current": spaces[0]}, as_json
        if action == "rollback":
            return action, {"current": promotion.rollback(spark, storage, run_id=run_id)}, as_json
    except promotion.PromotionError as exc:
        raise InputError(str(exc)) from exc
    raise InputError(f"unknown action {action!r}")


def print_result(result, cfg: Config) -> None:
    action, data, as_json = result
    if as_json:
        print(json.dumps(data, default=str, indent=2))
    elif action == "list":
        for s in data:
            mark = "*" if s["current"] else " "
            print(f"{mark} {s['embedding_space']:<56} {s['model_name']} v{s['model_version']} "
                  f"dim={s['dim']} publishes={s['publishes']} last={s['last_published']:%Y-%m-%d %H:%M}")
        print("(* = current: what the current_* views select)")
    else:
        for key, value in data.items():
            print(f"{key:<20} {value}")


def _arguments(parser) -> None:
    parser.add_argument("action", choices=["list", "compare", "promote", "rollback"])
    parser.add_argument("spaces", nargs="*", help="space id(s): one for promote, two for compare")
    parser.add_argument("-k", type=int, default=10, help="neighbours for compare (default 10)")
    parser.add_argument("--json", dest="as_json", action="store_true")


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, argv, prog="catalogfs spaces", description=__doc__, report=print_result,
                    configure=_arguments)


if __name__ == "__main__":
    sys.exit(main())
