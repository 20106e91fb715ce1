"""The faiss layer of the ANN indexes (features/ann.py), without Spark: recall with ties, nprobe
choice, sharded build and merge, removals, and the VectorIndex API a service uses."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from catalogfs.errors import VectorIndexError
from catalogfs.features import ann


def _unit(rng, n, d):
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_recall_counts_ties_but_not_rows_scoring_above_the_exact_answer():
    exact_ids, exact_scores = np.array([[1, 2, 3]]), np.array([[0.9, 0.8, 0.7]], dtype=np.float32)
    recall = lambda ids, scores: ann.recall_per_query(np.array([ids]), np.array([scores], dtype=np.float32),  # noqa: E731
                                                      exact_ids, exact_scores, 3)[0]
    assert recall([1, 2, 3], [0.9, 0.8, 0.7]) == 1.0
    assert recall([1, 2, 7], [0.9, 0.8, 0.7]) == 1.0              # 7 ties with the 3rd: a duplicate video
    assert recall([1, 2, 7], [0.9, 0.8, 0.6]) == pytest.approx(2 / 3)
    assert recall([99, 98, 97], [0.99, 0.98, 0.97]) == 0.0        # better than exact: not in the table
    assert recall([1, ann.NO_ID, ann.NO_ID], [0.9, -np.inf, -np.inf]) == pytest.approx(1 / 3)
    negative = np.array([[-5, -6, -7]])                            # xxhash64 ids may be negative
    assert ann.recall_per_query(negative, exact_scores, negative, exact_scores, 3)[0] == 1.0


def test_sharded_build_merges_to_the_same_answers_and_nprobe_grows_until_recall(tmp_path):
    rng = np.random.default_rng(3)
    vectors, ids = _unit(rng, 3000, 24), rng.integers(-2**62, 2**62, 3000)
    trained = ann.trained_empty_index("ivf_flat", 24, vectors, ann.auto_nlist(3000))
    blob, paths = ann.to_bytes(trained), []
    for i, lo in enumerate(range(0, 3000, 1000)):
        shard = ann.from_bytes(blob)
        ann.add_vectors(shard, ids[lo:lo + 1000], vectors[lo:lo + 1000])
        paths.append(tmp_path / f"shard-{i}.faiss")
        ann.write_index(shard, paths[-1])
    index = ann.merge_shards(paths)
    assert index.ntotal == 3000 and index.nlist == ann.auto_nlist(3000) == 76
    np.testing.assert_array_equal(index.reconstruct(int(ids[1234])), vectors[1234])
    queries, qids = vectors[:60], ids[:60]
    sims = queries @ vectors.T
    sims[np.arange(60), np.arange(60)] = -np.inf
    order = np.argsort(-sims, axis=1, kind="stable")[:, :10]
    exact = (np.take_along_axis(sims, order, 1), ids[order])
    nprobe, recall, tried = ann.choose_nprobe(index, queries, qids, exact, k=10, min_recall=0.9)
    assert [p for p, _ in tried] == [p for p in ann.NPROBE_LADDER if p <= nprobe]
    assert recall.mean() >= 0.9 and all(r < 0.9 for _, r in tried[:-1])
    assert ann.recall_at(index, queries, qids, exact, k=10, nprobe=index.nlist).mean() == 1.0  # every list: exact
    capped, _, _ = ann.choose_nprobe(index, queries, qids, exact, k=10, min_recall=1.0, max_nprobe=2)
    assert capped == 2


def test_vector_index_queries_removals_and_the_current_pointer(tmp_path):
    rng = np.random.default_rng(5)
    vectors = _unit(rng, 400, 16)
    ids = np.arange(400, dtype=np.int64) * 7919 - 1_000_000
    index = ann.trained_empty_index("flat", 16, vectors, 0)
    ann.add_vectors(index, ids, vectors)
    assert ann.remove_ids(index, ids[:10]) == 10 and index.ntotal == 390
    folder = ann.level_dir(tmp_path, "space-a", "frame") / "v1"
    folder.mkdir(parents=True)
    ann.write_index(ann.with_id_lookup(index), folder / ann.INDEX_FILE)
    pq.write_table(pa.table({"id": ids[10:], "video_id": [f"v{i // 4}" for i in range(10, 400)],
                             "frame_ts_ms": [1000 * (i % 4) for i in range(10, 400)]}), folder / ann.KEYS_FILE)
    ann.Manifest("v1", "space-a", "frame", "flat", 16, 0, 0, 390, "frame_embeddings", 7, 1.0, 10, 390, 0).write(folder)
    with pytest.raises(VectorIndexError, match="no current frame index"):
        ann.VectorIndex.open_current(tmp_path, "space-a", "frame")
    ann.set_current(tmp_path, "space-a", "frame", "v1")
    served = ann.VectorIndex.open_current(tmp_path, "space-a", "frame")  # memory-mapped
    assert len(served) == 390 and ("v2", 3000) in served and ("v0", 0) not in served  # removed
    hits = served.similar_to(("v50", 1000), k=5)
    sims = vectors[10:] @ vectors[201]
    expected = [(f"v{(j + 10) // 4}", 1000 * ((j + 10) % 4)) for j in np.argsort(-sims) if j + 10 != 201][:5]
    assert [key for key, _ in hits] == expected
    np.testing.assert_allclose([s for _, s in hits], sorted(np.delete(sims, 191), reverse=True)[:5], atol=1e-6)
    with pytest.raises(VectorIndexError, match="not in index v1"):
        served.vector(("v0", 0))


def test_prune_keeps_the_current_the_newest_and_builds_in_progress(tmp_path):
    import os

    now = 1_800_000_000.0
    level = ann.level_dir(tmp_path, "space_a", "video")
    ids = [f"2026120{d}T000000-0000000{d}" for d in range(1, 8)]  # oldest first
    for i, index_id in enumerate(ids):
        (level / index_id).mkdir(parents=True)
        (level / index_id / ann.MANIFEST_FILE).write_text("{}")
        age = 3600 * 24 * (10 - i) if index_id != ids[1] else 60  # ids[1]: a build still writing
        for path in (level / index_id / ann.MANIFEST_FILE, level / index_id):
            os.utime(path, (now - age, now - age))
    ann.set_current(tmp_path, "space_a", "video", ids[2])  # an older version is current (a rollback)
    (tmp_path / "space_a" / "frame").mkdir()  # a level without versions
    removed = ann.prune_versions(tmp_path, keep=3, now=now)
    assert sorted(p.name for p in removed) == [ids[0], ids[3]]
    assert sorted(p.name for p in level.iterdir() if p.is_dir()) == [ids[1], ids[2], *ids[4:]]
    assert ann.current_id(tmp_path, "space_a", "video") == ids[2]
    assert ann.prune_versions(tmp_path, keep=3, now=now) == []


def test_ann_bench_reports_recall_and_speed_against_exact_search():
    """The synthetic part of `make bench-ann` at a small size: its recall is measured against its own
    exact search (a bench that compared an index with itself would report 1.0 whatever it did)."""
    from bench import ann_bench

    r = ann_bench.run(n=4000, dim=32, clusters=40, k=10, n_queries=100, threads=1)
    a = r["ivf_flat"]
    assert a["nprobe"] >= 1 and a["nlist"] == ann.auto_nlist(4000, 100_000)
    assert 0.9 <= a["recall_at_k"] <= 1.0 and a["nprobe_tuning"][-1][0] == a["nprobe"]
    assert r["speedup_single_qps"] > 0 and r["exact"]["single"]["queries"] == 20
    text = ann_bench.markdown(r)
    assert f"nprobe {a['nprobe']}" in text and "4,000 synthetic 32-d" in text


def test_gpu_training_is_asked_for_only_where_faiss_sees_a_gpu():
    rng = np.random.default_rng(3)
    sample = _unit(rng, 200, 8)
    assert ann.gpus() == 0  # faiss-cpu here (CI has no GPU)
    assert not ann.train_on_gpu("auto") and not ann.train_on_gpu("cpu")
    with pytest.raises(VectorIndexError, match="index.device is gpu, but faiss sees no GPU"):
        ann.trained_empty_index("ivf_flat", 8, sample, 4, device="gpu")
    with pytest.raises(VectorIndexError, match="must be auto, cpu or gpu"):
        ann.train_on_gpu("cuda")
    trained = ann.trained_empty_index("ivf_flat", 8, sample, 4, device="auto")
    assert trained.is_trained and trained.nlist == 4
