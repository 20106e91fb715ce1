"""Approximate nearest-neighbour indexes of one space's vectors, with faiss — free of Spark, so a
service loads an index once (memory-mapped) and queries it many times without a Spark session.

An index version is a folder::

    <indexes>/<space>/<level>/<index id>/
        index.faiss      the faiss index (inner product on unit vectors = cosine)
        keys.parquet     faiss id → key (video_id, and frame_ts_ms for frame indexes)
        manifest.json    space, level, kind, nlist, nprobe, source table and Delta version, recall
    <indexes>/<space>/<level>/CURRENT   the id of the current (validated) version, replaced atomically

Ids are ``xxhash64`` of the key computed by Spark at build time; the keys file maps them back.
Why faiss IVF-Flat (and a flat exact index for small spaces): see ``docs/design/vector-indexes.md``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from catalogfs.errors import VectorIndexError

LEVELS = {"video": ("video_id",), "frame": ("video_id", "frame_ts_ms")}
INDEX_FILE, KEYS_FILE, MANIFEST_FILE, CURRENT_FILE = "index.faiss", "keys.parquet", "manifest.json", "CURRENT"
NO_ID = -1  # faiss pads missing results with id -1 (ids are xxhash64 values: negative ones are real)
NPROBE_LADDER = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048, 4096)


def _faiss():
    import logging

    # faiss' loader logs, at INFO, each CPU-specific library it does not find: noise, not an error
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        import faiss  # noqa: PLC0415 - optional at import time of this module's users
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise VectorIndexError("faiss is not installed: pip install faiss-cpu (or faiss-gpu on CUDA)") from exc
    return faiss


def auto_nlist(n_vectors: int, train_rows: int | None = None) -> int:
    """Inverted lists for ``n_vectors``: about 4·√n (faiss' guidance), at least 1, and at most
    (training rows)/39 so that each list has the ≥ 39 training points k-means wants."""
    trained_on = n_vectors if train_rows is None else min(n_vectors, train_rows)
    return max(1, min(int(4 * np.sqrt(max(n_vectors, 1))), trained_on // 39))


def choose_kind(requested: str, n_vectors: int, flat_below: int) -> str:
    if requested == "auto":
        return "flat" if n_vectors < flat_below else "ivf_flat"
    return requested


def gpus() -> int:
    """GPUs faiss can use (0 with faiss-cpu, which has no GPU functions)."""
    return int(getattr(_faiss(), "get_num_gpus", lambda: 0)())


def train_on_gpu(device: str) -> bool:
    """Whether k-means training runs on the GPUs: ``auto`` when faiss sees one, ``gpu`` always (a
    clear error without one), ``cpu`` never."""
    if device == "cpu":
        return False
    if device not in ("auto", "gpu"):
        raise VectorIndexError(f"index.device must be auto, cpu or gpu, got {device!r}")
    found = gpus()
    if device == "gpu" and found == 0:
        raise VectorIndexError("index.device is gpu, but faiss sees no GPU (faiss-cpu is installed, or no CUDA "
                               "device is visible): install a faiss GPU build on a GPU machine, or set index.device auto")
    return found > 0


def trained_empty_index(kind: str, dim: int, sample: np.ndarray, nlist: int, *, device: str = "cpu"):
    """An empty faiss index ready for ``add_with_ids``: a flat exact index, or an IVF whose coarse
    quantizer is trained (k-means) on ``sample`` — on the GPUs when :func:`train_on_gpu` says so
    (faiss' ``clustering_index``: the k-means assignments run there; the index itself stays a CPU
    index, so shards, files and queries are the same either way)."""
    faiss = _faiss()
    if kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    if kind != "ivf_flat":
        raise VectorIndexError(f"index.kind must be auto, ivf_flat or flat, got {kind!r}")
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = 1234  # the same sample trains the same quantizer
    if train_on_gpu(device):
        index.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(dim))
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    return index


def with_id_lookup(index):
    """``index`` able to give the vector of an id (``reconstruct``, for queries by key): an IVF
    gets a hash-table direct map (shards are merged without one: faiss cannot merge them)."""
    if hasattr(index, "set_direct_map_type"):
        index.set_direct_map_type(_faiss().DirectMap.Hashtable)
    return index


def _without_id_lookup(index):
    if hasattr(index, "set_direct_map_type"):
        index.set_direct_map_type(_faiss().DirectMap.NoMap)
    return index


def to_bytes(index) -> np.ndarray:
    return _faiss().serialize_index(index)


def from_bytes(data: np.ndarray):
    return _faiss().deserialize_index(np.asarray(data, dtype=np.uint8))


def add_vectors(index, ids: np.ndarray, vectors: np.ndarray) -> None:
    if len(ids):
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64))


def remove_ids(index, ids: Sequence[int]) -> int:
    if not len(ids):
        return 0
    faiss = _faiss()
    wanted = np.ascontiguousarray(np.asarray(ids, dtype=np.int64))
    # an IVF with a hash-table direct map removes only through an IDSelectorArray
    return int(index.remove_ids(faiss.IDSelectorArray(len(wanted), faiss.swig_ptr(wanted))))


def write_index(index, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _faiss().write_index(index, str(path))


def read_index(path: Path, *, mmap: bool = False):
    faiss = _faiss()
    if not path.exists():
        raise VectorIndexError(f"index file {path} is missing")
    try:
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0)
    except RuntimeError as exc:
        raise VectorIndexError(f"index file {path} cannot be read: {str(exc).splitlines()[0][:200]}") from exc


def merge_shards(paths: Sequence[Path]):
    """One index from shard files built from the same trained index (read and merged one at a time,
    so the driver holds the merged index plus one shard)."""
    if not paths:
        raise VectorIndexError("no shard to merge")
    merged = _without_id_lookup(read_index(paths[0]))
    for path in paths[1:]:
        merged.merge_from(_without_id_lookup(read_index(path)), 0)
    return with_id_lookup(merged)


def for_queries(index, nprobe: int | None = None):
    """``index`` set up to answer queries: ``nprobe`` lists each, and one query's lists searched by
    all threads (faiss ``parallel_mode`` 1; its default splits a batch by query, which leaves a
    single query on one core)."""
    ivf = _faiss().try_extract_index_ivf(index)
    if ivf is not None:
        ivf.parallel_mode = 1
        if nprobe:
            ivf.nprobe = int(nprobe)
    return index


def search(index, queries: np.ndarray, k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) of the ``k`` best rows per query; :data:`NO_ID` pads when the index has fewer rows."""
    if nprobe is not None and hasattr(index, "nprobe"):
        index.nprobe = int(nprobe)
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), int(k))


def recall_per_query(found_ids: np.ndarray, found_scores: np.ndarray, exact_ids: np.ndarray,
                     exact_scores: np.ndarray, k: int, *, tie: float = 1e-5) -> np.ndarray:
    """Share of each query's exact top-``k`` found by the index (id :data:`NO_ID` is padding). A found row
    outside the exact answer counts only when it ties with the exact k-th score (within ``tie``):
    among equal scores (duplicate videos) any is right; a row scoring above it is not (an index
    holding a vector the table no longer has must fail the check)."""
    out = np.ones(len(exact_ids), dtype=np.float64)
    for i in range(len(exact_ids)):
        valid = exact_ids[i][:k] != NO_ID
        truth = {int(x) for x in exact_ids[i][:k][valid]}
        if not truth:
            continue
        kth = float(exact_scores[i][:k][valid].min())
        hits = sum(1 for x, s in zip(found_ids[i][:k], found_scores[i][:k])
                   if x != NO_ID and (int(x) in truth or abs(float(s) - kth) <= tie))
        out[i] = min(hits, len(truth)) / len(truth)
    return out


def drop_self(scores: np.ndarray, ids: np.ndarray, self_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` per row once the query's own id is removed (results of a search for k + 1)."""
    out_ids = np.full((len(ids), k), NO_ID, dtype=np.int64)
    out_scores = np.full((len(ids), k), -np.inf, dtype=np.float32)
    for i in range(len(ids)):
        keep = ids[i] != self_ids[i]
        row_ids, row_scores = ids[i][keep][:k], scores[i][keep][:k]
        out_ids[i, :len(row_ids)], out_scores[i, :len(row_scores)] = row_ids, row_scores
    return out_scores, out_ids


def recall_at(index, queries: np.ndarray, self_ids: np.ndarray, exact: tuple[np.ndarray, np.ndarray], *, k: int,
              nprobe: int) -> np.ndarray:
    """Per-query recall@k of ``index`` searched with ``nprobe`` lists (0: a flat index) against
    ``exact`` (scores, ids), each query's own row left out."""
    scores, ids = search(index, queries, k + 1, nprobe or None)
    scores, ids = drop_self(scores, ids, self_ids, k)
    return recall_per_query(ids, scores, exact[1], exact[0], k)


def choose_nprobe(index, queries: np.ndarray, self_ids: np.ndarray, exact: tuple[np.ndarray, np.ndarray], *,
                  k: int, min_recall: float, max_nprobe: int = 0) -> tuple[int, np.ndarray, list[tuple[int, float]]]:
    """The smallest nprobe of :data:`NPROBE_LADDER` (up to nlist) whose mean recall@k reaches
    ``min_recall`` — or the largest allowed (``max_nprobe``, 0: nlist, which searches every list:
    exact up to ties) when none does. ``exact``: (scores, ids) of exact search with each query's
    own row left out. Returns (nprobe, per-query recall at it, [(nprobe, mean recall)] tried). A
    flat index gives nprobe 0."""
    nlist = int(getattr(index, "nlist", 0))
    top = min(nlist, max_nprobe) if max_nprobe else nlist
    ladder = [p for p in NPROBE_LADDER if p < top] + [top] if nlist else [0]
    tried, recall = [], np.zeros(0)
    for nprobe in ladder:
        recall = recall_at(index, queries, self_ids, exact, k=k, nprobe=nprobe)
        tried.append((nprobe, float(recall.mean())))
        if recall.mean() >= min_recall:
            break
    return tried[-1][0], recall, tried


@dataclass(frozen=True)
class Manifest:
    """What an index version holds and how it was checked (``manifest.json``)."""

    index_id: str
    space: str
    level: str
    kind: str
    dim: int
    nlist: int
    nprobe: int
    n_vectors: int
    source_table: str
    source_version: int
    recall_at_k: float
    k: int
    trained_vectors: int
    added_since_training: int

    def write(self, directory: Path) -> None:
        (directory / MANIFEST_FILE).write_text(json.dumps(self.__dict__, indent=2, sort_keys=True))

    @classmethod
    def read(cls, directory: Path) -> "Manifest":
        path = directory / MANIFEST_FILE
        if not path.exists():
            raise VectorIndexError(f"{path} is missing: not an index folder")
        return cls(**json.loads(path.read_text()))


def level_dir(indexes_dir: Path, space: str, level: str) -> Path:
    if level not in LEVELS:
        raise VectorIndexError(f"level must be one of {sorted(LEVELS)}, got {level!r}")
    return Path(indexes_dir) / space / level


def set_current(indexes_dir: Path, space: str, level: str, index_id: str) -> None:
    """Point ``CURRENT`` at ``index_id`` (write a temporary file, then an atomic rename)."""
    import uuid

    folder = level_dir(indexes_dir, space, level)
    tmp = folder / f".{CURRENT_FILE}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    tmp.write_text(index_id + "\n")
    os.replace(tmp, folder / CURRENT_FILE)


def current_id(indexes_dir: Path, space: str, level: str) -> str | None:
    path = level_dir(indexes_dir, space, level) / CURRENT_FILE
    return path.read_text().strip() if path.exists() else None


def prune_versions(indexes_dir: Path, *, keep: int, min_age_hours: float = 1.0, now: float | None = None) -> list[Path]:
    """Delete old index versions: in every ``<space>/<level>`` folder, each version folder but the
    current one and the ``keep`` newest (ids start with the build's UTC time, so they sort by age).
    A folder modified in the last ``min_age_hours`` stays (a build writes its version before it
    becomes current). A service that holds a deleted version memory-mapped keeps reading it: the
    files go when it closes them. Returns the folders removed."""
    import shutil
    import time

    cutoff = (time.time() if now is None else now) - min_age_hours * 3600
    removed: list[Path] = []
    root = Path(indexes_dir)
    for folder in sorted(p for p in root.glob("*/*") if p.is_dir() and p.name in LEVELS):
        versions = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
        current = current_id(root, folder.parent.name, folder.name)
        for version in versions[:-keep] if keep > 0 else versions:
            touched = max((f.stat().st_mtime for f in version.rglob("*")), default=0.0)
            if version.name == current or max(touched, version.stat().st_mtime) >= cutoff:
                continue
            shutil.rmtree(version, ignore_errors=True)
            removed.append(version)
    return removed


class VectorIndex:
    """A loaded index version: query by vector or by key. Load once, query many; no Spark.

    >>> index = VectorIndex.open_current(cfg.storage.indexes_dir, space, "video")
    >>> index.search(vectors, k=10)          # [[(key, score), …] per query]
    >>> index.similar_to(("cat_chelsea",), k=10)
    """

    def __init__(self, directory: Path, *, mmap: bool = True) -> None:
        import pyarrow.parquet as pq

        self.directory = Path(directory)
        self.manifest = Manifest.read(self.directory)
        self.index = read_index(self.directory / INDEX_FILE, mmap=mmap)
        keys = pq.read_table(self.directory / KEYS_FILE)
        self._ids = keys.column("id").to_numpy()
        self._columns = LEVELS[self.manifest.level]
        self._keys = list(zip(*(keys.column(c).to_pylist() for c in self._columns)))
        self._row = {int(i): n for n, i in enumerate(self._ids)}
        self._id_of = {key: int(i) for key, i in zip(self._keys, self._ids)}
        for_queries(self.index, max(1, self.manifest.nprobe))

    @classmethod
    def open_current(cls, indexes_dir: Path, space: str, level: str = "video", *, mmap: bool = True) -> "VectorIndex":
        index_id = current_id(indexes_dir, space, level)
        if index_id is None:
            raise VectorIndexError(f"space {space!r} has no current {level} index: run `catalogfs index build`")
        return cls(level_dir(indexes_dir, space, level) / index_id, mmap=mmap)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, tuple) and key in self._id_of

    def key(self, faiss_id: int) -> tuple:
        return self._keys[self._row[int(faiss_id)]]

    def vector(self, key: Sequence) -> np.ndarray:
        """The indexed vector of ``key`` (a tuple of the level's key columns)."""
        faiss_id = self._id_of.get(tuple(key))
        if faiss_id is None:
            raise VectorIndexError(f"{dict(zip(self._columns, key))} is not in index {self.manifest.index_id}")
        return self.index.reconstruct(faiss_id)

    def search(self, vectors: np.ndarray, k: int = 10, *, exclude: Sequence[tuple] = ()) -> list[list[tuple[tuple, float]]]:
        """The ``k`` nearest keys and cosine scores of each query row (best first); keys in
        ``exclude`` (one per query, or none) are left out of that query's results."""
        queries = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        extra = 1 if exclude else 0
        scores, ids = self.index.search(np.ascontiguousarray(queries), int(k) + extra)
        results = []
        for row, (s, i) in enumerate(zip(scores, ids)):
            skip = self._id_of.get(tuple(exclude[row])) if exclude else None
            hits = [(self.key(x), float(v)) for x, v in zip(i, s) if x != NO_ID and x != skip]
            results.append(hits[:k])
        return results

    def similar_to(self, key: Sequence, k: int = 10) -> list[tuple[tuple, float]]:
        """The ``k`` nearest other keys to an indexed ``key``."""
        return self.search(self.vector(key)[None], k, exclude=[tuple(key)])[0]
