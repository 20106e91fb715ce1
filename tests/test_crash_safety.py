"""Crash safety and task retries: the real jobs, in their own processes, killed with SIGKILL at
several points and rerun; Python workers killed on the first attempt of every task.

One chain of runs against one data root (each a fresh process: driver, JVM and Python workers in
their own process group, so SIGKILL takes down everything, like a lost machine):

1. ``demo`` killed during the embed UDF stage (frames are published, no feature is);
2. ``embed`` killed after staging its candidates, before validation;
3. ``embed`` on ``local[2,3]`` whose Python workers SIGKILL themselves on the first attempt of
   every task (Spark retries them), killed in the middle of its publish (after the first table);
4. ``embed`` killed after its last MERGE, before its lineage row (completes the cut publish);
5. ``embed`` killed just before it makes the space current (nothing to embed; it repairs lineage);
6. ``embed`` with no fault: the space becomes current;
7. a video deleted from ``frames`` (by another writer), then ``embed`` killed after its first table
   (the video's frame rows are gone, its video rows not yet);
8. ``embed`` with no fault.

After each run the published tables are read with delta-rs (no Spark): keys are never
duplicated, nothing is half-published within a table, and after run 8 every frame has exactly
one row whose vector equals what the engine computes for that frame in this process, the removed
video has no row left, and every run that committed has a lineage row saying what it committed.
"""

from __future__ import annotations

import json
import os
import signal
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from catalogfs.config import DEFAULT_CONF_DIR, load_config

ROOT = Path(__file__).resolve().parent.parent
PUBLISHED = ("frame_embeddings", "video_embeddings", "video_labels")
REMOVED = "flower"  # the video deleted from frames before run 7
KEYS = {"frame_embeddings": ["video_id", "frame_ts_ms", "embedding_space"],
        "video_embeddings": ["video_id", "embedding_space"],
        "video_labels": ["video_id", "embedding_space", "label"]}


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash-data")
    log = root / "failpoints.log"
    sets = [f"storage.data_root={root}", "storage.database=crash_features", "samples.seconds=2.0",
            "samples.width=320", "samples.height=180", "inference.batch_size=4", "spark.master=local[2]"]
    cfg = load_config([DEFAULT_CONF_DIR / "local.yaml"], sets)

    # Spark's scratch folders (userFiles with the Delta jars, pyspark files: ~86 MB a run) are
    # removed by a JVM shutdown hook, which a SIGKILLed job never runs: keep them here, removed below
    spark_dirs = root / "spark-local"
    spark_dirs.mkdir()

    def run(module: str, failpoints: str | None, *extra_sets: str) -> int:
        env = {**os.environ, "CATALOGFS_FAILPOINT_LOG": str(log), "PYTHONUNBUFFERED": "1",
               "SPARK_LOCAL_DIRS": str(spark_dirs)}
        env.pop("CATALOGFS_FAILPOINTS", None)
        if failpoints:
            env["CATALOGFS_FAILPOINTS"] = failpoints
        # the shell's pid becomes python's (exec) and is the group leader (new session)
        args = ["/bin/sh", "-c", 'CATALOGFS_FAILPOINT_PGID=$$ exec "$0" "$@"', sys.executable, "-m", module, "--quiet"]
        for s in (*sets, *extra_sets):
            args += ["--set", s]
        proc = subprocess.Popen(args, cwd=ROOT, env=env, start_new_session=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            out, _ = proc.communicate(timeout=420)
        finally:
            try:  # whatever a killed run left behind (it should be nothing)
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        (root / f"{module}-{len(runs)}.out").write_text(out or "")
        runs.append((module, failpoints, proc.returncode, out))
        return proc.returncode

    runs: list = []
    states = []
    assert run("catalogfs.jobs.demo", "kill@udf") == -signal.SIGKILL, runs[-1][3][-3000:]
    states.append(_read(cfg))
    assert run("catalogfs.jobs.embed_frames", "kill@after_staging") == -signal.SIGKILL, runs[-1][3][-3000:]
    states.append(_read(cfg))
    assert run("catalogfs.jobs.embed_frames", "crash-first-attempt@udf,kill@publish",
               "spark.master=local[2,3]") == -signal.SIGKILL, runs[-1][3][-3000:]
    states.append(_read(cfg))
    assert run("catalogfs.jobs.embed_frames", "kill@before_lineage") == -signal.SIGKILL, runs[-1][3][-3000:]
    states.append(_read(cfg))
    assert run("catalogfs.jobs.embed_frames", "kill@before_views") == -signal.SIGKILL, runs[-1][3][-3000:]
    states.append(_read(cfg))
    assert run("catalogfs.jobs.embed_frames", None) == 0, runs[-1][3][-3000:]
    states.append(_read(cfg))
    from deltalake import DeltaTable

    DeltaTable(str(cfg.storage.table_path("frames"))).delete(f"video_id = '{REMOVED}'")  # another writer
    assert run("catalogfs.jobs.embed_frames", "kill@publish") == -signal.SIGKILL, runs[-1][3][-3000:]
    states.append(_read(cfg))
    assert run("catalogfs.jobs.embed_frames", None) == 0, runs[-1][3][-3000:]
    states.append(_read(cfg))
    fired = [line.split()[2] for line in log.read_text().splitlines()]
    assert any(spark_dirs.iterdir()), "the jobs did not use SPARK_LOCAL_DIRS"
    shutil.rmtree(spark_dirs, ignore_errors=True)
    return cfg, states, fired


def _read(cfg) -> dict:
    """Every table of the data root as pandas, through delta-rs (absent tables: None)."""
    from deltalake import DeltaTable

    out = {}
    for table in ("frames", *PUBLISHED, "feature_versions"):
        path = cfg.storage.table_path(table)
        out[table] = DeltaTable(str(path)).to_pandas() if (path / "_delta_log").exists() else None
    return out


def _duplicates(df, keys) -> int:
    return int(df.duplicated(subset=keys).sum()) if df is not None and len(df) else 0


def test_every_fault_really_fired(chain):
    _, _, fired = chain
    counts = Counter(fired)
    assert counts["kill@udf"] == 1 and counts["kill@after_staging"] == 1 and counts["kill@publish"] == 2
    assert counts["kill@before_lineage"] == 1 and counts["kill@before_views"] == 1
    assert counts["crash-first-attempt@udf"] >= 2  # Python workers died; their tasks were retried


def test_killed_runs_never_leave_duplicates_or_half_tables(chain):
    _, states, _ = chain
    after_udf_kill, after_staging_kill, after_publish_kill = states[:3]
    assert after_udf_kill["frames"] is not None and len(after_udf_kill["frames"]) > 0
    for state in (after_udf_kill, after_staging_kill):  # killed before publish: nothing published
        for table in PUBLISHED:
            assert state[table] is None or len(state[table]) == 0, table
    # killed after the first table of the publish: that table is complete, the others untouched
    frames = after_publish_kill["frames"]
    fe = after_publish_kill["frame_embeddings"]
    assert set(zip(fe.video_id, fe.frame_ts_ms)) == set(zip(frames.video_id, frames.frame_ts_ms))
    assert len(after_publish_kill["video_embeddings"]) == 0
    for state in states:
        for table in PUBLISHED:
            assert _duplicates(state[table], KEYS[table]) == 0, table


def test_a_run_killed_before_its_lineage_or_its_promotion_is_completed_by_the_next(chain):
    """Killed after its last MERGE (run 4): no lineage row of its own (only run 3's, cut after one
    table, which run 4 recovered when it started), no current space. Run 5 finds nothing to embed
    but writes run 4's row from the tables' history; killed before the promotion, run 6 makes the
    space current."""
    _, states, _ = chain
    after_lineage_kill, after_views_kill, settled = states[3:6]
    assert len(after_lineage_kill["video_labels"]) > 0  # run 4 published every table ...
    assert list(after_lineage_kill["feature_versions"].status) == ["interrupted"]  # ... but wrote no row
    lineage = after_views_kill["feature_versions"]  # run 5 wrote what run 4 committed
    assert sorted(lineage.status) == ["interrupted", "published"]
    recovered = lineage.set_index("status")
    assert set(json.loads(recovered.loc["interrupted"].table_versions)) == {"frame_embeddings"}
    assert set(json.loads(recovered.loc["published"].table_versions)) == set(PUBLISHED)
    assert all(note.startswith("recovered by run ") for note in lineage.note)
    statuses = list(settled["feature_versions"].sort_values("finished_at").status)
    assert statuses == ["interrupted", "published", "promoted"]  # run 6: the first published space


def test_a_removal_cut_between_tables_is_completed(chain):
    """Run 7 deleted the removed video's frame rows and was killed before its video rows; run 8
    found the video rows without frame rows and deleted them."""
    _, states, _ = chain
    cut, final = states[6], states[7]
    assert REMOVED not in set(cut["frame_embeddings"].video_id)
    assert REMOVED in set(cut["video_embeddings"].video_id)  # what the old planner never repaired
    for table in PUBLISHED:
        assert REMOVED not in set(final[table].video_id), table


def test_rerun_after_crashes_publishes_every_frame_once_with_the_right_vectors(chain):
    from catalogfs.udfs.engine import EmbeddingEngine, EngineOptions
    from catalogfs.udfs.model_registry import write_default_bundle

    cfg, states, _ = chain
    final = states[-1]
    frames, fe = final["frames"], final["frame_embeddings"]
    assert fe.embedding_space.nunique() == 1
    assert sorted(zip(fe.video_id, fe.frame_ts_ms)) == sorted(zip(frames.video_id, frames.frame_ts_ms))
    ok_videos = set(frames[frames.status == "ok"].video_id)
    assert REMOVED not in ok_videos and len(ok_videos) >= 5
    assert set(final["video_embeddings"].video_id) == ok_videos
    assert set(final["video_labels"].video_id) == ok_videos

    ok = frames[frames.status == "ok"].sort_values(["video_id", "frame_ts_ms"])
    engine = EmbeddingEngine.from_directory(write_default_bundle(cfg.storage.data_root / "check_bundle"),
                                            EngineOptions(batch_size=4, device="cpu"))
    expected = engine.embed([bytes(b) for b in ok.image])
    published = fe.set_index(["video_id", "frame_ts_ms"])
    for (vid, ts), vec, labels in zip(zip(ok.video_id, ok.frame_ts_ms), expected.embeddings, expected.label_names):
        row = published.loc[(vid, ts)]
        assert row.status == "ok"
        np.testing.assert_allclose(np.asarray(row.embedding, dtype=np.float32), vec, atol=1e-5)
        assert list(row.labels)[:2] == labels[:2]
    bad = frames[frames.status != "ok"]
    assert len(bad) >= 1 and set(published.loc[list(zip(bad.video_id, bad.frame_ts_ms))].status) == set(bad.status)


def test_history_shows_one_publish_per_run_and_lineage_names_each(chain):
    from deltalake import DeltaTable

    cfg, states, _ = chain
    lineage = states[-1]["feature_versions"]
    merges: dict[str, dict[str, int]] = {}
    for table in PUBLISHED:
        history = DeltaTable(str(cfg.storage.table_path(table))).history()
        runs = Counter(json.loads(c["userMetadata"])["run_id"] for c in history
                       if c.get("userMetadata") and c.get("operation") == "MERGE")  # data commits only
        assert all(n == 1 for n in runs.values()), (table, runs)
        for c in history:
            if c.get("userMetadata") and c.get("operation") == "MERGE":
                merges.setdefault(json.loads(c["userMetadata"])["run_id"], {})[table] = c["version"]
    attempts = lineage[lineage.status != "promoted"]
    assert len(attempts) == len(merges) == 4  # runs 3, 4, 7 (killed) and 8: every one recorded
    for row in attempts.itertuples():
        assert json.loads(row.table_versions) == merges[row.run_id], row.run_id
        assert row.status == ("published" if set(merges[row.run_id]) == set(PUBLISHED) else "interrupted")
