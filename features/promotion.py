"""Which embedding space consumers see: promote, roll back, compare.

Several spaces live side by side in the published tables. The *current* space is the one the
``current_*`` views select; promoting another space replaces each view in one catalog operation, so a
consumer reading ``current_video_embeddings`` never sees two spaces mixed. Every promotion is a
``feature_versions`` row (status ``promoted``), so the history of what was current when is SQL too.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from catalogfs.config import StorageConfig
from catalogfs.features import delta_writer
from catalogfs.features.knn import top_k_neighbours
from catalogfs.features.tables import FEATURE_VERSIONS, FRAME_EMBEDDINGS, VIDEO_EMBEDDINGS, VIDEO_LABELS, current_views
from catalogfs.errors import PromotionError
from catalogfs.statuses import RunStatus, Status

log = logging.getLogger(__name__)

CURRENT_VIEWS = current_views()  # current_<table> → table, for the registry's tables with a view


def _lineage(spark: SparkSession, storage: StorageConfig):
    return spark.table(storage.qualified(FEATURE_VERSIONS.name))


def promotion_history(spark: SparkSession, storage: StorageConfig) -> list[str]:
    """Spaces in the order they were promoted (oldest first)."""
    rows = (_lineage(spark, storage).where(F.col("status") == RunStatus.PROMOTED)
            .orderBy("finished_at").select("embedding_space").collect())
    return [r["embedding_space"] for r in rows]


def current_space(spark: SparkSession, storage: StorageConfig) -> str | None:
    history = promotion_history(spark, storage)
    return history[-1] if history else None


def published_spaces(spark: SparkSession, storage: StorageConfig) -> list[str]:
    rows = (_lineage(spark, storage).where(F.col("status") == RunStatus.PUBLISHED)
            .select("embedding_space").distinct().orderBy("embedding_space").collect())
    return [r["embedding_space"] for r in rows]


@dataclass(frozen=True)
class SpaceModel:
    """The registered model version a published space was made by."""

    space: str
    model_name: str
    model_version: str
    dim: int


def space_model(spark: SparkSession, storage: StorageConfig, space_id: str) -> SpaceModel | None:
    """Model name and version of a published space (from its newest ``published`` lineage row)."""
    row = (_lineage(spark, storage).where((F.col("embedding_space") == space_id) & (F.col("status") == RunStatus.PUBLISHED))
           .orderBy(F.desc("finished_at")).select("model_name", "model_version", "dim").first())
    return None if row is None else SpaceModel(space_id, row["model_name"], row["model_version"], row["dim"])


def require_published(spark: SparkSession, storage: StorageConfig, space_id: str) -> SpaceModel:
    """:func:`space_model`, or :class:`PromotionError` naming the published spaces."""
    owner = space_model(spark, storage, space_id)
    if owner is None:
        raise PromotionError(f"space {space_id!r} has never been published; published spaces: "
                             f"{published_spaces(spark, storage)}")
    return owner


def promote(spark: SparkSession, storage: StorageConfig, space_id: str, *, run_id: str,
            note: str = "promoted") -> SpaceModel:
    """Point the ``current_*`` views at ``space_id`` and record the promotion; returns the space's
    model version (the caller moves the registry's serving alias to it, see ``jobs/spaces.py``)."""
    owner = require_published(spark, storage, space_id)
    _create_views(spark, storage, space_id, CURRENT_VIEWS)
    source = (_lineage(spark, storage).where((F.col("embedding_space") == space_id) & (F.col("status") == RunStatus.PUBLISHED))
              .orderBy(F.desc("finished_at")).first())
    now = datetime.now(timezone.utc)
    row = source.asDict()
    row.update(run_id=run_id, status=RunStatus.PROMOTED, note=note, frames_embedded=0, started_at=now, finished_at=now)
    delta_writer.append_rows(spark, storage, FEATURE_VERSIONS,
                             spark.createDataFrame([row], FEATURE_VERSIONS.schema))
    log.info("current space is now %s (%s)", space_id, note)
    return owner


def rollback_target(spark: SparkSession, storage: StorageConfig) -> tuple[str, str]:
    """(current space, the space that was current before it), or :class:`PromotionError`."""
    history = promotion_history(spark, storage)
    if len(history) < 2:
        raise PromotionError("nothing to roll back to: fewer than two promotions recorded")
    current = history[-1]
    previous = next((s for s in reversed(history[:-1]) if s != current), None)
    if previous is None:
        raise PromotionError(f"every earlier promotion was of {current!r}: nothing to roll back to")
    return current, previous


def _create_views(spark: SparkSession, storage: StorageConfig, space_id: str, views: dict[str, str]) -> None:
    """Point each ``current_*`` view at ``space_id``. An existing view is changed with ``ALTER VIEW
    … AS`` (one metastore update), never ``CREATE OR REPLACE VIEW``, which drops the view and creates
    it again: a reader in between (JDBC, Spark Connect) failed with TABLE_OR_VIEW_NOT_FOUND."""
    literal = delta_writer.sql_literal(space_id)
    for view, table in views.items():
        name = storage.qualified(view)
        select = f"SELECT * FROM {storage.qualified(table)} WHERE embedding_space = {literal}"
        if spark.catalog.tableExists(name):
            spark.sql(f"ALTER VIEW {name} AS {select}")
        else:
            spark.sql(f"CREATE VIEW IF NOT EXISTS {name} COMMENT 'catalogfs: rows of the current embedding space' "
                      f"AS {select}")


def refresh_current_views(spark: SparkSession, storage: StorageConfig) -> list[str]:
    """Re-create ``current_*`` views that are missing or lack columns their table has gained (a data
    root from an older version: new tables, columns added by ``ensure_catalog``), for the current
    space, without recording a promotion. Returns the views re-created; none when no space is current."""
    stale = {}
    for view, table in CURRENT_VIEWS.items():
        name = storage.qualified(view)
        if not spark.catalog.tableExists(storage.qualified(table)):
            continue
        if (not spark.catalog.tableExists(name)
                or spark.table(name).columns != spark.table(storage.qualified(table)).columns):
            stale[view] = table
    if not stale:
        return []
    space = current_space(spark, storage)
    if space is None:
        return []
    _create_views(spark, storage, space, stale)
    log.info("re-created views %s for the current space %s", sorted(stale), space)
    return sorted(stale)


def rollback(spark: SparkSession, storage: StorageConfig, *, run_id: str) -> str:
    """Promote again the space that was current before the current one; returns it."""
    current, previous = rollback_target(spark, storage)
    promote(spark, storage, previous, run_id=run_id, note=f"rollback from {current}")
    return previous


@dataclass(frozen=True)
class SpaceComparison:
    space_a: str
    space_b: str
    frames_a: int
    frames_b: int
    frames_both: int
    videos_both: int
    top_label_agreement: float | None
    neighbour_overlap: float | None
    k: int

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def _video_matrix(spark: SparkSession, storage: StorageConfig, space: str) -> dict[str, np.ndarray]:
    rows = (spark.table(storage.qualified(VIDEO_EMBEDDINGS.name)).where(F.col("embedding_space") == space)
            .select("video_id", "embedding").collect())
    return {r["video_id"]: np.asarray(r["embedding"], dtype=np.float32) for r in rows}


def compare_spaces(spark: SparkSession, storage: StorageConfig, space_a: str, space_b: str, *,
                   k: int = 10) -> SpaceComparison:
    """Coverage, top-label agreement and nearest-neighbour overlap of two spaces on the same videos.

    ``neighbour_overlap`` is the mean over shared videos of |kNN_a ∩ kNN_b| / k, neighbours taken
    among the shared videos; ``top_label_agreement`` the share of shared videos whose rank-1 label is
    equal (None when either space has no labels).
    """
    fe = spark.table(storage.qualified(FRAME_EMBEDDINGS.name)).where(F.col("status") == Status.OK)
    keys_a = fe.where(F.col("embedding_space") == space_a).select("video_id", "frame_ts_ms")
    keys_b = fe.where(F.col("embedding_space") == space_b).select("video_id", "frame_ts_ms")
    frames_a, frames_b = keys_a.count(), keys_b.count()
    frames_both = keys_a.join(keys_b, ["video_id", "frame_ts_ms"]).count()

    vec_a, vec_b = _video_matrix(spark, storage, space_a), _video_matrix(spark, storage, space_b)
    shared = sorted(set(vec_a) & set(vec_b))
    overlap = None
    kk = min(k, len(shared) - 1)
    if kk >= 1:
        matrix_a = np.stack([vec_a[v] for v in shared])
        matrix_b = np.stack([vec_b[v] for v in shared])
        nn_a = top_k_neighbours(matrix_a, matrix_a, kk, exclude_self=True)[0]
        nn_b = top_k_neighbours(matrix_b, matrix_b, kk, exclude_self=True)[0]
        overlap = float(np.mean([len(set(a) & set(b)) / kk for a, b in zip(nn_a, nn_b)]))

    labels = (spark.table(storage.qualified(VIDEO_LABELS.name)).where(F.col("rank") == 1)
              .where(F.col("embedding_space").isin(space_a, space_b)).collect())
    top = {(r["embedding_space"], r["video_id"]): r["label"] for r in labels}
    pairs = [(top.get((space_a, v)), top.get((space_b, v))) for v in shared]
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
    agreement = float(np.mean([a == b for a, b in pairs])) if pairs else None
    return SpaceComparison(space_a, space_b, frames_a, frames_b, frames_both, len(shared), agreement,
                           overlap, kk)


def describe_spaces(spark: SparkSession, storage: StorageConfig) -> list[dict]:
    """One entry per published space: model, version, dim, last publish, whether it is current."""
    current = current_space(spark, storage)
    rows = (_lineage(spark, storage).where(F.col("status") == RunStatus.PUBLISHED)
            .groupBy("embedding_space", "model_name", "model_version", "dim")
            .agg(F.max("finished_at").alias("last_published"), F.count(F.lit(1)).alias("publishes"))
            .orderBy("last_published").collect())
    return [{**r.asDict(), "current": r["embedding_space"] == current,
             "table_versions": json.loads(_last_versions(spark, storage, r["embedding_space"]) or "{}")}
            for r in rows]


def _last_versions(spark: SparkSession, storage: StorageConfig, space: str) -> str | None:
    row = (_lineage(spark, storage).where((F.col("embedding_space") == space) & (F.col("status") == RunStatus.PUBLISHED))
           .orderBy(F.desc("finished_at")).select("table_versions").first())
    return row["table_versions"] if row else None
