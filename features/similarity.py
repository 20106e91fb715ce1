"""Exact nearest videos by cosine within one embedding space: look one video up, or write the
all-pairs top-k of a space to ``video_neighbors`` (candidate generation, near-duplicate detection).
The search itself is :func:`features.knn.top_k_neighbours`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from catalogfs.config import StorageConfig
from features import delta_writer
from features.knn import top_k_neighbours
from features.promotion import current_space
from features.tables import VIDEO_EMBEDDINGS, VIDEO_NEIGHBORS
from catalogfs.errors import SimilarityError  # noqa: F401 (raised here, importable from here)


@dataclass(frozen=True)
class Neighbour:
    video_id: str
    score: float
    rank: int


def load_space(spark: SparkSession, storage: StorageConfig, space: str | None) -> tuple[str, list[str], np.ndarray]:
    """(space id, video ids, unit vectors) of one space; ``None`` means the current space."""
    space = space or current_space(spark, storage)
    if space is None:
        raise SimilarityError("no space given and no space is current: run the embed job first")
    rows = (spark.table(storage.qualified(VIDEO_EMBEDDINGS.name)).where(F.col("embedding_space") == space)
            .select("video_id", "embedding").orderBy("video_id").collect())
    if not rows:
        raise SimilarityError(f"space {space!r} has no video embeddings")
    return space, [r["video_id"] for r in rows], np.stack([np.asarray(r["embedding"], np.float32) for r in rows])


def similar_videos(spark: SparkSession, storage: StorageConfig, video_id: str, *, space: str | None = None,
                   k: int = 10) -> tuple[str, list[Neighbour]]:
    """The ``k`` videos nearest to ``video_id`` in ``space`` (default: the current space)."""
    space, ids, vectors = load_space(spark, storage, space)
    if video_id not in ids:
        raise SimilarityError(f"video {video_id!r} has no embedding in space {space!r}")
    i = ids.index(video_id)
    corpus = np.delete(vectors, i, axis=0)
    others = ids[:i] + ids[i + 1:]
    idx, scores = top_k_neighbours(vectors[i:i + 1], corpus, k)
    return space, [Neighbour(others[j], float(s), r + 1) for r, (j, s) in enumerate(zip(idx[0], scores[0]))]


def write_video_neighbors(spark: SparkSession, storage: StorageConfig, *, space: str | None, k: int,
                          run_id: str) -> tuple[str, int]:
    """All-pairs top-``k`` of one space into ``video_neighbors`` (that space's rows replaced in one
    commit). Returns (space, rows written)."""
    space, ids, vectors = load_space(spark, storage, space)
    idx, scores = top_k_neighbours(vectors, vectors, k, exclude_self=True)
    now = datetime.now(timezone.utc)
    rows = [(ids[i], space, ids[j], float(s), r + 1, run_id, now)
            for i in range(len(ids)) for r, (j, s) in enumerate(zip(idx[i], scores[i]))]
    df = spark.createDataFrame(rows, VIDEO_NEIGHBORS.schema)
    delta_writer.ensure_catalog(spark, storage, [VIDEO_NEIGHBORS])
    (df.write.format("delta").mode("overwrite")
     .option("replaceWhere", f"embedding_space = {delta_writer.sql_literal(space)}")
     .saveAsTable(storage.qualified(VIDEO_NEIGHBORS.name)))
    return space, len(rows)
