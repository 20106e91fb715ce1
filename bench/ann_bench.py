"""ANN index benchmark (``make bench-ann``): the store's faiss index path against exact search on
the same vectors, in the same process and run. Synthetic part, no Spark: the index functions the
Spark build calls (:mod:`features.ann`), with the build's shard-and-merge done in-process. Real
part (:func:`run_real_space`): the sample videos embedded by the default model, indexed by the
product's own Spark build, queried as a service queries.

    python bench/ann_bench.py                       # 1 000 000 vectors of 1280-d (about 10 GB RAM)
    python bench/ann_bench.py --n 100000             # a minute
    python bench/ann_bench.py --no-synthetic         # only the real sample space (Spark, a few minutes)

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
from catalogfs.features import ann  # noqa: E402


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


def run_real_space(workdir: Path, *, seconds: float, sample_fps: float, k: int) -> dict:
    """The real sample space through the product's own path: the sample videos made from real photos,
    extracted and embedded by the default model, then ``build_index`` (the Spark build and its
    recall gate) for each level and kind; each index is then loaded as a service loads it
    (:class:`features.ann.VectorIndex`) and every indexed vector is a query, its own row left out,
    against exact numpy search over the same vectors."""
    from catalogfs.config import DEFAULT_CONF_DIR, load_config
    from catalogfs.spark import build_spark
    from catalogfs.features.vector_index import SOURCES, build_index
    from catalogfs.jobs import embed_frames, extract_frames
    from catalogfs.jobs.samples import make_sample_videos
    from pyspark.sql import functions as F

    cfg = load_config([DEFAULT_CONF_DIR / "local.yaml"], [f"storage.data_root={workdir / 'data'}",
                                                           f"extract.sample_fps={sample_fps}"])
    make_sample_videos(workdir / "videos", seconds=seconds)
    spark = build_spark(cfg)
    out: dict = {"seconds_per_video": seconds, "sample_fps": sample_fps, "rows": []}
    try:
        extract_frames.run(spark, cfg, input=str(workdir / "videos"))
        start = time.perf_counter()
        embedded = embed_frames.run(spark, cfg)
        out.update(space=embedded.space.id, frames_embedded=embedded.frames_embedded,
                   embed_run_seconds=time.perf_counter() - start)
        for level, kinds in (("video", ("flat",)), ("frame", ("flat", "ivf_flat"))):
            keys = ann.LEVELS[level]
            rows = (spark.table(cfg.storage.qualified(SOURCES[level].name))
                    .where((F.col("embedding_space") == embedded.space.id) & F.col("embedding").isNotNull())
                    .select(*keys, "embedding").collect())
            row_keys = [tuple(r[c] for c in keys) for r in rows]
            vectors = np.stack([np.asarray(r["embedding"], np.float32) for r in rows])
            for kind in kinds:
                out["rows"].append(_real_row(spark, cfg, embedded.space.id, level, kind, row_keys, vectors, k,
                                             build_index))
    finally:
        spark.stop()
    return out


def _real_row(spark, cfg, space: str, level: str, kind: str, row_keys: list[tuple], vectors: np.ndarray, k: int,
              build_index) -> dict:
    """One index of the real space: build it (Spark), then query it as a service would."""
    kcfg = cfg.model_copy(update={"index": cfg.index.model_copy(update={"kind": kind})})
    start = time.perf_counter()
    built = build_index(spark, kcfg, space=space, level=level, full=True)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    index = ann.VectorIndex(Path(built.path))
    load_s = time.perf_counter() - start
    kq = min(k, len(row_keys) - 1)
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)  # each query's own row left out, as `catalogfs similar` does
    exact_ids = np.argsort(-sims, axis=1, kind="stable")[:, :kq]
    exact_scores = np.take_along_axis(sims, exact_ids, 1)
    number = {key: n for n, key in enumerate(row_keys)}
    hits = index.search(vectors, kq, exclude=row_keys)
    got_ids = np.array([[number[h[0]] for h in q] + [ann.NO_ID] * (kq - len(q)) for q in hits])
    got_scores = np.array([[h[1] for h in q] + [-np.inf] * (kq - len(q)) for q in hits], dtype=np.float32)
    recall = ann.recall_per_query(got_ids, got_scores, exact_ids, exact_scores.astype(np.float32), kq)

    def exact_one(q: np.ndarray) -> None:
        exact_top_k(vectors, q, min(kq + 1, len(vectors) - 1))  # argpartition needs k < n

    index.index.search(vectors[:1], kq + 1)  # warm: the first search of a fresh mmap pages the index in
    exact_one(vectors[:1])
    m = built.manifest
    return {"level": level, "kind": m.kind, "status": built.status, "vectors": len(row_keys), "nlist": m.nlist,
            "nprobe": m.nprobe, "gate_recall": m.recall_at_k, "build_seconds": build_s, "load_seconds": load_s,
            "k": kq, "recall_all_queries": float(recall.mean()),
            "index_single": _timed_single(lambda q: index.index.search(q, kq + 1), vectors),
            "exact_single": _timed_single(exact_one, vectors)}


def markdown_real(r: dict) -> str:
    lines = [f"Real sample space {r['space']}: {r['frames_embedded']} frames of the {r['rows'][0]['vectors']} sample videos "
             f"({r['seconds_per_video']:.0f} s each, sampled at {r['sample_fps']:g} fps; embed run "
             f"{r['embed_run_seconds']:.1f} s). Every indexed vector is a query, its own row left out.", "",
             "| level | index | vectors | nlist / nprobe | `index build` s (Spark, with its recall gate) | "
             "gate recall | recall@k, all queries | single p50 / p99 ms | exact p50 / p99 ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        i, e = x["index_single"], x["exact_single"]
        lines.append(f"| {x['level']} | {x['kind']} ({x['status']}) | {x['vectors']} | {x['nlist']} / {x['nprobe']} | "
                     f"{x['build_seconds']:.1f} | {x['gate_recall']:.3f} | {x['recall_all_queries']:.3f} (k={x['k']}) | "
                     f"{i['p50_ms']:.3f} / {i['p99_ms']:.3f} | {e['p50_ms']:.3f} / {e['p99_ms']:.3f} |")
    return "\n".join(lines)


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
    parser.add_argument("--synthetic", action=argparse.BooleanOptionalAction, default=True,
                        help="the synthetic benchmark at --n vectors (no Spark)")
    parser.add_argument("--real-space", action=argparse.BooleanOptionalAction, default=True,
                        help="the real sample space through Spark: sample videos, embed, `index build` per level")
    parser.add_argument("--real-seconds", type=float, default=6.0, help="length of each sample video")
    parser.add_argument("--real-fps", type=float, default=12.0, help="frames sampled per second of video")
    args = parser.parse_args(argv)
    started = datetime.now(timezone.utc)
    result: dict = {"started": started.isoformat(), "machine": platform.platform(), "cores": os.cpu_count()}
    if args.synthetic:
        result.update(run(args.n, args.dim, args.clusters, 10, args.queries, args.threads))
        print(markdown(result))
    if args.real_space:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="catalogfs-ann-bench-") as tmp:
            result["real_space"] = run_real_space(Path(tmp), seconds=args.real_seconds, sample_fps=args.real_fps, k=10)
        print("\n" + markdown_real(result["real_space"]))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"ann-{started:%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"\nfigures: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
