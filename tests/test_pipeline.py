"""The main job end to end on real parts: H.264 sample videos → frames → EfficientNet-Lite0 →
validated, published Delta tables in a persistent catalog, lineage in MLflow and feature_versions."""

import json

import numpy as np
import pytest

from catalogfs.jobs.samples import SAMPLE_PHOTOS, make_sample_videos, write_corrupt_sample
from catalogfs.features import delta_writer
from catalogfs.jobs import embed_frames, extract_frames
from tests.helpers import with_database

CAT_CLASSES = {"tabby, tabby cat", "tiger cat", "Persian cat", "Siamese cat, Siamese", "Egyptian cat"}
PHOTOS = tuple(p for p in SAMPLE_PHOTOS if p.video_id in ("cat_chelsea", "coffee_cup"))


@pytest.fixture(scope="module")
def e2e(spark, cfg, tmp_path_factory):
    cfg = with_database(cfg, "e2e_features")
    videos = tmp_path_factory.mktemp("e2e_videos")
    paths = make_sample_videos(videos, seconds=2.0, fps=12, width=320, height=180, photos=PHOTOS)
    write_corrupt_sample(videos, source=paths[0])
    extracted = extract_frames.run(spark, cfg, input=str(videos))
    embedded = embed_frames.run(spark, cfg)
    return cfg, videos, extracted, embedded


def test_frames_table(spark, e2e):
    cfg, _, extracted, _ = e2e
    rows = spark.table(cfg.storage.qualified("frames")).orderBy("video_id", "frame_ts_ms").collect()
    assert [(r.video_id, r.frame_ts_ms, r.status) for r in rows] == [
        ("cat_chelsea", 0, "ok"), ("cat_chelsea", 1000, "ok"),
        ("coffee_cup", 0, "ok"), ("coffee_cup", 1000, "ok"),
        ("corrupt_upload", -1, "video_truncated"),
    ]
    assert rows[-1].image is None and rows[-1].error
    assert extracted.publish.status_counts == {"ok": 4, "video_truncated": 1}


def test_frame_embeddings_one_row_per_frame_unit_norm(spark, e2e):
    cfg, _, _, embedded = e2e
    fe = spark.table(cfg.storage.qualified("frame_embeddings")).orderBy("video_id", "frame_ts_ms").collect()
    frames = spark.table(cfg.storage.qualified("frames")).collect()
    assert {(r.video_id, r.frame_ts_ms) for r in fe} == {(r.video_id, r.frame_ts_ms) for r in frames}
    ok = [r for r in fe if r.status == "ok"]
    assert len(ok) == 4
    for r in ok:
        vec = np.asarray(r.embedding, dtype=np.float32)
        assert vec.shape == (1280,) and np.isfinite(vec).all()
        assert abs(float(np.linalg.norm(vec)) - 1) < 1e-4
        assert r.embedding_space == embedded.space.id
        assert (r.model_name, r.model_version) == ("efficientnet_lite0_imagenet", "1")
        assert r.run_id == embedded.run_id
    bad = [r for r in fe if r.status != "ok"]
    assert [(r.video_id, r.status, r.embedding) for r in bad] == [("corrupt_upload", "video_truncated", None)]
    assert embedded.frames_embedded == 5 and embedded.forward_passes >= 1


def test_video_embeddings_are_renormalised_means(spark, e2e):
    cfg, _, _, embedded = e2e
    fe = spark.table(cfg.storage.qualified("frame_embeddings")).where("status = 'ok'").collect()
    ve = {r.video_id: r for r in spark.table(cfg.storage.qualified("video_embeddings")).collect()}
    assert set(ve) == {"cat_chelsea", "coffee_cup"}
    for vid, row in ve.items():
        frames = np.stack([np.asarray(r.embedding, dtype=np.float64) for r in fe if r.video_id == vid])
        expected = frames.mean(axis=0)
        expected /= np.linalg.norm(expected)
        np.testing.assert_allclose(np.asarray(row.embedding), expected, atol=1e-5)
        assert row.n_frames == 2 and row.embedding_space == embedded.space.id


def test_video_labels_cat_and_coffee(spark, e2e):
    cfg, _, _, _ = e2e
    labels = spark.table(cfg.storage.qualified("video_labels")).orderBy("video_id", "rank").collect()
    top = {r.video_id: r.label for r in labels if r.rank == 1}
    assert top["coffee_cup"] == "espresso"
    assert top["cat_chelsea"] in CAT_CLASSES
    for r in labels:
        assert 0 <= r.score <= 1 and 1 <= r.n_frames_supporting <= 2 and r.taxonomy_version == "imagenet-1k"
    cat_scores = [r.score for r in labels if r.video_id == "cat_chelsea"]
    assert cat_scores == sorted(cat_scores, reverse=True) and len(cat_scores) == cfg.labels.top_k_per_video


def test_independent_reader_sees_the_same_tables(e2e):
    from deltalake import DeltaTable

    cfg, _, _, _ = e2e
    path = cfg.storage.table_path("frame_embeddings")
    assert path.exists()
    df = DeltaTable(str(path)).to_pandas()
    assert not df.duplicated(["video_id", "frame_ts_ms", "embedding_space"]).any()
    ok = df[df.status == "ok"]
    norms = [float(np.linalg.norm(np.asarray(v, dtype=np.float64))) for v in ok.embedding]
    assert len(ok) == 4 and max(abs(n - 1) for n in norms) < 1e-4
    labels = DeltaTable(str(cfg.storage.table_path("video_labels"))).to_pandas()
    assert labels[(labels.video_id == "cat_chelsea") & (labels["rank"] == 1)].label.iloc[0] in CAT_CLASSES


def test_lineage_and_mlflow_run(spark, e2e):
    import mlflow

    cfg, _, _, embedded = e2e
    rows = spark.table(cfg.storage.qualified("feature_versions")).orderBy("finished_at").collect()
    assert [(r.status, r.note) for r in rows] == [("published", None), ("promoted", "first published space")]
    row = rows[0]
    assert (row.status, row.validation_success, row.model_version) == ("published", "true", "1")
    # the versions of this run's own commits (no flags model: video_flags untouched), each a MERGE of this run
    assert json.loads(row.table_versions) == embedded.written_versions
    assert set(embedded.written_versions) == {"frame_embeddings", "video_embeddings", "video_labels"}
    for table, version in embedded.written_versions.items():
        assert embedded.table_versions[table] == version
        commit = spark.sql(f"DESCRIBE HISTORY {cfg.storage.qualified(table)}").where(f"version = {version}").first()
        assert commit.operation == "MERGE" and json.loads(commit.userMetadata)["run_id"] == embedded.run_id
    assert row.validation_report and (cfg.storage.data_root / row.validation_report).exists()
    run = mlflow.get_run(embedded.run_id)
    assert run.data.metrics["frames_embedded"] == 5
    assert run.data.tags["model.version"] == "1"
    assert run.data.tags["delta.frame_embeddings.version"] == str(embedded.table_versions["frame_embeddings"])
    history = delta_writer.table_version(spark, cfg.storage, "frame_embeddings")
    commit = spark.sql(f"DESCRIBE HISTORY {cfg.storage.qualified('frame_embeddings')} LIMIT 1").first()
    assert history == embedded.table_versions["frame_embeddings"]
    assert json.loads(commit.userMetadata)["run_id"] == embedded.run_id


def test_rerun_is_a_no_op(spark, e2e):
    cfg, videos, _, embedded = e2e
    again_frames = extract_frames.run(spark, cfg, input=str(videos))
    assert again_frames.publish.changed_rows == 0
    again = embed_frames.run(spark, cfg)
    assert again.frames_embedded == 0 and again.forward_passes == 0 and not again.published
    assert again.table_versions == embedded.table_versions
    for table in ("frame_embeddings", "video_embeddings", "video_labels"):
        df = spark.table(cfg.storage.qualified(table))
        keys = {"frame_embeddings": ["video_id", "frame_ts_ms", "embedding_space"],
                "video_embeddings": ["video_id", "embedding_space"],
                "video_labels": ["video_id", "embedding_space", "label"]}[table]
        assert df.count() == df.dropDuplicates(keys).count()


def test_tables_are_in_the_persistent_catalog(spark, e2e):
    cfg, _, _, _ = e2e
    tables = {t.name for t in spark.catalog.listTables(cfg.storage.database)}
    assert {"frames", "frame_embeddings", "video_embeddings", "video_labels", "feature_versions"} <= tables
    detail = spark.sql(f"DESCRIBE DETAIL {cfg.storage.qualified('video_labels')}").first()
    assert detail.location.rstrip("/").endswith("warehouse/e2e_features.db/video_labels")
    assert (cfg.storage.metastore_dir).exists()


def _cli_overrides(cfg):
    return ["--set", f"storage.data_root={cfg.storage.data_root}", "--set", f"storage.database={cfg.storage.database}"]


def test_sql_command_prints_rows_and_json(e2e, capsys):
    from catalogfs.jobs import sql

    cfg, _, _, _ = e2e
    query = (f"SELECT video_id, label, score FROM {cfg.storage.database}.video_labels "
             "WHERE rank = 1 ORDER BY video_id")
    assert sql.main([*_cli_overrides(cfg), query]) == 0
    out = capsys.readouterr().out
    assert "coffee_cup" in out and "espresso" in out and "(2 rows)" in out
    assert sql.main([*_cli_overrides(cfg), "--json", query]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["video_id"] for r in rows] == ["cat_chelsea", "coffee_cup"] and rows[1]["label"] == "espresso"
    assert sql.main([*_cli_overrides(cfg), "SELECT * FROM no_such_db.no_such_table"]) == 4
    assert "no_such_table" in capsys.readouterr().err.lower()


def test_time_travel_reads_an_earlier_version(spark, e2e):
    cfg, _, _, embedded = e2e
    table = cfg.storage.qualified("video_labels")
    assert spark.sql(f"SELECT count(*) AS n FROM {table} VERSION AS OF 0").first().n == 0
    version = embedded.table_versions["video_labels"]
    assert spark.sql(f"SELECT count(*) AS n FROM {table} VERSION AS OF {version}").first().n == 2 * 5


def test_new_video_embeds_only_its_frames_and_removed_video_is_deleted(spark, e2e, tmp_path):
    """Incremental recompute and the removal policy, on a separate database."""
    from catalogfs.features.tables import FRAMES

    cfg, videos, _, _ = e2e
    cfg = with_database(cfg, "incremental_features")
    import shutil

    shutil.copytree(videos, tmp_path / "v")
    extract_frames.run(spark, cfg, input=str(tmp_path / "v"))
    first = embed_frames.run(spark, cfg)
    assert first.frames_embedded == 5
    before = {r.video_id: r.run_id for r in spark.table(cfg.storage.qualified("video_embeddings")).collect()}

    make_sample_videos(tmp_path / "v", seconds=2.0, fps=12, width=320, height=180,
                       photos=tuple(p for p in SAMPLE_PHOTOS if p.video_id == "flower"))
    extract_frames.run(spark, cfg, input=str(tmp_path / "v"))
    second = embed_frames.run(spark, cfg)
    assert (second.frames_embedded, second.videos_updated) == (2, ["flower"])
    after = {r.video_id: r.run_id for r in spark.table(cfg.storage.qualified("video_embeddings")).collect()}
    assert after == {**before, "flower": second.run_id}  # the other videos' rows were not rewritten
    fe = spark.table(cfg.storage.qualified("frame_embeddings"))
    assert fe.where("video_id = 'flower'").count() == 2
    assert {r.run_id for r in fe.where("video_id = 'cat_chelsea'").collect()} == {first.run_id}

    # The coffee video leaves the frames table: its feature rows go at the next run.
    spark.sql(f"DELETE FROM {cfg.storage.qualified(FRAMES.name)} WHERE video_id = 'coffee_cup'")
    third = embed_frames.run(spark, cfg)
    assert third.frames_embedded == 0 and third.videos_updated == ["coffee_cup"] and third.published
    for table in ("frame_embeddings", "video_embeddings", "video_labels"):
        assert spark.table(cfg.storage.qualified(table)).where("video_id = 'coffee_cup'").count() == 0
    assert spark.table(cfg.storage.qualified("video_embeddings")).where("video_id = 'cat_chelsea'").count() == 1
    props = spark.sql(f"SHOW TBLPROPERTIES {cfg.storage.qualified('video_embeddings')}").collect()
    assert {r.key: r.value for r in props}["catalogfs.embedding_spaces"] == first.space.id


def test_run_report_html_with_plots(e2e):
    from pathlib import Path

    from PIL import Image

    _, _, _, embedded = e2e
    report = Path(embedded.report_html)
    page = report.read_text()
    assert embedded.space.id in page and "ok" in page and "video_truncated" in page
    assert 'href="validation/gx/uncommitted/data_docs/local_site/index.html"' in page
    for name in ("projection.png", "contact_sheet.png"):
        assert f'src="{name}"' in page
        with Image.open(report.parent / name) as img:
            assert img.format == "PNG" and img.width >= 300 and img.height >= 100
            colours = img.convert("RGB").getcolors(maxcolors=1_000_000)
            assert colours is None or len(colours) > 50  # a picture, not a blank canvas


def test_delta_rs_reads_the_same_rows_as_spark_sql(spark, e2e):
    """An independent reader (delta-rs) sees exactly the rows Spark SQL sees, table by table."""
    from deltalake import DeltaTable

    cfg, _, _, _ = e2e
    for table, keys, value in (("frame_embeddings", ["video_id", "frame_ts_ms", "embedding_space"], "embedding"),
                               ("video_embeddings", ["video_id", "embedding_space"], "embedding"),
                               ("video_labels", ["video_id", "embedding_space", "label"], "score")):
        sql_rows = {tuple(r[k] for k in keys): r[value] for r in spark.sql(
            f"SELECT * FROM {cfg.storage.qualified(table)}").collect()}
        df = DeltaTable(str(cfg.storage.table_path(table))).to_pandas()
        rs_rows = {tuple(row[k] for k in keys): row[value] for _, row in df.iterrows()}
        assert set(rs_rows) == set(sql_rows) and sql_rows
        for key, sql_value in sql_rows.items():
            if sql_value is None:
                assert rs_rows[key] is None
            else:
                np.testing.assert_array_equal(np.asarray(rs_rows[key], dtype=np.float32),
                                              np.asarray(sql_value, dtype=np.float32))
