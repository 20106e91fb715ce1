"""Publish staged candidates: one MERGE per published table, retried on lost commit races, each
commit proven by the table's own history.

Every MERGE carries the run id in its Delta commit metadata and a Delta transaction id of its
own run (``txnAppId = catalogfs:<space>:<table>:<run_id>``). A retry of the same run replays the
same transaction ids, so a table whose MERGE already committed is never applied twice; runs never
share an app id, so a run is never skipped because another run (started later, or on a driver
whose clock runs ahead) published first. After each MERGE the job looks for its own commit in
the table's history: what it records in the lineage is what Delta shows, not what it hoped.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any, Mapping

from pyspark.sql import DataFrame, SparkSession

from catalogfs import failpoints
from catalogfs.config import Config
from catalogfs.features import delta_writer
from catalogfs.features.spaces import EmbeddingSpace
from catalogfs.features.staging import Staged
from catalogfs.features.tables import REGISTRY, Registered, TableDef, published
from catalogfs.errors import PublishConflict, PublishSkipped  # noqa: F401 (raised here, importable from here)

log = logging.getLogger(__name__)


def is_commit_conflict(exc: BaseException) -> bool:
    """Whether ``exc`` is Delta's optimistic-concurrency failure (another writer committed first)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    conflicts = {"ConcurrentAppendException", "ConcurrentDeleteReadException", "ConcurrentDeleteDeleteException",
                 "ConcurrentTransactionException", "ConcurrentWriteException", "MetadataChangedException",
                 "ProtocolChangedException", "DeltaConcurrentModificationException"}
    if names & conflicts:
        return True
    text = str(exc)
    return any(marker in text for marker in ("DELTA_CONCURRENT_", "DELTA_METADATA_CHANGED",
                                             "io.delta.exceptions.Concurrent"))


def transaction_app_id(space: EmbeddingSpace, table: str, run_id: str) -> str:
    """The Delta ``txnAppId`` of one run's MERGE into one table (unique per run)."""
    return f"catalogfs:{space.id}:{table}:{run_id}"


def publish_with_retries(spark: SparkSession, cfg: Config, space: EmbeddingSpace, *args, run_id: str,
                         **kwargs) -> dict[str, int]:
    """:func:`publish_candidates`, retried when a concurrent publisher won a commit race.

    A retry replays the same staged candidates; tables whose MERGE already committed (found in
    their history) are not merged again, the others are merged against the winner's rows (keys
    stay unique: a MERGE updates matched keys instead of inserting them). Returns table → the
    Delta version this run committed; raises :class:`PublishConflict` after
    ``publish.max_attempts`` and :class:`PublishSkipped` when Delta skipped one of its MERGEs.
    """
    attempts, wait = cfg.publish.max_attempts, cfg.publish.retry_backoff_seconds
    failpoints.reached("before_publish")
    written: dict[str, int] = {}
    since: dict[str, int] = dict(kwargs.pop("since", None) or {})
    for attempt in range(1, attempts + 1):
        try:
            publish_candidates(spark, cfg, space, *args, run_id=run_id, written=written, since=since, **kwargs)
            return written
        except Exception as exc:  # noqa: BLE001 - only commit conflicts are retried
            if not is_commit_conflict(exc):
                raise
            if attempt == attempts:
                raise PublishConflict(
                    f"publish of space {space.id} (run {run_id}) lost {attempts} commit races to concurrent "
                    f"writers; nothing of this run is half-applied per table (each MERGE is atomic). Rerun "
                    f"the job: it embeds only what is still missing. Last conflict: "
                    f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from exc
            log.warning("publish attempt %d/%d of space %s lost a commit race (%s); retrying in %.1f s",
                        attempt, attempts, space.id, type(exc).__name__, wait)
            time.sleep(wait)
            wait *= 2
    raise AssertionError("unreachable")


def publish_candidates(spark: SparkSession, cfg: Config, space: EmbeddingSpace, rows: Mapping[str, DataFrame],
                       video_ids: list[str], *, run_id: str, txn_version: int, register: bool = True,
                       written: dict[str, int] | None = None, since: dict[str, int] | None = None) -> dict[str, int]:
    """One MERGE per staged table (``rows``: table → its staged rows; tables not in it, such as
    ``video_flags`` for models without flags or ``video_embeddings`` for a re-labelling, are left
    alone), in registry order (:func:`merge_plan`): the affected videos' rows in this space become
    exactly the staged ones (new and changed rows written, unchanged ones left alone, vanished ones
    deleted). ``register``: record the space in each table's ``catalogfs.embedding_spaces``
    property (a space's first publish; later ones skip that read of every table's properties).

    ``written`` (table → version committed by this run) is filled as each MERGE is proven in the
    table's history and skips tables an earlier attempt committed; ``since`` remembers each table's
    version before this run's first attempt, where the search for its commit starts.
    """
    storage = cfg.storage
    written = {} if written is None else written
    since = {} if since is None else since
    scope = (f"t.embedding_space = {delta_writer.sql_literal(space.id)} AND "
             + delta_writer.scope_condition("video_id", video_ids))
    metadata = {"run_id": run_id, "embedding_space": space.id, "model_name": space.model_name,
                "model_version": space.model_version}
    merges = merge_plan(rows)
    with delta_writer.commit_metadata(spark, metadata):
        for table, source, _ in merges:  # every source checked before the first table is touched
            delta_writer.check_schema(table, source, qualified_name=storage.qualified(table.name))
        if register and not written:
            delta_writer.register_space(spark, storage, [t.name for t, _, _ in merges], space.id)
        for table, source, condition in merges:
            if table.name in written:  # committed by an earlier attempt of this run
                continue
            failpoints.phase(f"publish.merge.{table.name}")
            if table.name not in since:
                since[table.name] = delta_writer.table_version(spark, storage, table.name)
            with delta_writer.idempotent(spark, transaction_app_id(space, table.name, run_id), txn_version):
                delta_writer.merge_rows(spark, storage, table, source, update_condition=condition,
                                        delete_scope=scope)
            version = own_commit(spark, cfg, table.name, run_id, since=since[table.name])
            if version is None:
                raise PublishSkipped(
                    f"Delta skipped the MERGE of run {run_id} into {storage.qualified(table.name)} (its "
                    f"transaction id {transaction_app_id(space, table.name, run_id)} was already used): "
                    f"nothing of it was committed there; tables this run did commit: {written or 'none'}. "
                    f"Rerun the job.", written)
            written[table.name] = version
            failpoints.reached("publish")
            failpoints.reached(f"merged_{table.name}")
    return written


def merge_plan(rows: Mapping[str, Any], *, registry: tuple[Registered, ...] = REGISTRY
               ) -> list[tuple[TableDef, Any, str | None]]:
    """(table, staged rows, MERGE update condition) for each table of ``rows`` (table → staged
    rows; None: left alone), in registry order — the order of a run's MERGEs. A table the registry
    does not publish is refused (ValueError)."""
    unknown = sorted(set(rows) - {r.name for r in published(registry)})
    if unknown:
        raise ValueError(f"no published table in the registry is named {', '.join(unknown)}")
    return [(entry.table, rows[entry.name], entry.fill.changed) for entry in published(registry)
            if rows.get(entry.name) is not None]


def own_commit(spark: SparkSession, cfg: Config, table: str, run_id: str, *, since: int) -> int | None:
    """The version of this run's MERGE into ``table`` newer than ``since``, or None (skipped)."""
    for commit in delta_writer.run_commits(spark, cfg.storage, table, since_version=since):
        if commit.get("run_id") == run_id and commit["operation"] == "MERGE":
            return commit["version"]
    return None


def publish_staged(spark: SparkSession, cfg: Config, space: EmbeddingSpace, staged: Staged, *, run_id: str,
                   started: datetime, first_publish: bool, since: dict[str, int] | None = None) -> dict[str, int]:
    """Publish a run's staged rows (:func:`publish_with_retries`); returns table → the version this
    run committed. ``first_publish``: the space has no rows yet (it is registered in each table's
    properties). ``since``: table → a version before this run's commits (default: read before each
    table's first MERGE)."""
    return publish_with_retries(spark, cfg, space, staged.rows, staged.video_ids, run_id=run_id,
                                txn_version=int(started.timestamp() * 1000), register=first_publish,
                                since=dict(since or {}))
