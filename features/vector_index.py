"""Build, validate and publish the ANN index of one space (``catalogfs index build``).

A build reads the space's vectors at one pinned Delta version of ``video_embeddings`` (level
``video``) or ``frame_embeddings`` (level ``frame``, ok frames), and:

1. **full**: trains the IVF coarse quantizer on the driver from a sample (``index.train_rows``),
   then adds the vectors in Spark tasks, one shard of about ``index.shard_rows`` vectors each, every
   task writing its shard file; the driver merges the shards into one file. Or **incremental**:
   the previous version plus the source table's change data feed since the version it was built
   from (deleted and replaced keys removed, new ones added), while the vectors added since the
   quantizer was trained stay under ``index.rebuild_drift`` of those it was trained on;
2. **validates** it: ``index.queries`` rows sampled by hash (the same each build) are searched in
   the index and exactly (a Spark job over the pinned table: each task keeps its top-k per query),
   each query's own row left out; recall@k per query goes through a Great Expectations suite
   (mean ≥ ``index.min_recall``). The smallest nprobe that meets it is kept;
3. records a ``vector_indexes`` row (validated or rejected) and, if validated, points the level's
   ``CURRENT`` file at the new version. A rejected version never becomes current.

The query side (:class:`features.ann.VectorIndex`) needs no Spark.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from catalogfs import failpoints
from catalogfs.config import Config
from catalogfs.errors import ChangeFeedError, VectorIndexError
from catalogfs.statuses import Status
from catalogfs.expectations.runner import validate_candidates
from catalogfs.expectations.suites import vector_index_suite
from catalogfs.features import ann, delta_writer
from catalogfs.features.change_feed import change_range, check_covered, read_changes
from catalogfs.features.promotion import current_space
from catalogfs.features.tables import FRAME_EMBEDDINGS, VECTOR_INDEXES, VIDEO_EMBEDDINGS

log = logging.getLogger(__name__)
SOURCES = {"video": VIDEO_EMBEDDINGS, "frame": FRAME_EMBEDDINGS}


@dataclass(frozen=True)
class IndexBuild:
    """What a build did: the version's manifest, whether it became current, and why not."""

    manifest: ann.Manifest | None
    status: str  # validated, rejected, or up_to_date (nothing changed since the current version)
    build_mode: str
    reason: str
    path: str | None = None
    recalls_tried: tuple[tuple[int, float], ...] = ()
    failures: tuple[str, ...] = ()
    seconds: float = 0.0


def source_vectors(spark: SparkSession, cfg: Config, space: str, level: str, version: int) -> DataFrame:
    """``id`` (xxhash64 of the key), the key columns and ``embedding`` of a space's indexable rows
    at ``version`` of the level's source table."""
    table = SOURCES[level]
    df = spark.sql(f"SELECT * FROM {cfg.storage.qualified(table.name)} VERSION AS OF {int(version)}")
    df = df.where((F.col("embedding_space") == space) & F.col("embedding").isNotNull())
    if level == "frame":
        df = df.where(F.col("status") == Status.OK)
    keys = ann.LEVELS[level]
    return df.select(F.xxhash64(*keys).alias("id"), *keys, "embedding")


def _stack(series: pd.Series, dim: int | None = None) -> np.ndarray:
    if len(series) == 0:
        return np.zeros((0, dim or 0), dtype=np.float32)
    return np.stack([np.asarray(v, dtype=np.float32) for v in series])


def _shard_writer(trained: bytes, folder: str):
    """The ``mapInPandas`` function of a full build: each task adds its rows to a copy of the
    trained empty index and writes ``shard-<partition>.faiss`` (written aside, then renamed, so a
    retried task replaces its shard whole)."""
    blob = np.frombuffer(trained, dtype=np.uint8)

    def add(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import os

        from pyspark import TaskContext

        index = ann.from_bytes(blob)
        count = 0
        for batch in batches:
            ann.add_vectors(index, batch["id"].to_numpy(), _stack(batch["embedding"]))
            count += len(batch)
        part = TaskContext.get().partitionId()
        path = Path(folder) / f"shard-{part:05d}.faiss"
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        ann.write_index(index, tmp)
        os.replace(tmp, path)
        yield pd.DataFrame({"path": [str(path)], "rows": [count]})

    return add


def _train(vectors: DataFrame, cfg: Config, kind: str, n: int, dim: int):
    """The trained, empty index of a full build (k-means on at most ``index.train_rows`` rows)."""
    nlist = 0 if kind == "flat" else (cfg.index.nlist or ann.auto_nlist(n, cfg.index.train_rows))
    sample = np.zeros((0, dim), dtype=np.float32)
    if kind != "flat":
        fraction = min(1.0, 1.2 * cfg.index.train_rows / max(n, 1))
        rows = vectors.sample(fraction=fraction, seed=7).limit(cfg.index.train_rows).select("embedding").toPandas()
        sample = _stack(rows["embedding"], dim)
        if len(sample) < nlist:
            raise VectorIndexError(f"{len(sample)} training vectors for {nlist} inverted lists: set index.nlist lower")
    return ann.trained_empty_index(kind, dim, sample, nlist, device=cfg.index.device), nlist, len(sample)


def full_build(spark: SparkSession, cfg: Config, vectors: DataFrame, folder: Path, *, n: int, dim: int):
    """The merged index of every row of ``vectors`` (sharded Spark build); (index, trained rows)."""
    kind = ann.choose_kind(cfg.index.kind, n, cfg.index.flat_below)
    trained, nlist, n_trained = _train(vectors, cfg, kind, n, dim)
    shards_dir = folder / "shards"
    shards_dir.mkdir(parents=True, exist_ok=True)
    n_shards = max(1, math.ceil(n / cfg.index.shard_rows))
    written = (vectors.repartition(n_shards, "id")
               .mapInPandas(_shard_writer(bytes(ann.to_bytes(trained)), str(shards_dir)), "path string, rows long")
               .collect())
    paths = sorted(Path(r["path"]) for r in written if r["rows"] > 0)
    index = ann.merge_shards(paths) if paths else ann.with_id_lookup(trained)
    shutil.rmtree(shards_dir, ignore_errors=True)
    log.info("index of %d vectors: %s, %d lists, %d shards, quantizer trained on %d", index.ntotal, kind, nlist,
             len(paths), n_trained)
    return index, kind, nlist, (n_trained if kind != "flat" else n)


def incremental_update(spark: SparkSession, cfg: Config, previous: ann.Manifest, previous_dir: Path, *,
                       space: str, level: str, version: int):
    """The previous index with the source table's net changes since its version applied:
    (index, keys frame, removed, added). Raises :class:`ChangeFeedError` when the feed does not
    cover the range."""
    table, keys = SOURCES[level].name, ann.LEVELS[level]
    rng = change_range(spark, cfg.storage, table, since=previous.source_version, until=version)
    columns = ("embedding", "status") if level == "frame" else ("embedding",)
    changes = read_changes(spark, cfg.storage, rng, columns=columns, net=True)
    changes = check_covered(spark, changes, rng, cfg.storage).where(F.col("embedding_space") == space)
    ok = F.col("embedding").isNotNull() & ((F.col("status") == Status.OK) if level == "frame" else F.lit(True))
    rows = (changes.select(F.xxhash64(*keys).alias("id"), *keys, "embedding",
                           (F.col("_change_type").isin("insert", "update_postimage") & ok).alias("keep"))
            .toPandas())
    index = ann.read_index(previous_dir / ann.INDEX_FILE)
    import pyarrow.parquet as pq

    old_keys = pq.read_table(previous_dir / ann.KEYS_FILE).to_pandas()
    added = rows[rows["keep"]]
    vectors = _stack(added["embedding"], previous.dim)
    moved = _moved_vectors(index, old_keys, added["id"].to_numpy(), vectors)
    removed = ann.remove_ids(index, rows["id"].to_numpy())  # every changed key leaves; kept ones come back
    ann.add_vectors(index, added["id"].to_numpy(), vectors)
    key_rows = pd.concat([old_keys[~old_keys["id"].isin(rows["id"])], added[["id", *keys]]], ignore_index=True)
    return ann.with_id_lookup(index), key_rows, removed, moved


def _moved_vectors(index, old_keys: pd.DataFrame, ids: np.ndarray, vectors: np.ndarray) -> int:
    """How many of ``ids`` bring a vector the index does not hold yet (a new key, or a key whose
    vector changed): what ages the quantizer. A row rewritten with the same vector does not."""
    held = set(old_keys["id"].tolist())
    count = 0
    for i, vector in zip(ids.tolist(), vectors):
        count += 1 if i not in held or not np.allclose(index.reconstruct(int(i)), vector, atol=1e-6) else 0
    return count


def exact_neighbours(spark: SparkSession, vectors: DataFrame, queries: np.ndarray, query_ids: np.ndarray,
                     k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` (scores, ids) of each query over ``vectors``, its own row left out: each
    Spark task keeps its partition's best k per query; the driver merges them."""
    q, qids = np.ascontiguousarray(queries, dtype=np.float32), np.asarray(query_ids, dtype=np.int64)

    def best(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        top_s = np.full((len(q), k), -np.inf, dtype=np.float32)
        top_i = np.full((len(q), k), ann.NO_ID, dtype=np.int64)
        for batch in batches:
            ids = batch["id"].to_numpy()
            rows = _stack(batch["embedding"], q.shape[1])
            for lo in range(0, len(q), 1024):  # a bounded matrix per step, whatever the query count
                part = slice(lo, lo + 1024)
                sims = q[part] @ rows.T
                sims[qids[part, None] == ids[None, :]] = -np.inf
                all_s = np.hstack([top_s[part], sims])
                all_i = np.hstack([top_i[part], np.broadcast_to(ids, sims.shape)])
                order = np.argsort(-all_s, axis=1, kind="stable")[:, :k]
                top_s[part], top_i[part] = np.take_along_axis(all_s, order, 1), np.take_along_axis(all_i, order, 1)
        yield pd.DataFrame({"query": np.repeat(np.arange(len(q)), k), "id": top_i.ravel(), "score": top_s.ravel()})

    parts = vectors.select("id", "embedding").mapInPandas(best, "query long, id long, score float").toPandas()
    parts = parts[np.isfinite(parts["score"])].sort_values(["query", "score", "id"], ascending=[True, False, True])
    scores = np.full((len(q), k), -np.inf, dtype=np.float32)
    ids = np.full((len(q), k), ann.NO_ID, dtype=np.int64)
    for query, group in parts.groupby("query"):
        top = group.head(k)
        scores[query, :len(top)], ids[query, :len(top)] = top["score"].to_numpy(), top["id"].to_numpy()
    return scores, ids


def held_back_queries(vectors: DataFrame, n: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of the ``n`` rows with the smallest salted hash of their id: a top-n, not a
    sort; the same rows every build while they exist."""
    rows = (vectors.orderBy(F.xxhash64("id", F.lit("catalogfs-recall-queries"))).limit(n)
            .select("id", "embedding").toPandas())
    return rows["id"].to_numpy(), _stack(rows["embedding"], dim)


def check_recall(spark: SparkSession, cfg: Config, index, vectors: DataFrame, report_dir: Path, *, dim: int):
    """(nprobe, mean recall, tried, GE outcome): the index against exact search on the held-back
    queries. Half of them (the tuning half) choose nprobe — the smallest that reaches
    ``min_recall + recall_margin`` there; the other half (the gate) is measured at that nprobe and
    goes through the ``vector_index`` Great Expectations suite, so the recorded recall is not the
    one nprobe was chosen on."""
    k = cfg.index.k
    qids, queries = held_back_queries(vectors, cfg.index.queries, dim)
    exact = exact_neighbours(spark, vectors, queries, qids, k)
    tune, gate = (slice(0, None, 2), slice(1, None, 2)) if len(qids) > 1 else (slice(None), slice(None))
    target = min(1.0, cfg.index.min_recall + cfg.index.recall_margin)
    nprobe, _, tried = ann.choose_nprobe(index, queries[tune], qids[tune], (exact[0][tune], exact[1][tune]), k=k,
                                         min_recall=target, max_nprobe=cfg.index.max_nprobe)
    recall = ann.recall_at(index, queries[gate], qids[gate], (exact[0][gate], exact[1][gate]), k=k, nprobe=nprobe)
    recall_df = spark.createDataFrame(pd.DataFrame({"query_id": qids[gate].astype("int64"), "recall_at_k": recall}))
    outcome = validate_candidates({"vector_index": (recall_df, vector_index_suite(cfg.index.min_recall))},
                                  report_dir, driver_max_rows=len(recall) + 1)
    return nprobe, float(recall.mean()) if len(recall) else 1.0, tried, outcome


def current_manifest(cfg: Config, space: str, level: str) -> ann.Manifest | None:
    """The manifest ``CURRENT`` names; None when there is none, or its folder is gone or damaged
    (logged: the next build is then a full one)."""
    index_id = ann.current_id(cfg.storage.indexes_dir, space, level)
    if index_id is None:
        return None
    try:
        return ann.Manifest.read(ann.level_dir(cfg.storage.indexes_dir, space, level) / index_id)
    except (VectorIndexError, ValueError, TypeError) as exc:
        log.warning("current index %s of %s/%s is unreadable (%s): building in full", index_id, space, level, exc)
        return None


def _mode(cfg: Config, previous: ann.Manifest | None, full: bool, kind: str) -> tuple[str, str]:
    if full:
        return "full", "full build asked for (--full)"
    if previous is None:
        return "full", "no current index of the space"
    if previous.kind != kind:
        return "full", f"the index kind changes from {previous.kind} to {kind}"
    drift = previous.added_since_training / max(previous.trained_vectors, 1)
    if previous.kind != "flat" and drift > cfg.index.rebuild_drift:
        return "full", (f"{previous.added_since_training} vectors added since the quantizer was trained on "
                        f"{previous.trained_vectors} (> index.rebuild_drift {cfg.index.rebuild_drift})")
    return "incremental", f"changes since {previous.source_table} v{previous.source_version} added to {previous.index_id}"


def _write_version(index, key_rows: pd.DataFrame, folder: Path, manifest: ann.Manifest) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    ann.write_index(index, folder / ann.INDEX_FILE)
    pq.write_table(pa.Table.from_pandas(key_rows.reset_index(drop=True), preserve_index=False), folder / ann.KEYS_FILE)
    manifest.write(folder)


def _count(vectors: DataFrame) -> tuple[int, int, int]:
    """(rows, distinct usable ids, dimension) in one Spark job (an id equal to faiss' padding
    value counts as a collision)."""
    usable = F.when(F.col("id") != ann.NO_ID, F.col("id"))
    row = vectors.agg(F.count(F.lit(1)).alias("n"), F.countDistinct(usable).alias("ids"),
                      F.max(F.size("embedding")).alias("dim")).first()
    return int(row["n"]), int(row["ids"]), int(row["dim"] or 0)


def build_index(spark: SparkSession, cfg: Config, *, space: str | None = None, level: str = "video",
                full: bool = False) -> IndexBuild:
    """Build the next index version of ``space`` (default: the current space) at ``level``,
    validate it and make it current if it passes. See the module docstring."""
    started, clock = datetime.now(timezone.utc), time.perf_counter()
    failpoints.phase("index.plan")
    space = _resolve_space(spark, cfg, space)
    folder_of = ann.level_dir(cfg.storage.indexes_dir, space, level)
    table = SOURCES[level].name
    version = delta_writer.table_version(spark, cfg.storage, table)
    previous = current_manifest(cfg, space, level)
    if previous is not None and previous.source_version == version and not full:
        return IndexBuild(previous, "up_to_date", "none", f"{table} is still at v{version}, as when "
                          f"{previous.index_id} was built", str(folder_of / previous.index_id))
    vectors = source_vectors(spark, cfg, space, level, version)
    n, distinct, dim = _count(vectors)
    if n == 0:
        raise VectorIndexError(f"space {space!r} has no {level} vectors in {cfg.storage.qualified(table)} v{version}")
    if distinct != n:
        raise VectorIndexError(f"{n - distinct} key hash collisions among {n} {level} keys of space {space!r}")
    kind = ann.choose_kind(cfg.index.kind, n, cfg.index.flat_below)
    mode, reason = _mode(cfg, previous, full, kind)
    index_id = f"{started:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    folder = folder_of / index_id
    failpoints.phase("index.build")
    index, key_rows, manifest, mode, reason = _make(spark, cfg, vectors, folder, mode, reason, previous, space=space,
                                                    level=level, version=version, n=n, dim=dim, index_id=index_id)
    failpoints.phase("index.recall")
    nprobe, recall, tried, outcome = check_recall(spark, cfg, index, vectors, folder / "validation", dim=dim)
    manifest = replace(manifest, nprobe=nprobe, recall_at_k=recall)
    failpoints.phase("index.write")
    _write_version(index, key_rows, folder, manifest)
    status = "validated" if outcome.success else "rejected"
    build = IndexBuild(manifest, status, mode, reason, str(folder), tuple(tried),
                       tuple(outcome.failures), time.perf_counter() - clock)
    failpoints.phase("index.record")
    record_build(spark, cfg, build, previous, started, outcome.reports.get("vector_index"))
    if outcome.success:
        failpoints.phase("index.current")
        _make_current(cfg, manifest)
    return build


def _make_current(cfg: Config, manifest: ann.Manifest) -> None:
    """Point ``CURRENT`` at ``manifest``'s version, under a lock, unless a concurrent build already
    made a version of a newer source version current (the newer one stays)."""
    import fcntl

    folder = ann.level_dir(cfg.storage.indexes_dir, manifest.space, manifest.level)
    with open(folder / ".current.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        now = current_manifest(cfg, manifest.space, manifest.level)
        if now is not None and now.source_version > manifest.source_version:
            log.warning("index %s not made current: %s (of a newer source version) is", manifest.index_id, now.index_id)
            return
        ann.set_current(cfg.storage.indexes_dir, manifest.space, manifest.level, manifest.index_id)


def _resolve_space(spark: SparkSession, cfg: Config, space: str | None) -> str:
    space = space or current_space(spark, cfg.storage)
    if space is None:
        raise VectorIndexError("no space given and no space is current: run the embed job first")
    return space


def _make(spark: SparkSession, cfg: Config, vectors: DataFrame, folder: Path, mode: str, reason: str,
          previous: ann.Manifest | None, *, space: str, level: str, version: int, n: int, dim: int, index_id: str):
    """(index, keys, manifest, mode, reason) of the new version; an incremental build whose change
    data is missing falls back to a full one (the reason says so)."""
    table, keys = SOURCES[level].name, ann.LEVELS[level]
    if mode == "incremental":
        assert previous is not None
        try:
            index, key_rows, removed, moved = incremental_update(
                spark, cfg, previous, ann.level_dir(cfg.storage.indexes_dir, space, level) / previous.index_id,
                space=space, level=level, version=version)
            if int(index.ntotal) != n or len(key_rows) != n:  # the feed and the table disagree: trust the table
                raise ChangeFeedError(f"{int(index.ntotal)} vectors after applying the change feed, the table has {n}")
            manifest = replace(previous, index_id=index_id, source_version=version, n_vectors=n, k=cfg.index.k,
                               added_since_training=previous.added_since_training + moved)
            return index, key_rows, manifest, mode, f"{reason}: {removed} removed, {moved} new or moved vectors"
        except (ChangeFeedError, VectorIndexError) as exc:
            mode, reason = "full", f"full build: {exc}"
    index, kind, nlist, trained = full_build(spark, cfg, vectors, folder, n=n, dim=dim)
    key_rows = vectors.select("id", *keys).toPandas()
    manifest = ann.Manifest(index_id=index_id, space=space, level=level, kind=kind, dim=dim, nlist=nlist, nprobe=0,
                            n_vectors=int(index.ntotal), source_table=table, source_version=version,
                            recall_at_k=0.0, k=cfg.index.k, trained_vectors=trained, added_since_training=0)
    return index, key_rows, manifest, mode, reason


def record_build(spark: SparkSession, cfg: Config, build: IndexBuild, previous: ann.Manifest | None,
                 started: datetime, report: str | None) -> None:
    """Append the build's ``vector_indexes`` row (before ``CURRENT`` moves: a version that is
    current always has its row)."""
    m = build.manifest
    assert m is not None
    row = {"index_id": m.index_id, "embedding_space": m.space, "level": m.level, "kind": m.kind,
           "status": build.status, "build_mode": build.build_mode, "source_table": m.source_table,
           "source_version": m.source_version, "n_vectors": m.n_vectors, "dim": m.dim, "nlist": m.nlist,
           "nprobe": m.nprobe, "recall_at_k": float(m.recall_at_k), "k": m.k, "n_queries": int(cfg.index.queries),
           "min_recall": float(cfg.index.min_recall), "trained_vectors": m.trained_vectors,
           "added_since_training": m.added_since_training, "path": build.path or "",
           "validation_report": report, "failed_expectations": "; ".join(build.failures) or None,
           "previous_index_id": previous.index_id if previous else None, "note": build.reason,
           "build_seconds": float(build.seconds), "built_at": started}
    delta_writer.ensure_catalog(spark, cfg.storage, [VECTOR_INDEXES])
    delta_writer.append_rows(spark, cfg.storage, VECTOR_INDEXES,
                             spark.createDataFrame([row], VECTOR_INDEXES.schema))


def list_indexes(spark: SparkSession, cfg: Config, space: str | None = None) -> list[dict]:
    """The ``vector_indexes`` rows (newest first), each with ``current``: whether its level's
    ``CURRENT`` file names it."""
    name = cfg.storage.qualified(VECTOR_INDEXES.name)
    if not spark.catalog.tableExists(name):
        return []
    df = spark.table(name)
    if space:
        df = df.where(F.col("embedding_space") == space)
    rows = [r.asDict() for r in df.orderBy(F.desc("built_at")).collect()]
    for r in rows:
        r["current"] = ann.current_id(cfg.storage.indexes_dir, r["embedding_space"], r["level"]) == r["index_id"]
    return rows
