"""Similarity search against brute-force numpy, on pure data and on the real embeddings."""

import json

import numpy as np
import pytest

from catalogfs.features.knn import top_k_neighbours


def _unit(rng, n, d):
    v = rng.normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_top_k_matches_brute_force_in_batches():
    rng = np.random.default_rng(7)
    corpus, queries = _unit(rng, 50, 16), _unit(rng, 9, 16)
    idx, scores = top_k_neighbours(queries, corpus, 5, batch_size=4)
    for q in range(9):
        sims = corpus @ queries[q]
        expected = np.argsort(-sims, kind="stable")[:5]
        assert list(idx[q]) == list(expected)
        np.testing.assert_allclose(scores[q], sims[expected], atol=1e-6)


def test_exclude_self_and_small_corpus():
    rng = np.random.default_rng(1)
    vectors = _unit(rng, 6, 4)
    idx, _ = top_k_neighbours(vectors, vectors, 10, exclude_self=True, batch_size=2)
    assert idx.shape == (6, 5)
    for i in range(6):
        assert i not in idx[i]
        sims = [(float(vectors[i] @ vectors[j]), j) for j in range(6) if j != i]
        assert list(idx[i]) == [j for _, j in sorted(sims, key=lambda t: (-t[0], t[1]))]


@pytest.fixture(scope="module")
def space(spark, cfg, tmp_path_factory):
    from catalogfs.jobs.samples import SAMPLE_PHOTOS, make_sample_videos
    from catalogfs.jobs import embed_frames, extract_frames
    from tests.helpers import with_database

    cfg = with_database(cfg, "similar_features")
    videos = tmp_path_factory.mktemp("similar_videos")
    make_sample_videos(videos, seconds=1.0, fps=6, width=224, height=128,
                       photos=tuple(p for p in SAMPLE_PHOTOS if p.video_id != "astronaut"))
    extract_frames.run(spark, cfg, input=str(videos))
    result = embed_frames.run(spark, cfg)
    return cfg, result.space.id


def _brute_force(spark, cfg, space_id):
    rows = spark.table(cfg.storage.qualified("video_embeddings")).where(
        f"embedding_space = '{space_id}'").orderBy("video_id").collect()
    ids = [r.video_id for r in rows]
    return ids, np.stack([np.asarray(r.embedding, dtype=np.float64) for r in rows])


def test_similar_command_matches_numpy_on_real_embeddings(spark, space, capsys):
    from catalogfs.jobs import similar

    cfg, space_id = space
    ids, vectors = _brute_force(spark, cfg, space_id)
    assert len(ids) == 6
    i = ids.index("cat_chelsea")
    sims = vectors @ vectors[i]
    expected = [ids[j] for j in np.argsort(-sims) if j != i][:3]
    overrides = ["--set", f"storage.data_root={cfg.storage.data_root}", "--set", "storage.database=similar_features"]
    assert similar.main([*overrides, "--video-id", "cat_chelsea", "-k", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["embedding_space"] == space_id
    assert [n["video_id"] for n in out["neighbours"]] == expected
    np.testing.assert_allclose([n["score"] for n in out["neighbours"]],
                               sorted(np.delete(sims, i), reverse=True)[:3], atol=1e-5)
    assert similar.main([*overrides, "--video-id", "no_such_video"]) == 4
    assert "no_such_video" in capsys.readouterr().err


def test_video_neighbors_table(spark, space):
    from catalogfs.jobs import video_neighbors

    cfg, space_id = space
    assert video_neighbors.run(spark, cfg, k=2) == (space_id, 12)
    ids, vectors = _brute_force(spark, cfg, space_id)
    rows = spark.table(cfg.storage.qualified("video_neighbors")).orderBy("video_id", "rank").collect()
    got = {}
    for r in rows:
        got.setdefault(r.video_id, []).append(r.neighbor_id)
    for i, vid in enumerate(ids):
        sims = vectors @ vectors[i]
        assert got[vid] == [ids[j] for j in np.argsort(-sims) if j != i][:2]
    assert video_neighbors.run(spark, cfg, k=2) == (space_id, 12)  # rerun replaces, no duplicates
    assert spark.table(cfg.storage.qualified("video_neighbors")).count() == 12


def test_index_of_real_embeddings_serves_similar(spark, space, capsys):
    """`catalogfs index build` on the sample space (a flat exact index: the space is small), then
    `catalogfs similar` answers from it, with the same neighbours as numpy and as --exact."""
    from catalogfs.features import ann
    from catalogfs.jobs import index as index_job
    from catalogfs.jobs import similar

    cfg, space_id = space
    overrides = ["--set", f"storage.data_root={cfg.storage.data_root}", "--set", "storage.database=similar_features"]
    assert index_job.main([*overrides, "build", "--json"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert (built["status"], built["kind"], built["n_vectors"], built["recall_at_k"]) == ("validated", "flat", 6, 1.0)
    assert ann.current_id(cfg.storage.indexes_dir, space_id, "video") == built["index_id"]
    ids, vectors = _brute_force(spark, cfg, space_id)
    i = ids.index("coffee_cup")
    sims = vectors @ vectors[i]
    expected = [ids[j] for j in np.argsort(-sims) if j != i][:4]
    for extra in ([], ["--exact"]):
        assert similar.main([*overrides, "--video-id", "coffee_cup", "-k", "4", "--json", *extra]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["search"].startswith("exact" if extra else f"index {built['index_id']}")
        assert [n["video_id"] for n in out["neighbours"]] == expected
        np.testing.assert_allclose([n["score"] for n in out["neighbours"]],
                                   sorted(np.delete(sims, i), reverse=True)[:4], atol=1e-5)


def test_similar_by_image_file_and_by_frame(spark, space, tmp_path, capsys):
    """An image file is embedded by the space's own model version and searched in the index: a
    photo finds the video made from it. Frame-level search matches numpy over frame_embeddings."""
    from catalogfs.jobs import index as index_job
    from catalogfs.jobs import similar
    from catalogfs.jobs.samples import SAMPLE_PHOTOS, load_photo

    cfg, space_id = space
    overrides = ["--set", f"storage.data_root={cfg.storage.data_root}", "--set", "storage.database=similar_features"]
    photo = tmp_path / "query.jpg"
    load_photo(next(p for p in SAMPLE_PHOTOS if p.video_id == "rocket_launch")).save(photo, quality=90)
    assert similar.main([*overrides, "--image", str(photo), "-k", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["search"].startswith("index") and out["neighbours"][0]["video_id"] == "rocket_launch"

    assert index_job.main([*overrides, "build", "--level", "frame"]) == 0
    capsys.readouterr()
    rows = spark.table(cfg.storage.qualified("frame_embeddings")).where(
        f"embedding_space = '{space_id}' AND status = 'ok'").collect()
    keys = [(r.video_id, r.frame_ts_ms) for r in rows]
    matrix = np.stack([np.asarray(r.embedding, dtype=np.float64) for r in rows])
    q = keys.index(("cat_chelsea", 0))
    sims = matrix @ matrix[q]
    expected = [keys[j] for j in np.argsort(-sims, kind="stable") if j != q][:3]
    assert similar.main([*overrides, "--level", "frame", "--video-id", "cat_chelsea", "--frame-ts", "0",
                         "-k", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["search"].startswith("index") and out["level"] == "frame"
    assert [(n["video_id"], n["frame_ts_ms"]) for n in out["neighbours"]] == expected
    assert similar.main([*overrides, "--level", "frame", "--video-id", "cat_chelsea"]) == 4
    assert "--frame-ts" in capsys.readouterr().err
