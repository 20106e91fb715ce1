"""The audit gate: bad candidates are refused, published tables stay as they were."""

import json
import shutil
from datetime import datetime, timezone

import pytest

from pyspark.sql import functions as F

from catalogfs.jobs.samples import SAMPLE_PHOTOS, make_sample_videos
from catalogfs.tracking import configure_mlflow
from catalogfs.expectations.runner import validate_candidates
from catalogfs.expectations.suites import SuiteParams, frame_embeddings_suite
from catalogfs.expectations.vector_checks import with_score_checks, with_vector_checks
from catalogfs.features import delta_writer
from catalogfs.features.tables import FRAME_EMBEDDINGS
from catalogfs.jobs import embed_frames, extract_frames
from tests.helpers import with_database

DIM = 4
PARAMS = SuiteParams(dim=DIM, norm_tolerance=1e-3, max_reject_rate=0.5, expected_rows=2)


def _candidates(spark, rows):
    base = {"embedding_space": "s", "content_sha256": "h", "labels": ["a"], "label_scores": [0.5],
            "status": "ok", "error": None, "model_name": "m", "model_version": "1", "run_id": "r",
            "computed_at": datetime(2026, 1, 1, tzinfo=timezone.utc)}
    data = [{**base, **r} for r in rows]
    df = spark.createDataFrame(data, FRAME_EMBEDDINGS.schema)
    return with_score_checks(with_vector_checks(df))


@pytest.fixture(params=["spark", "pandas"])
def engine(request):
    """Each gate test runs with GE on Spark and on the driver (pandas): same verdicts."""
    return request.param


def _validate(spark, tmp_path, rows, engine="spark"):
    df = _candidates(spark, rows)
    outcome = validate_candidates({"frame_embeddings": (df, frame_embeddings_suite(PARAMS))}, tmp_path,
                                  driver_max_rows=1000 if engine == "pandas" else 0)
    assert outcome.engines == {"frame_embeddings": engine}
    return outcome


def test_good_candidates_pass(spark, tmp_path, engine):
    outcome = _validate(spark, tmp_path, engine=engine, rows=[
        {"video_id": "v", "frame_ts_ms": 0, "embedding": [1.0, 0.0, 0.0, 0.0]},
        {"video_id": "v", "frame_ts_ms": 1000, "embedding": [0.0, 0.6, 0.8, 0.0]},
    ])
    assert outcome.success, outcome.failures
    assert json.loads((tmp_path / "frame_embeddings.json").read_text())["success"] is True


def test_nan_vector_is_refused(spark, tmp_path, engine):
    outcome = _validate(spark, tmp_path, engine=engine, rows=[
        {"video_id": "v", "frame_ts_ms": 0, "embedding": [1.0, 0.0, 0.0, 0.0]},
        {"video_id": "v", "frame_ts_ms": 1000, "embedding": [float("nan"), 0.0, 0.0, 1.0]},
    ])
    assert not outcome.success
    assert any("emb_finite" in f for f in outcome.failures), outcome.failures


def test_wrong_dimension_is_refused(spark, tmp_path, engine):
    outcome = _validate(spark, tmp_path, engine=engine, rows=[
        {"video_id": "v", "frame_ts_ms": 0, "embedding": [1.0, 0.0, 0.0, 0.0]},
        {"video_id": "v", "frame_ts_ms": 1000, "embedding": [1.0, 0.0, 0.0]},
    ])
    assert not outcome.success
    assert any("emb_dim" in f for f in outcome.failures), outcome.failures


def test_duplicate_keys_are_refused(spark, tmp_path, engine):
    outcome = _validate(spark, tmp_path, engine=engine, rows=[
        {"video_id": "v", "frame_ts_ms": 0, "embedding": [1.0, 0.0, 0.0, 0.0]},
        {"video_id": "v", "frame_ts_ms": 0, "embedding": [0.0, 1.0, 0.0, 0.0]},
    ])
    assert not outcome.success
    assert any("compound_columns_to_be_unique" in f for f in outcome.failures), outcome.failures


def test_unnormalised_vector_and_too_many_rejects(spark, tmp_path, engine):
    outcome = _validate(spark, tmp_path, engine=engine, rows=[
        {"video_id": "v", "frame_ts_ms": 0, "embedding": [2.0, 0.0, 0.0, 0.0]},
        {"video_id": "v", "frame_ts_ms": 1000, "embedding": None, "status": "undecodable_image"},
        {"video_id": "v", "frame_ts_ms": 2000, "embedding": None, "status": "undecodable_image"},
    ])
    failed = " | ".join(outcome.failures)
    assert "emb_norm" in failed and "'status'" in failed and "row_count" in failed
    assert "2 of 3 rows unexpected" in failed  # the reject rate, counted the same by both engines


def test_driver_validation_falls_back_to_spark_above_the_row_limit(spark, tmp_path):
    rows = [{"video_id": "v", "frame_ts_ms": i * 1000, "embedding": [1.0, 0.0, 0.0, 0.0]} for i in range(3)]
    params = SuiteParams(dim=DIM, norm_tolerance=1e-3, max_reject_rate=0.5, expected_rows=3)
    outcome = validate_candidates({"frame_embeddings": (_candidates(spark, rows), frame_embeddings_suite(params))},
                                  tmp_path, driver_max_rows=2)
    assert outcome.success, outcome.failures
    assert outcome.engines == {"frame_embeddings": "spark"}


def test_failed_validation_leaves_published_tables_untouched(spark, cfg, tmp_path_factory, default_bundle, capsys):
    """A model whose declared dimension is wrong fails the gate: nothing published, a rejected
    lineage row, the report kept, exit code 3 naming the failed expectation."""
    from mlflow import MlflowClient

    from catalogfs.udfs.model_registry import register_bundle

    cfg = with_database(cfg, "gate_features")
    videos = tmp_path_factory.mktemp("gate_videos")
    make_sample_videos(videos, seconds=1.0, fps=8, width=160, height=96,
                       photos=tuple(p for p in SAMPLE_PHOTOS if p.video_id == "coffee_cup"))
    extract_frames.run(spark, cfg, input=str(videos))
    good = embed_frames.run(spark, cfg)  # publishes the default model's space
    assert good.published
    before = {t: delta_writer.table_version(spark, cfg.storage, t)
              for t in ("frame_embeddings", "video_embeddings", "video_labels")}
    rows_before = spark.table(cfg.storage.qualified("frame_embeddings")).count()

    broken = tmp_path_factory.mktemp("broken") / "model"
    shutil.copytree(default_bundle, broken)
    spec = json.loads((broken / "model_spec.json").read_text())
    spec["embedding_dim"] = 1000  # declared dimension disagrees with what the model produces
    (broken / "model_spec.json").write_text(json.dumps(spec))
    register_bundle(MlflowClient(), "broken_dim_model", broken, alias="champion",
                    experiment_id=configure_mlflow(cfg))

    overrides = ["--set", f"storage.data_root={cfg.storage.data_root}", "--set", "storage.database=gate_features",
                 "--set", "model.name=broken_dim_model", "--set", "model.register_default=false"]
    assert embed_frames.main(overrides) == 3
    err = capsys.readouterr().err
    assert "validation failed, nothing published" in err and "emb_dim" in err and "report:" in err

    after = {t: delta_writer.table_version(spark, cfg.storage, t) for t in before}
    assert after == before
    assert spark.table(cfg.storage.qualified("frame_embeddings")).count() == rows_before
    lineage = spark.table(cfg.storage.qualified("feature_versions")).where("model_name = 'broken_dim_model'").collect()
    assert [r.status for r in lineage] == ["rejected"]
    assert "emb_dim" in lineage[0].failed_expectations
    report = lineage[0].validation_report
    assert json.loads(open(f"{report}/summary.json").read())["success"] is False


def test_reports_include_data_docs_html(spark, tmp_path, engine):
    outcome = _validate(spark, tmp_path, engine=engine, rows=[
        {"video_id": "v", "frame_ts_ms": 0, "embedding": [1.0, 0.0, 0.0, 0.0]},
        {"video_id": "v", "frame_ts_ms": 0, "embedding": [1.0, 0.0, 0.0, 0.0]},
    ])
    assert not outcome.success and outcome.data_docs
    html = open(outcome.data_docs).read()
    assert "frame_embeddings" in html
    pages = list((tmp_path / "gx" / "uncommitted" / "data_docs").rglob("*.html"))
    assert any("validations" in str(p) for p in pages)


def _nan_vector(df):
    return df.withColumn("embedding", F.when(F.col("frame_ts_ms") == 0, F.transform(
        "embedding", lambda x: x * F.lit(float("nan")))).otherwise(F.col("embedding")))


def _wrong_dimension(df):
    return df.withColumn("embedding", F.when(F.col("frame_ts_ms") == 0, F.slice("embedding", 1, 1000))
                         .otherwise(F.col("embedding")))


def _duplicate_key(df):
    return df.unionByName(df.where(F.col("frame_ts_ms") == 0))


@pytest.mark.parametrize("tamper, expectation", [
    (_nan_vector, "emb_finite"),
    (_wrong_dimension, "emb_dim"),
    (_duplicate_key, "compound_columns_to_be_unique"),
])
def test_bad_candidate_batch_is_refused_end_to_end(spark, cfg, tmp_path_factory, monkeypatch, capsys,
                                                   tamper, expectation):
    """Inject a bad batch into the real job: exit code 3 naming the expectation, report written,
    published Delta versions unchanged."""
    from catalogfs.features import run_plan, staging

    cfg = with_database(cfg, "inject_features")
    if not spark.catalog.tableExists(cfg.storage.qualified("frame_embeddings")):
        videos = tmp_path_factory.mktemp("inject_videos")
        make_sample_videos(videos, seconds=1.5, fps=8, width=160, height=96,
                           photos=tuple(p for p in SAMPLE_PHOTOS if p.video_id == "cat_chelsea"))
        extract_frames.run(spark, cfg, input=str(videos))
        assert embed_frames.run(spark, cfg).published
    before = {t: delta_writer.table_version(spark, cfg.storage, t)
              for t in ("frame_embeddings", "video_embeddings", "video_labels")}
    real = staging.compute_frame_candidates
    monkeypatch.setattr(run_plan, "frames_to_embed", lambda frames, published: frames)  # recompute all
    monkeypatch.setattr(staging, "compute_frame_candidates", lambda *a, **k: tamper(real(*a, **k)))

    code = embed_frames.main(["--set", f"storage.data_root={cfg.storage.data_root}",
                              "--set", "storage.database=inject_features", "--full-plan"])
    err = capsys.readouterr().err
    assert code == 3 and expectation in err and "nothing published" in err
    report = err.split("report: ")[1].split(";")[0].split("\n")[0].strip()
    assert json.loads(open(f"{report}/summary.json").read())["success"] is False
    assert {t: delta_writer.table_version(spark, cfg.storage, t) for t in before} == before
    rejected = spark.table(cfg.storage.qualified("feature_versions")).where("status = 'rejected'").count()
    assert rejected >= 1
