"""Embedding spaces: list them, compare two, promote one to current, roll back.

    catalogfs spaces list
    catalogfs spaces compare SPACE_A SPACE_B [-k 10]
    catalogfs spaces promote SPACE
    catalogfs spaces rollback

A new model version is backfilled beside the current space (shadow) with
``catalogfs embed --model NAME@ALIAS``; consumers keep reading ``current_*`` views until promote.

One promote: the catalogue serves ``models:/<model.name>@<model.alias>`` (the *serving alias*,
``champion`` by default) and the scheduled ``catalogfs embed`` maintains that version's space.
Promoting a space moves the serving alias to the space's model version first, then the views, so
the next scheduled run embeds new uploads into the space consumers read; ``catalogfs models
promote`` moves the same alias and the views follow at the next run (:mod:`features.embedding_run`).
"""

from __future__ import annotations

import json
import sys
import uuid
from typing import Sequence

from catalogfs import failpoints
from catalogfs.config import Config
from catalogfs.errors import InputError, PromotionError
from catalogfs.jobs.job_main import run_main
from catalogfs.features import promotion


def serve_space(spark, cfg: Config, space_id: str, *, run_id: str, note: str = "promoted") -> promotion.SpaceModel:
    """Make ``space_id`` current: the serving alias moves to its model version, then the views.

    Alias first: if the views step fails, the next scheduled embed finds the alias on a published
    space that is not current and completes the promotion; the other order could let a registry
    error turn a promotion back. A space of another model than ``model.name`` is refused: the
    scheduled embed (which serves ``model.name``) would never maintain it.
    """
    from mlflow import MlflowClient

    from catalogfs.tracking import configure_mlflow
    from catalogfs.udfs.model_registry import set_alias

    owner = promotion.require_published(spark, cfg.storage, space_id)
    if owner.model_name != cfg.model.name:
        raise PromotionError(
            f"space {space_id!r} was made by model {owner.model_name!r}, but this catalogue serves "
            f"model.name={cfg.model.name!r}: the scheduled embed would not maintain it. Set model.name: "
            f"{owner.model_name} in the config the scheduled job uses (or --set model.name={owner.model_name}), "
            f"then promote again")
    configure_mlflow(cfg)
    failpoints.phase("promote.alias")
    set_alias(MlflowClient(), owner.model_name, cfg.model.alias, owner.model_version)
    failpoints.phase("promote.views")
    return promotion.promote(spark, cfg.storage, space_id, run_id=run_id, note=note)


def run(spark, cfg: Config, *, action: str, spaces: list[str], k: int = 10, as_json: bool = False):
    storage = cfg.storage
    run_id = f"spaces-{uuid.uuid4().hex[:12]}"
    # PromotionError (never published, nothing to roll back to) is an input error: exit 4
    if action == "list":
        return action, promotion.describe_spaces(spark, storage), as_json
    if action == "compare":
        if len(spaces) != 2:
            raise InputError("compare needs two space ids")
        return action, promotion.compare_spaces(spark, storage, *spaces, k=k).to_dict(), as_json
    if action == "promote":
        if len(spaces) != 1:
            raise InputError("promote needs one space id")
        served = serve_space(spark, cfg, spaces[0], run_id=run_id)
        return action, {"current": spaces[0], "serving": _serving(cfg, served)}, as_json
    if action == "rollback":
        current, previous = promotion.rollback_target(spark, storage)
        served = serve_space(spark, cfg, previous, run_id=run_id, note=f"rollback from {current}")
        return action, {"current": previous, "serving": _serving(cfg, served)}, as_json
    raise InputError(f"unknown action {action!r}")


def _serving(cfg: Config, served: promotion.SpaceModel) -> str:
    return f"models:/{served.model_name}@{cfg.model.alias} → version {served.model_version}"


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
