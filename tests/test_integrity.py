"""Integrity (issue 23, part 4): a commit in a published table that no recorded run made — a file
written by hand into ``_delta_log`` with only ``remove`` actions, no ``commitInfo`` — sends the next
embed run to a full plan, loudly, and the full plan restores the rows — also when the file claims to
be a MERGE of a run that never ran; a run killed after its MERGE is recovered, not taken for such a
commit; ``catalogfs verify`` checks the tables against the
lineage; what a job creates under the data root is private to its user.

The Spark tests share one small catalogue (one database) and run in file order."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from catalogfs import failpoints
from catalogfs.errors import EXIT_INTEGRITY, EXIT_OK
from catalogfs.features.integrity import METADATA_OPERATIONS, commit_problem
from catalogfs.jobs import embed_frames, extract_frames, verify
from catalogfs.jobs.samples import SAMPLE_PHOTOS, make_sample_videos
from tests.helpers import with_database

ROOT = Path(__file__).resolve().parent.parent
DATABASE = "integrity_features"
LABEL_COLUMNS = ("rank", "n_frames_supporting", "taxonomy_version", "model_name", "model_version")


# --- the rule, without Spark --------------------------------------------------------------------

def test_only_recorded_runs_merges_and_metadata_operations_are_harmless():
    recorded = {("run-a", "video_labels", 7)}
    harmless = [{"version": 7, "operation": "MERGE", "run_id": "run-a"},
                *({"version": 8, "operation": op} for op in sorted(METADATA_OPERATIONS))]
    assert [commit_problem("video_labels", c, recorded) for c in harmless] == [None] * len(harmless)
    assert {"VACUUM START", "VACUUM END", "SET TBLPROPERTIES", "ADD CONSTRAINT", "OPTIMIZE"} <= METADATA_OPERATIONS

    def problem(**commit) -> str:
        found = commit_problem("video_labels", {"version": 9, **commit}, recorded)
        assert found and found.startswith("video_labels version 9 "), commit
        return found

    assert "no operation" in problem(operation=None) and "commitInfo" in problem(operation="")
    assert "DELETE not made by a catalogfs run" in problem(operation="DELETE")
    assert "REORG not made" in problem(operation="REORG")  # not on the list: not provably harmless
    assert "MERGE not made" in problem(operation="MERGE")  # no run named
    assert "MERGE not made" in problem(operation="MERGE", run_id=["run-a"])  # not a run id at all
    assert "no lineage row records" in problem(operation="MERGE", run_id="run-b")
    assert "no lineage row records" in problem(operation="MERGE", run_id="run-a")  # run-a's commit is v7


# --- file modes (a job in its own process: its own umask and JVM) --------------------------------

@pytest.mark.spark
def test_what_a_job_creates_under_the_data_root_is_private(tmp_path):
    videos = tmp_path / "videos"
    make_sample_videos(videos, seconds=1.0, fps=2, width=96, height=64,
                       photos=tuple(p for p in SAMPLE_PHOTOS if p.video_id == "coffee_cup"))
    root = tmp_path / "private" / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_GATEWAY", "CATALOGFS_FAILPOINT"))}
    proc = subprocess.run([sys.executable, "-m", "catalogfs.jobs.extract_frames", "--quiet", "--input", str(videos),
                           "--set", f"storage.data_root={root}", "--set", "spark.master=local[1]",
                           "--set", "server.use=never"],
                          cwd=ROOT, env={**env, "SPARK_LOCAL_IP": "127.0.0.1"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    for name in ("metastore_db", "warehouse", "logs", "mlflow.db"):  # the catalogue, its log, the registry
        assert (root / name).exists(), name
    data_files = list((root / "warehouse").rglob("*.parquet"))
    assert data_files
    shared = [f"{p.relative_to(root)} {stat.filemode(p.stat().st_mode)}" for p in [root, *root.rglob("*")]
              if not p.is_symlink() and stat.S_IMODE(p.stat().st_mode) & 0o077]
    assert not shared, shared


# --- one published catalogue ------------------------------------------------------------------

@pytest.fixture(scope="module")
def published(spark, cfg, tmp_path_factory):
    cfg = with_database(cfg, DATABASE)
    videos = tmp_path_factory.mktemp("integrity_videos")
    make_sample_videos(videos, seconds=1.5, fps=6, width=160, height=96,
                       photos=tuple(p for p in SAMPLE_PHOTOS if p.video_id in ("coffee_cup", "flower")))
    extract_frames.run(spark, cfg, input=str(videos))
    first = embed_frames.run(spark, cfg)
    assert first.published
    return cfg, first, tmp_path_factory


def _args(cfg) -> list[str]:
    return ["--set", f"storage.data_root={cfg.storage.data_root}", "--set", f"storage.database={DATABASE}",
            "--set", "server.use=never"]


def _labels(spark, cfg) -> dict:
    """video_labels by key: score and the columns a recomputation keeps (not run_id, computed_at)."""
    return {(r.video_id, r.embedding_space, r.label): (r.score, *(r[c] for c in LABEL_COLUMNS))
            for r in spark.table(cfg.storage.qualified("video_labels")).collect()}


def _forge_remove_all(spark, cfg, table: str, *, claims: dict | None = None) -> int:
    """What the attack of issue 23 wrote: the table's next commit file, by hand, holding only a
    ``remove`` action for every file of its current snapshot (no ``commitInfo``, or one claiming
    ``claims``: operation and user metadata). Its version."""
    location = cfg.storage.table_path(table).resolve()
    log_dir = location / "_delta_log"
    version = max(int(p.name.split(".")[0]) for p in log_dir.glob("*.json")) + 1
    files = spark.table(cfg.storage.qualified(table)).inputFiles()
    assert files
    now = int(time.time() * 1000)
    actions = [{"remove": {"path": os.path.relpath(unquote(urlparse(f).path), location),
                           "deletionTimestamp": now, "dataChange": True}} for f in files]
    if claims:
        actions.insert(0, {"commitInfo": {"timestamp": now, "operationParameters": {}, **claims}})
    (log_dir / f"{version:020d}.json").write_text("".join(json.dumps(a) + "\n" for a in actions))
    return version


def _mismatches(result) -> list[str]:
    return [line for c in result.checks for line in c.lines() if line.startswith("MISMATCH")]


def test_verify_passes_on_a_clean_catalogue(spark, published, capsys):
    cfg, first, _ = published
    result = verify.run(spark, cfg)
    assert _mismatches(result) == []
    assert {c.name for c in result.checks} == {"lineage", "commits", "keys", "spaces", "coverage"}
    assert verify.main(_args(cfg)) == EXIT_OK
    out = capsys.readouterr().out
    assert f"verify: ok       coverage {first.space.id}: every frame of frames version" in out
    assert "verify: ok       keys video_labels: (video_id, embedding_space, label) unique" in out
    assert "verify: all " in out and "MISMATCH" not in out


def test_a_forged_remove_commit_sends_the_run_to_a_full_plan_that_restores_the_rows(spark, published, caplog,
                                                                                   capsys):
    """A commit file with only ``remove`` actions (DESCRIBE HISTORY: operation null) empties
    ``video_labels`` for every reader. The next embed run names it in a WARNING, plans every video
    and publishes the same labels again."""
    cfg, first, _ = published
    before = _labels(spark, cfg)
    assert before
    version = _forge_remove_all(spark, cfg, "video_labels")
    assert spark.table(cfg.storage.qualified("video_labels")).count() == 0  # every reader sees it
    history = spark.sql(f"DESCRIBE HISTORY {cfg.storage.qualified('video_labels')} LIMIT 1").first()
    assert (history.version, history.operation) == (version, None)

    caplog.set_level(logging.WARNING)
    result = embed_frames.run(spark, cfg)

    assert result.plan_scope.startswith(f"full plan: video_labels version {version} has no operation"), \
        result.plan_scope
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"video_labels version {version}" in w and "full plan" in w for w in warnings), warnings
    assert any(f"video_labels version {version}" in w for w in result.warnings)
    assert result.published and result.frames_embedded == 0  # the frame rows were intact
    after = _labels(spark, cfg)
    assert after.keys() == before.keys()
    for key, (score, *rest) in before.items():
        assert after[key][0] == pytest.approx(score, abs=1e-6) and list(after[key][1:]) == rest, key
    # the run recorded its own checkpoint, after the forged commit: the next run is incremental again
    again = embed_frames.run(spark, cfg)
    assert again.plan_scope.startswith("incremental plan") and not again.warnings


def test_verify_names_a_forged_commit(spark, published, capsys):
    """Forged again, in ``frame_embeddings`` this time: verify fails (exit 8) naming the table and
    the version; once a run restored the rows, it passes again."""
    cfg, first, _ = published
    version = _forge_remove_all(spark, cfg, "frame_embeddings")
    assert verify.main(_args(cfg)) == EXIT_INTEGRITY
    out = capsys.readouterr().out
    assert f"verify: MISMATCH commits frame_embeddings: frame_embeddings version {version} has no operation" in out
    assert f"verify: MISMATCH coverage {first.space.id}: frame_embeddings:" in out  # its frames lost their rows

    restored = embed_frames.run(spark, cfg)
    assert restored.plan_scope.startswith(f"full plan: frame_embeddings version {version}")
    assert restored.published and restored.frames_embedded > 0
    assert _mismatches(verify.run(spark, cfg)) == []


def test_a_run_killed_after_its_merges_is_recovered_not_taken_for_a_forgery(spark, published, caplog):
    """A run that committed every table and died before its lineage row: the next run records it
    (crash repair) first, so its MERGEs count as a run's and the plan stays incremental."""
    cfg, first, factory = published
    videos = factory.mktemp("integrity_new")
    make_sample_videos(videos, seconds=1.5, fps=6, width=160, height=96,
                       photos=tuple(p for p in SAMPLE_PHOTOS if p.video_id == "rocket_launch"))
    extract_frames.run(spark, cfg, input=str(videos))

    def die() -> None:
        raise RuntimeError("killed before its lineage row")

    failpoints.register("before_lineage", die)
    try:
        with pytest.raises(RuntimeError, match="killed before its lineage row"):
            embed_frames.run(spark, cfg)
    finally:
        failpoints.register("before_lineage", None)
    unrecorded = _mismatches(verify.run(spark, cfg))  # until a run recovers it, verify names it
    assert unrecorded and all("no lineage row records" in line for line in unrecorded), unrecorded

    caplog.set_level(logging.WARNING)
    result = embed_frames.run(spark, cfg)
    assert len(result.recovered_runs) == 1
    assert result.plan_scope.startswith("incremental plan"), result.plan_scope
    assert result.frames_embedded == 0 and not result.warnings
    assert not [r for r in caplog.records if "full plan" in r.getMessage()]
    assert _mismatches(verify.run(spark, cfg)) == []


def test_a_forged_merge_naming_a_run_that_never_ran_is_not_recovered(spark, published, caplog):
    """A commit file that claims to be a MERGE of this space by a run id nobody used (metadata
    written by hand, only ``remove`` actions): crash repair does not record it (no such run
    validated anything here), the plan takes it for what it is, and the rows come back."""
    cfg, first, _ = published
    table = cfg.storage.qualified("video_embeddings")
    before = {r.video_id: list(r.embedding) for r in spark.table(table).collect()}
    fake = "f" * 32
    claims = {"operation": "MERGE", "userMetadata": json.dumps({"run_id": fake, "embedding_space": first.space.id})}
    version = _forge_remove_all(spark, cfg, "video_embeddings", claims=claims)
    history = spark.sql(f"DESCRIBE HISTORY {table} LIMIT 1").first()
    assert (history.version, history.operation) == (version, "MERGE") and spark.table(table).count() == 0

    caplog.set_level(logging.WARNING)
    result = embed_frames.run(spark, cfg)
    assert result.recovered_runs == []
    assert any(f"naming run {fake}" in r.getMessage() and "not recovered" in r.getMessage() for r in caplog.records)
    assert result.plan_scope.startswith(f"full plan: video_embeddings version {version} is a MERGE naming run "
                                        f"{fake}, which no lineage row records"), result.plan_scope
    after = {r.video_id: list(r.embedding) for r in spark.table(table).collect()}
    assert after.keys() == before.keys()
    for video, vector in before.items():
        assert after[video] == pytest.approx(vector, abs=1e-6), video
    assert _mismatches(verify.run(spark, cfg)) == []


def test_verify_names_a_duplicate_key_written_by_hand(spark, published, capsys):
    """Last: leaves the catalogue broken. A row of ``video_labels`` appended again by hand."""
    cfg, first, _ = published
    table = cfg.storage.qualified("video_labels")
    spark.sql(f"INSERT INTO {table} SELECT * FROM {table} LIMIT 1")
    version = spark.sql(f"DESCRIBE HISTORY {table} LIMIT 1").first().version
    assert verify.main(_args(cfg)) == EXIT_INTEGRITY
    out = capsys.readouterr().out
    assert (f"verify: MISMATCH keys video_labels: video_labels version {version}: 1 keys "
            f"(video_id, embedding_space, label) appear more than once") in out
    assert f"verify: MISMATCH commits video_labels: video_labels version {version} is a WRITE not made" in out
