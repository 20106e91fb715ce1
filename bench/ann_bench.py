"""ANN index benchmark (``make bench-ann``): the store's faiss index path against exact search on
the same vectors, in the same process and run. No Spark: the index functions the Spark build
calls (:mod:`features.ann`), with the build's shard-and-merge done in-process.

    python bench/ann_bench.py                       # 1 000 000 vectors of 1280-d (about 10 GB RAM)
    python bench/ann_bench.py --n 100000             # a minute

Vectors: synthetic, unit length, clustered like image embeddings (a mixture of ``--clusters``
centres, each cluster spread in a 64-d random subspace plus small isotropic noise) — uniform
random vectors in 1280-d have no neighbours worth the name and no index helps them. Queries
are held out: drawn from the same mixture, never added. Reported per method: build seconds,
single-query p50/p99 and queries/s, a batch of 1 000 queries, recall@10 against exact search
(ties counted), and memory (index bytes; the process's peak RSS).

Exact search is a numpy matrix product over the float32 vectors (``sgemv``/``sgemm`` on all cores),
which is what ``catalogfs similar --exact`` does per task. nprobe is chosen by the build's own rule
(the smallest that reaches ``index.min_recall + index.recall_margin`` on 500 tuning queries; the
reported recall is on the other, held-out queries).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from catalogfs.config import IndexConfig  # noqa: E402
from features import ann  # noqa: E402


def mixture(rng: np.random.Generator, n: int, centres: np.ndarray, bases: np.ndarray, chunk: int = 100_000):
    """``n`` unit vectors of the clustered mixture, generated ``chunk`` rows at a time."""
    dim = centres.shape[1]
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        c = rng.integers(0, len(centres), m)
        v = centres[c] + 0.02 * rng.standard_normal((m, dim), dtype=np.float32)
        basis = c % len(bases)
        for b in np.unique(basis):  # each cluster spread in its own 64-d subspace
            rows = np.flatnonzero(basis == b)
            v[rows] += 0.45 * rng.standard_normal((len(rows), bases.shape[1]), dtype=np.float32) @ bases[b]
        out[start:start + m] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int, block: int = 50) -> tuple[np.ndarray, np.ndarray]:
    scores, ids = [], []
    for start in range(0, len(queries), block):
        sims = queries[start:start + block] @ vectors.T
        top = np.argpartition(-sims, k, axis=1)[:, :k]
        top_s = np.take_along_axis(sims, top, 1)
        order = np.argsort(-top_s, axis=1, kind="stable")
        ids.append(np.take_along_axis(top, order, 1))
        scores.append(np.take_along_axis(top_s, order, 1))
    return np.vstack(scores), np.vstack(ids)


def _timed_single(fn, queries: np.ndarray) -> dict:
    times = []
    for q in queries:
        start = time.perf_counter()
        fn(q[None])
        times.append(time.perf_counter() - start)
    t = np.asarray(times)
    return {"queries": len(t), "p50_ms": float(np.percentile(t, 50) * 1e3), "p99_ms": float(np.percentile(t, 99) * 1e3),
            "qps": float(len(t) / t.sum())}


def _file_bytes(index) -> int:
    """Size of the index file (written to a temporary file: serialising in memory would copy it)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        ann.write_index(index, Path(tmp) / "index.faiss")
        return (Path(tmp) / "index.faiss").stat().st_size


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(vectors: np.ndarray, *, train_rows: int, shard_rows: int) -> tuple[object, dict]:
    """The Spark build's steps in-process: train on a sample, add per shard, merge the shards."""
    import tempfile

    n, dim = vectors.shape
    nlist = ann.auto_nlist(n, train_rows)
    rng = np.random.default_rng(7)
    start = time.perf_counter()
    sample = vectors[rng.choice(n, min(train_rows, n), replace=False)]
    trained = ann.trained_empty_index("ivf_flat", dim, sample, nlist)
    train_s = time.perf_counter() - start
    blob = ann.to_bytes(trained)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, lo in enumerate(range(0, n, shard_rows)):
            shard = ann.from_bytes(blob)
            ann.add_vectors(shard, np.arange(lo, min(lo + shard_rows, n)), vectors[lo:lo + shard_rows])
            paths.append(Path(tmp) / f"shard-{i:05d}.faiss")
            ann.write_index(shard, paths[-1])
            del shard
        index = ann.merge_shards(paths)
    total = time.perf_counter() - start
    return index, {"nlist": nlist, "train_rows": len(sample), "shards": len(paths), "train_seconds": train_s,
                   "build_seconds": total}


def run(n: int, dim: int, clusters: int, k: int, n_queries: int, threads: int) -> dict:
    import faiss

    faiss.omp_set_num_threads(threads)
    rng = np.random.default_rng(2026)
    # hierarchical: clusters grouped around 50 topics, so neighbouring clusters overlap
    topics = rng.standard_normal((50, dim), dtype=np.float32) / np.sqrt(dim)
    centres = (2.0 * topics[rng.integers(0, 50, clusters)]
               + 0.9 * rng.standard_normal((clusters, dim), dtype=np.float32) / np.sqrt(dim))
    bases = rng.standard_normal((min(clusters, 256), 64, dim), dtype=np.float32) / np.sqrt(dim)
    start = time.perf_counter()
    vectors = mixture(rng, n, centres, bases)
    tune, queries = mixture(rng, 500, centres, bases), mixture(rng, n_queries, centres, bases)
    gen_s = time.perf_counter() - start
    del bases

    start = time.perf_counter()
    exact = exact_top_k(vectors, queries, k)
    exact_batch_s = time.perf_counter() - start
    exact_single = _timed_single(lambda q: exact_top_k(vectors, q, k), queries[:20])

    defaults = IndexConfig()  # the job's defaults: training sample, shard size, nlist rule
    index, build_info = build(vectors, train_rows=defaults.train_rows, shard_rows=defaults.shard_rows)
    tune_exact = exact_top_k(vectors, tune, k)
    no_self = np.full(len(tune), ann.NO_ID)
    target = defaults.min_recall + defaults.recall_margin  # the build's rule, on its own tuning queries
    nprobe, _, tried = ann.choose_nprobe(index, tune, no_self, tune_exact, k=k, min_recall=target)
    ann.for_queries(index, nprobe)  # as VectorIndex serves it
    start = time.perf_counter()
    scores, ids = index.search(queries, k)
    ann_batch_s = time.perf_counter() - start
    recall = ann.recall_per_query(ids, scores, exact[1], exact[0], k)
    ann_single = _timed_single(lambda q: index.search(q, k), queries)
    return {
        "vectors": n, "dim": dim, "clusters": clusters, "k": k, "queries": n_queries, "threads": threads,
        "generate_seconds": gen_s, "vector_bytes": int(vectors.nbytes),
        "exact": {"single": exact_single, "batch_1000_seconds": exact_batch_s * 1000 / n_queries},
        "ivf_flat": {**build_info, "nprobe": nprobe, "nprobe_tuning": tried, "recall_at_k": float(recall.mean()),
                     "recall_p05": float(np.percentile(recall, 5)), "single": ann_single,
                     "batch_1000_seconds": ann_batch_s * 1000 / n_queries,
                     "index_bytes": _file_bytes(index)},
        "speedup_single_qps": ann_single["qps"] / exact_single["qps"],
        "peak_rss_mb": _rss_mb(),
    }


def markdown(r: dict) -> str:
    e, a = r["exact"], r["ivf_flat"]
    lines = [f"{r['vectors']:,} synthetic {r['dim']}-d unit vectors ({r['clusters']} clusters), "
             f"{r['queries']} held-out queries, k={r['k']}, {r['threads']} threads",
             "", "| method | build s | single p50 ms | single p99 ms | single q/s | 1 000 queries s | recall@10 | memory |",
             "|---|---|---|---|---|---|---|---|",
             f"| exact (numpy, float32) | – | {e['single']['p50_ms']:.1f} | {e['single']['p99_ms']:.1f} | "
             f"{e['single']['qps']:.1f} | {e['batch_1000_seconds']:.1f} | 1.000 | {r['vector_bytes'] / 2**20:.0f} MiB vectors |",
             f"| faiss IVF-Flat, nlist {a['nlist']}, nprobe {a['nprobe']} | {a['build_seconds']:.1f} "
             f"(train {a['train_seconds']:.1f}) | {a['single']['p50_ms']:.2f} | {a['single']['p99_ms']:.2f} | "
             f"{a['single']['qps']:.0f} | {a['batch_1000_seconds']:.2f} | {a['recall_at_k']:.3f} | "
             f"{a['index_bytes'] / 2**20:.0f} MiB index |",
             "", f"single-query throughput, index / exact: **{r['speedup_single_qps']:.0f}×** (target ≥ 50× at recall ≥ 0.95); "
             f"peak RSS {r['peak_rss_mb']:.0f} MB"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    result = run(args.n, args.dim, args.clusters, 10, args.queries, args.threads)
    result.update(started=datetime.now(timezone.utc).isoformat(), machine=platform.platform(), cores=os.cpu_count())
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"ann-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(result, indent=2))
    print(markdown(result))
    print(f"\nfigures: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
