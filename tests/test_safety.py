"""Reliability and security guarantees that need Spark, on the shared session (one database each):

* bad videos through the real extract job: each a precise status row in Delta, the rest extracted;
* schema: wrong-schema candidates refused before publish; NOT NULL keys and CHECK constraints
  enforced by Delta, added idempotently to existing tables;
* injection: names from config or CLI validated, values quoted; a sentinel table survives;
* secrets: a canary in config appears in no log, report, MLflow param/tag, GE result or file;
* bad CLI input that needs the catalog: one clear line and a documented exit code.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

import pytest
from pyspark.sql import functions as F

from catalogfs.jobs import cli
from catalogfs.config import DEFAULT_CONF_DIR
from catalogfs.errors import SchemaMismatch
from catalogfs.jobs.samples import SAMPLE_PHOTOS, make_sample_videos
from catalogfs.features import delta_writer
from catalogfs.features.publish import publish_candidates
from catalogfs.features.spaces import EmbeddingSpace
from catalogfs.features.tables import (
    ALL_TABLES,
    FEATURE_VERSIONS,
    FRAME_EMBEDDINGS,
    FRAMES,
    VIDEO_EMBEDDINGS,
    VIDEO_LABELS,
)
from catalogfs.jobs import extract_frames
from tests.bad_videos import FULL_FRAMES_AT_1FPS, write_bad_videos
from tests.helpers import with_database

LOCAL = DEFAULT_CONF_DIR / "local.yaml"
NOW = datetime(2026, 11, 1, tzinfo=timezone.utc)


def _cli_overrides(cfg) -> list[str]:
    """The test session's settings as CLI options, so an in-process job reuses its Spark session."""
    return ["--conf", str(LOCAL), "--set", f"storage.data_root={cfg.storage.data_root}",
            "--set", f"storage.database={cfg.storage.database}", "--set", "spark.master=local[2]",
            "--set", "inference.batch_size=8"]


def _versions(spark, cfg, tables=ALL_TABLES) -> dict[str, int]:
    return {t.name: delta_writer.table_version(spark, cfg.storage, t.name) for t in tables}


_JVM_LOG_LINE = re.compile(r"^\d\d/\d\d/\d\d \d\d:\d\d:\d\d (WARN|INFO) ")


def _error_line(err: str, prog: str) -> str:
    """The one line the job printed about the failure (the JVM's own WARN/INFO lines aside)."""
    lines = [line for line in err.splitlines() if line.strip() and not _JVM_LOG_LINE.match(line)]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}:"), err
    return lines[0]


# ---------------------------------------------------------------- 4. bad videos, real extract job

def test_bad_videos_through_the_extract_job(spark, cfg, tmp_path):
    cfg = with_database(cfg, "badvideos_features")
    videos = write_bad_videos(tmp_path / "uploads")
    result = extract_frames.run(spark, cfg, input=str(tmp_path / "uploads"))

    rows = spark.table(cfg.storage.qualified(FRAMES.name)).collect()
    assert result.publish.videos == len(videos) == len({r.video_id for r in rows})
    for name, video in videos.items():
        mine = [r for r in rows if r.video_id == name]
        ok = sorted(r.frame_ts_ms for r in mine if r.status == "ok")
        status_rows = [r for r in mine if r.frame_ts_ms == -1]
        if video.status == "ok":  # the good ones are fully extracted despite their neighbours
            assert ok == FULL_FRAMES_AT_1FPS and status_rows == [], name
            continue
        assert [(r.status, r.image, r.frame_index) for r in status_rows] == [(video.status, None, -1)], name
        assert video.error_contains in status_rows[0].error, (name, status_rows[0].error)
        assert status_rows[0].source_uri == str(video.path.resolve())
        assert (1 <= len(ok) < 4) if video.some_frames else ok == [], (name, ok)
    expected_counts = {}
    for video in videos.values():
        if video.status != "ok":
            expected_counts[video.status] = expected_counts.get(video.status, 0) + 1
    counts = result.publish.status_counts
    assert {k: v for k, v in counts.items() if k != "ok"} == expected_counts


# ---------------------------------------------------------------- 6. schema and constraints

def _label_row(**overrides) -> dict:
    row = {"video_id": "v1", "embedding_space": "s", "label": "tabby", "score": 0.5, "rank": 1,
           "n_frames_supporting": 2, "taxonomy_version": "t", "model_name": "m", "model_version": "1",
           "run_id": "r", "computed_at": NOW}
    return {**row, **overrides}


@pytest.fixture(scope="module")
def schema_db(spark, cfg):
    cfg = with_database(cfg, "schema_features")
    delta_writer.ensure_catalog(spark, cfg.storage)
    spark.createDataFrame([_label_row()], VIDEO_LABELS.schema).write.format("delta").mode("append") \
        .saveAsTable(cfg.storage.qualified(VIDEO_LABELS.name))
    return cfg


def test_published_tables_have_not_null_keys_and_check_constraints(spark, schema_db):
    for table in ALL_TABLES:
        name = schema_db.storage.qualified(table.name)
        fields = {f.name: f for f in spark.table(name).schema.fields}
        assert [k for k in table.keys if fields[k].nullable] == [], name
        constraints = delta_writer.table_constraints(spark, name)
        assert {c for c, _ in table.checks} <= set(constraints), (name, constraints)
    assert delta_writer.table_constraints(spark, schema_db.storage.qualified("video_labels")) == {
        "score_in_unit_range": "score BETWEEN 0 AND 1", "rank_positive": "rank >= 1",
        "n_frames_supporting_valid": "n_frames_supporting >= 0"}


LABEL_COLUMNS = ("video_id, embedding_space, label, score, rank, n_frames_supporting, taxonomy_version, "
                 "model_name, model_version, run_id, computed_at")
FRAME_COLUMNS = "video_id, frame_ts_ms, frame_index, source_uri, status, extracted_at"
T = "TIMESTAMP'2026-11-01 00:00:00'"


@pytest.mark.parametrize("table, columns, values, violated", [
    ("video_labels", LABEL_COLUMNS, f"('v2', 's', 'x', 1.5, 1, 1, 't', 'm', '1', 'r', {T})", "score_in_unit_range"),
    ("video_labels", LABEL_COLUMNS, f"('v2', 's', 'x', -0.1, 1, 1, 't', 'm', '1', 'r', {T})", "score_in_unit_range"),
    ("video_labels", LABEL_COLUMNS, f"('v2', 's', 'x', 0.5, 0, 1, 't', 'm', '1', 'r', {T})", "rank_positive"),
    ("video_labels", LABEL_COLUMNS, f"(NULL, 's', 'x', 0.5, 1, 1, 't', 'm', '1', 'r', {T})", "NOT NULL"),
    ("video_embeddings", "video_id, embedding_space, embedding, n_frames, model_name, model_version, run_id, computed_at",
     f"('v2', 's', array(cast(1.0 AS float)), 0, 'm', '1', 'r', {T})", "n_frames_positive"),
    ("frames", FRAME_COLUMNS, f"('v2', -5, 0, 'u', 'ok', {T})", "frame_ts_ms_valid"),
    ("frames", FRAME_COLUMNS, f"('v2', 0, 0, NULL, 'ok', {T})", "NOT NULL constraint violated for column: source_uri"),
    ("frames", FRAME_COLUMNS, f"('v2', 0, 0, 'u', '', {T})", "status_not_empty"),
])
def test_violating_sql_writes_are_refused_and_change_nothing(spark, schema_db, table, columns, values, violated):
    name = schema_db.storage.qualified(table)
    before_rows = sorted(map(str, spark.table(name).collect()))
    before_version = delta_writer.table_version(spark, schema_db.storage, table)
    with pytest.raises(Exception) as err:
        spark.sql(f"INSERT INTO {name} ({columns}) VALUES {values}")
    assert violated in str(err.value)
    assert delta_writer.table_version(spark, schema_db.storage, table) == before_version
    assert sorted(map(str, spark.table(name).collect())) == before_rows


def test_violating_merge_is_refused_and_changes_nothing(spark, schema_db):
    name = schema_db.storage.qualified(VIDEO_LABELS.name)
    before = (delta_writer.table_version(spark, schema_db.storage, VIDEO_LABELS.name),
              sorted(map(str, spark.table(name).collect())))
    bad = spark.createDataFrame([_label_row(video_id="v9"), _label_row(video_id="v9", label="x", score=2.0)],
                                VIDEO_LABELS.schema)
    with pytest.raises(Exception, match="score_in_unit_range"):
        delta_writer.merge_rows(spark, schema_db.storage, VIDEO_LABELS, bad)
    assert (delta_writer.table_version(spark, schema_db.storage, VIDEO_LABELS.name),
            sorted(map(str, spark.table(name).collect()))) == before


def test_constraints_are_added_to_existing_tables_once(spark, schema_db):
    name = schema_db.storage.qualified(VIDEO_EMBEDDINGS.name)
    spark.sql(f"ALTER TABLE {name} DROP CONSTRAINT n_frames_positive")  # a table from before the checks
    assert "n_frames_positive" not in delta_writer.table_constraints(spark, name)
    delta_writer.ensure_catalog(spark, schema_db.storage)
    assert "n_frames_positive" in delta_writer.table_constraints(spark, name)
    versions = _versions(spark, schema_db)
    delta_writer.ensure_catalog(spark, schema_db.storage)  # idempotent: nothing to add, no commit
    assert _versions(spark, schema_db) == versions


def test_wrong_schema_candidates_are_refused_before_publish(spark, schema_db):
    space = EmbeddingSpace(model_name="m", model_version="1", preprocess_hash="abc", dim=2)
    frame_state = spark.createDataFrame([{
        "video_id": "v1", "frame_ts_ms": 0, "embedding_space": space.id, "embedding": [1.0, 0.0],
        "content_sha256": "h", "labels": ["tabby"], "label_scores": [0.9], "status": "ok", "error": None,
        "model_name": "m", "model_version": "1", "run_id": "r", "computed_at": NOW}], FRAME_EMBEDDINGS.schema)
    video_emb = spark.createDataFrame([("v1", space.id, [1.0, 0.0], 1, "m", "1", "r", NOW)], VIDEO_EMBEDDINGS.schema)
    # Labels with a renamed column and a double score: refused although the other two are fine.
    video_lab = (spark.createDataFrame([_label_row(embedding_space=space.id)], VIDEO_LABELS.schema)
                 .withColumnRenamed("rank", "label_rank").withColumn("score", F.col("score").cast("double")))
    before = _versions(spark, schema_db)
    with pytest.raises(SchemaMismatch) as err:
        publish_candidates(spark, schema_db, space, {FRAME_EMBEDDINGS.name: frame_state, VIDEO_EMBEDDINGS.name: video_emb,
                                                     VIDEO_LABELS.name: video_lab}, ["v1"], run_id="r", txn_version=1)
    message = str(err.value)
    assert "schema_features.video_labels" in message
    assert "missing columns ['rank']" in message and "unexpected columns ['label_rank']" in message
    assert "score (float expected, got double)" in message
    assert _versions(spark, schema_db) == before  # not even frame_embeddings, merged first, was touched
    with pytest.raises(SchemaMismatch, match="lineage|feature_versions"):
        delta_writer.append_rows(spark, schema_db.storage, FEATURE_VERSIONS, video_emb)
    assert _versions(spark, schema_db) == before


# ---------------------------------------------------------------- 8. injection

SENTINEL_ROWS = [("keep", 1)]
EVIL_SPACE = "evil'; DROP TABLE inj_features.sentinel; --`/* ${spark.sql.warehouse.dir} */\\"
PAYLOADS = ["x; DROP TABLE inj_features.sentinel", "inj_features`; DROP TABLE inj_features.sentinel; --",
            "x -- comment", "x /* comment */", "inj_features.sentinel", "`inj_features`", "x'y", ""]


@pytest.fixture(scope="module")
def injection_db(spark, cfg):
    cfg = with_database(cfg, "inj_features")
    delta_writer.ensure_catalog(spark, cfg.storage)
    spark.createDataFrame(SENTINEL_ROWS, "name string, n int").write.format("delta").mode("overwrite") \
        .saveAsTable(cfg.storage.qualified("sentinel"))
    # A published space whose id is hostile (quotes, backtick, comment, ${…}, backslash) with two videos.
    storage = cfg.storage
    spark.createDataFrame([(v, EVIL_SPACE, vec, 1, "m", "1", "r", NOW) for v, vec in
                           (("v1", [1.0, 0.0]), ("v2", [0.6, 0.8]), ("v3", [0.0, 1.0]))],
                          VIDEO_EMBEDDINGS.schema).write.format("delta").mode("append") \
        .saveAsTable(storage.qualified(VIDEO_EMBEDDINGS.name))
    lineage = {"run_id": "r", "embedding_space": EVIL_SPACE, "model_name": "m", "model_version": "1",
               "model_uri": "models:/m/1", "preprocess_hash": "abc", "dim": 2, "metric": "cosine",
               "status": "published", "validation_success": "true", "validation_report": None,
               "failed_expectations": None, "table_versions": "{}", "frames_embedded": 3, "note": None,
               "started_at": NOW, "finished_at": NOW}
    spark.createDataFrame([lineage], FEATURE_VERSIONS.schema).write.format("delta").mode("append") \
        .saveAsTable(storage.qualified(FEATURE_VERSIONS.name))
    return cfg


def _sentinel_intact(spark, cfg) -> None:
    assert spark.catalog.tableExists(cfg.storage.qualified("sentinel"))
    assert [tuple(r) for r in spark.table(cfg.storage.qualified("sentinel")).collect()] == SENTINEL_ROWS


@pytest.mark.parametrize("key", ["storage.database", "storage.catalog"])
def test_hostile_database_and_catalog_names_are_refused(spark, injection_db, capsys, key):
    for payload in PAYLOADS:
        if key == "storage.catalog" and payload == "":
            continue  # empty catalog means "the session's": allowed
        code = cli.main(["sql", *_cli_overrides(injection_db), "--set", f"{key}={payload}", "SELECT 1"])
        assert code == 2, payload
        line = _error_line(capsys.readouterr().err, "catalogfs sql")
        assert f"bad value for '{key}'" in line and "plain SQL identifier" in line
    _sentinel_intact(spark, injection_db)


def test_sql_literals_read_back_exactly(spark):
    for value in [EVIL_SPACE, "a\\'b", "'", "\\", "end\\", "${x}", "$\\{x}", "{}", "line\nbreak", "--", "/*"]:
        assert spark.sql(f"SELECT {delta_writer.sql_literal(value)} AS v").first().v == value


def test_hostile_ids_on_the_command_line(spark, injection_db, capsys):
    overrides = _cli_overrides(injection_db)
    hostile = "x'; DROP TABLE inj_features.sentinel; --"
    assert cli.main(["spaces", "promote", hostile, *overrides]) == 4
    assert "has never been published" in _error_line(capsys.readouterr().err, "catalogfs spaces")
    # The hostile (but published) space is promoted: its id is quoted in the views' SQL.
    # (its model "m" is what this catalogue serves: a space of another model is not promoted)
    assert cli.main(["spaces", "promote", EVIL_SPACE, *overrides, "--set", "model.name=m"]) == 0
    view = spark.table(injection_db.storage.qualified("current_video_embeddings"))
    assert sorted(r.video_id for r in view.collect()) == ["v1", "v2", "v3"]
    assert {r.embedding_space for r in view.collect()} == {EVIL_SPACE}
    assert cli.main(["similar", "--video-id", hostile, *overrides]) == 4
    assert "has no embedding" in _error_line(capsys.readouterr().err, "catalogfs similar")
    assert cli.main(["similar", "--video-id", "v1", "-k", "1", "--json", *overrides]) == 0
    capsys.readouterr()
    assert cli.main(["video-neighbors", "--space", EVIL_SPACE, "-k", "1", *overrides]) == 0
    neighbours = spark.table(injection_db.storage.qualified("video_neighbors")).collect()
    assert sorted((r.video_id, r.neighbor_id) for r in neighbours) == [("v1", "v2"), ("v2", "v3"), ("v3", "v2")]
    assert {r.embedding_space for r in neighbours} == {EVIL_SPACE}
    _sentinel_intact(spark, injection_db)


# ---------------------------------------------------------------- 9. secrets

CANARY = "canary-5e2b7d-never-log-me"
SECRET_KEY = "spark.hadoop.fs.s3a.secret.key"


def test_canary_secret_never_leaves_the_config(spark, cfg, tmp_path, monkeypatch, capfd, caplog):
    """A real extract + embed run (MLflow, GE, run report) with a secret from ${ENV} in the config:
    the secret is in no output, log record, MLflow param or tag, and no file under the data root."""
    import logging

    from mlflow import MlflowClient

    monkeypatch.setenv("CATALOGFS_TEST_S3_SECRET", CANARY)
    conf = tmp_path / "with_secret.yaml"
    conf.write_text(f"spark:\n  settings:\n    {SECRET_KEY}: ${{CATALOGFS_TEST_S3_SECRET}}\n")
    secret_cfg = with_database(cfg, "secret_features")
    videos = tmp_path / "videos"
    make_sample_videos(videos, seconds=1.0, fps=4, width=160, height=96,
                       photos=tuple(p for p in SAMPLE_PHOTOS if p.video_id == "coffee_cup"))
    argv = [*_cli_overrides(secret_cfg), "--conf", str(conf), "--log-level", "DEBUG"]
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="catalogfs")  # last: the capture handler keeps DEBUG
    try:
        assert cli.main(["extract-frames", *argv, "--input", str(videos)]) == 0
        assert cli.main(["embed", *argv]) == 0
    finally:
        spark.conf.unset(SECRET_KEY)  # the shared session picked it up as a runtime setting
    out, err = capfd.readouterr()
    assert CANARY not in out + err + caplog.text
    assert f"'{SECRET_KEY}': '***'" in caplog.text  # the effective config was logged, redacted

    client = MlflowClient(secret_cfg.tracking_uri)
    experiment = client.get_experiment_by_name(secret_cfg.mlflow.experiment)
    runs = [r for r in client.search_runs([experiment.experiment_id])
            if r.data.params.get("storage.database") == "secret_features"]
    assert {r.data.tags["catalogfs.job"] for r in runs} == {"extract_frames", "embed_frames"}
    for run in runs:
        assert run.data.params[f"spark.settings.{SECRET_KEY}"] == "***"
        assert not [k for k, v in {**run.data.params, **run.data.tags}.items() if CANARY in v]

    embed_run = next(r for r in runs if r.data.tags["catalogfs.job"] == "embed_frames")
    report_dir = secret_cfg.storage.reports_dir / embed_run.info.run_id
    ge_results = list((report_dir / "validation").glob("*.json"))
    assert (report_dir / "report.html").exists() and len(ge_results) >= 3  # the grep below is not vacuous
    leaked = [p for p in secret_cfg.storage.data_root.rglob("*")
              if p.is_file() and CANARY.encode() in p.read_bytes()]
    assert leaked == []  # reports, GE results and Data Docs, mlflow.db, artifacts, Delta logs, catalog


# ---------------------------------------------------------------- 10. bad input needing the catalog

def test_missing_input_table_and_bad_inputs_exit_4(spark, cfg, tmp_path, capsys):
    empty_cfg = with_database(cfg, "never_created_features")
    overrides = _cli_overrides(empty_cfg)
    assert cli.main(["embed", *overrides]) == 4
    line = _error_line(capsys.readouterr().err, "embed_frames")
    assert "never_created_features.frames does not exist" in line and "extract-frames" in line
    assert cli.main(["sql", *overrides, "SELECT * FROM never_created_features.frames"]) == 4
    line = _error_line(capsys.readouterr().err, "catalogfs sql")
    assert "TABLE_OR_VIEW_NOT_FOUND" in line and "never_created_features" in line
    (tmp_path / "none").mkdir()
    assert cli.main(["extract-frames", *overrides, "--input", str(tmp_path / "none")]) == 4
    assert "no videos found" in _error_line(capsys.readouterr().err, "extract_frames")
    (tmp_path / "dup").mkdir()
    for name in ("clip.mp4", "clip.mov"):  # files in subfolders get ids of their own (a/clip, b/clip)
        (tmp_path / "dup" / name).write_bytes(b"x")
    assert cli.main(["extract-frames", *overrides, "--input", str(tmp_path / "dup")]) == 4
    assert "two inputs map to video id 'clip'" in _error_line(capsys.readouterr().err, "extract_frames")
    assert cli.main(["embed", *overrides, "--model", "no_alias_given"]) == 2
    assert "expected NAME@ALIAS" in _error_line(capsys.readouterr().err, "embed_frames")
    assert not spark.catalog.databaseExists("never_created_features")  # nothing was created on the way
