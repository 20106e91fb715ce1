"""Nearest neighbours within one embedding space: :func:`similar` answers one query (a video, a
frame or an image file) from the space's current ANN index, or exactly with a Spark job
(:mod:`features.vector_index`); :func:`write_video_neighbors` writes the all-pairs top-k of a space
to ``video_neighbors`` (candidate generation, near-duplicate detection) with
:func:`features.knn.top_k_neighbours`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from catalogfs.config import Config, StorageConfig
from catalogfs.features import ann, delta_writer
from catalogfs.features.knn import top_k_neighbours
from catalogfs.features.promotion import current_space
from catalogfs.features.tables import VIDEO_EMBEDDINGS, VIDEO_NEIGHBORS
from catalogfs.features.vector_index import SOURCES, exact_neighbours, source_vectors
from catalogfs.errors import SimilarityError, VectorIndexError

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class SearchResult:
    """Nearest rows to one query: each hit is ``{key columns…, "score", "rank"}``; ``search`` says
    how they were found (``index <id> (nprobe n)`` or ``exact``)."""

    space: str
    level: str
    search: str
    hits: list[dict]


def query_vector(spark: SparkSession, cfg: Config, space: str, level: str, *, key: tuple | None = None,
                 image: bytes | None = None) -> np.ndarray:
    """The vector to search with: the stored one of ``key`` (its row in the level's table), or
    ``image`` embedded by the space's own model version (no Spark job)."""
    if image is not None:
        return embed_image(spark, cfg, space, image)

    columns = ann.LEVELS[level]
    df = spark.table(cfg.storage.qualified(SOURCES[level].name)).where(F.col("embedding_space") == space)
    for column, value in zip(columns, key or ()):
        df = df.where(F.col(column) == value)
    row = df.where(F.col("embedding").isNotNull()).select("embedding").first()
    if row is None:
        raise SimilarityError(f"{level} {dict(zip(columns, key or ()))} has no embedding in space {space!r}")
    return np.asarray(row["embedding"], dtype=np.float32)


def embed_image(spark: SparkSession, cfg: Config, space: str, image: bytes) -> np.ndarray:
    """``image`` (encoded bytes) embedded by the model version that made ``space``."""
    from mlflow import MlflowClient

    from catalogfs.tracking import configure_mlflow
    from catalogfs.features.promotion import space_model
    from catalogfs.features.staging import engine_options
    from catalogfs.udfs.engine import cached_engine
    from catalogfs.udfs.model_registry import ModelRef, local_bundle_dir, resolve_model

    owner = space_model(spark, cfg.storage, space)
    if owner is None:
        raise SimilarityError(f"space {space!r} was never published: no model to embed the image with")
    configure_mlflow(cfg)
    model = resolve_model(MlflowClient(), ModelRef(owner.model_name, version=owner.model_version),
                          cache_dir=cfg.storage.model_cache_dir)
    directory = local_bundle_dir(model.source_uri, cfg.storage.model_cache_dir / model.name / model.version)
    result = cached_engine(directory, engine_options(cfg)).embed([image])
    if result.embeddings[0] is None:
        raise SimilarityError(f"the image cannot be embedded: {result.statuses[0]}: {result.errors[0]}")
    return np.asarray(result.embeddings[0], dtype=np.float32)


def similar(spark: SparkSession, cfg: Config, *, level: str = "video", key: tuple | None = None,
            image: bytes | None = None, space: str | None = None, k: int = 10, exact: bool = False) -> SearchResult:
    """The ``k`` rows of ``level`` nearest to an indexed ``key`` or to an ``image``, in ``space``
    (default: the current space): from the space's current ANN index, or exactly (``exact``, or
    when the space has no index yet) by a Spark job over the table."""

    if (key is None) == (image is None):
        raise SimilarityError("give exactly one of a key or an image to search with")
    columns = ann.LEVELS.get(level, ())
    if key is not None and len(key) != len(columns):
        raise SimilarityError(f"a {level} key is ({', '.join(columns)}), got {tuple(key)!r}")
    space = space or current_space(spark, cfg.storage)
    if space is None:
        raise SimilarityError("no space given and no space is current: run the embed job first")
    index = None if exact else _current_index(cfg, space, level)
    if index is not None and key is not None and image is None and tuple(key) in index:
        vector = index.vector(key)
    else:
        vector = query_vector(spark, cfg, space, level, key=key, image=image)
    if index is not None:
        found = index.search(vector[None], k, exclude=[tuple(key)] if key is not None else ())[0]
        hits = [{**dict(zip(columns, hit_key)), "score": score, "rank": r + 1} for r, (hit_key, score) in enumerate(found)]
        return SearchResult(space, level, f"index {index.manifest.index_id} (nprobe {index.manifest.nprobe})", hits)
    version = delta_writer.table_version(spark, cfg.storage, SOURCES[level].name)
    vectors = source_vectors(spark, cfg, space, level, version)
    self_id = _key_id(spark, key) if key is not None else None
    scores, ids = exact_neighbours(spark, vectors, vector[None], np.array([self_id if self_id is not None else 0]), k)
    keys = {r["id"]: tuple(r[c] for c in columns)
            for r in vectors.where(F.col("id").isin([int(i) for i in ids[0] if i != ann.NO_ID])).collect()}
    hits = [{**dict(zip(columns, keys[int(i)])), "score": float(s), "rank": r + 1}
            for r, (i, s) in enumerate((i, s) for i, s in zip(ids[0], scores[0]) if i != ann.NO_ID)]
    note = "exact" if exact else "exact (the space has no current index: `catalogfs index build`)"
    return SearchResult(space, level, note, hits)


def _current_index(cfg: Config, space: str, level: str) -> "ann.VectorIndex | None":
    if ann.current_id(cfg.storage.indexes_dir, space, level) is None:
        return None
    try:
        return ann.VectorIndex.open_current(cfg.storage.indexes_dir, space, level)
    except VectorIndexError as exc:  # a damaged current version: answer exactly rather than not at all
        log.warning("current %s index of %s unreadable (%s): exact search", level, space, exc)
        return None


def _key_id(spark: SparkSession, key: tuple) -> int:
    """The index id of ``key``: Spark's xxhash64 of its columns (as the build computes it)."""
    from pyspark.sql.types import LongType, StringType, StructField, StructType

    fields = [StructField(f"k{i}", StringType() if isinstance(v, str) else LongType()) for i, v in enumerate(key)]
    row = spark.createDataFrame([tuple(key)], StructType(fields)).select(F.xxhash64(*[f.name for f in fields])).first()
    return int(row[0])
