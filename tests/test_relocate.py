"""A data root that can be moved (issue 24, item 7): a published data root copied elsewhere
(backup, restore, a bigger disk) works on its own tables and its own model registry, and a run on
the copy leaves the original as it was, byte for byte.

The jobs run as processes: each data root has its own embedded metastore, so its own JVM."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from catalogfs.jobs.samples import SAMPLE_PHOTOS, make_sample_videos
from tests.helpers import PROJECT_ROOT


TABLES = ("frames", "frame_embeddings", "video_embeddings", "video_labels", "feature_versions")
FIRST = ("coffee_cup", "rocket_launch")
LATER = ("cat_chelsea",)
DB = "catalog_features.db"


# extract, then embed, in one process (one JVM start per data root)
_PUBLISH = """
import sys
from catalogfs.jobs import embed_frames, extract_frames
from catalogfs.jobs.job_main import run_main

def publish(spark, cfg):
    extract_frames.run(spark, cfg, input=sys.argv[1])
    result = embed_frames.run(spark, cfg)
    print("embedded:", result.frames_embedded, "published:", result.published)

sys.exit(run_main(publish, sys.argv[2:], prog="publish", description=""))
"""


def _publish(root: Path, videos: Path) -> str:
    """Extract ``videos`` into ``root``'s catalogue and embed them, in a process of its own
    (small videos, one core, no server); returns what it printed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_GATEWAY", "CATALOGFS_FAILPOINT"))}
    env.update(SPARK_LOCAL_IP="127.0.0.1", GX_ANALYTICS_ENABLED="false")
    sets = [f"storage.data_root={root}", "spark.master=local[1]", "server.use=never", "inference.batch_size=8",
            "publish.sync_history=false"]
    done = subprocess.run([sys.executable, "-c", _PUBLISH, str(videos), *(a for s in sets for a in ("--set", s))],
                          cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, f"publish exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done.stdout + done.stderr


def _catalogfs(root: Path, *args: str) -> subprocess.CompletedProcess:
    """``catalogfs <args>`` over ``root`` in its own process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK_GATEWAY")}
    return subprocess.run([sys.executable, "-m", "catalogfs.jobs.cli", *args, "--set", f"storage.data_root={root}"],
                          cwd=PROJECT_ROOT, env={**env, "SPARK_LOCAL_IP": "127.0.0.1"}, capture_output=True,
                          text=True, timeout=300)


def _videos(folder: Path, ids: tuple[str, ...]) -> Path:
    make_sample_videos(folder, seconds=1.0, fps=2, width=96, height=64,
                       photos=tuple(p for p in SAMPLE_PHOTOS if p.video_id in ids))
    return folder


def _files(root: Path) -> dict[str, str]:
    """Every file under ``root``: relative path → sha256 of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _tables(root: Path) -> dict[str, tuple[int, list[str], set[tuple]]]:
    """Each published table of ``root``: (Delta version, data files, rows without the vectors)."""
    from deltalake import DeltaTable

    found = {}
    for name in TABLES:
        table = DeltaTable(str(root / "warehouse" / DB / name))
        rows = table.to_pyarrow_table().to_pylist()
        found[name] = (table.version(), sorted(table.file_uris()),
                       {tuple(sorted((k, repr(v)) for k, v in r.items())) for r in rows})
    return found


def _video_ids(root: Path, table: str) -> set[str]:
    from deltalake import DeltaTable

    return set(DeltaTable(str(root / "warehouse" / DB / table)).to_pyarrow_table(
        columns=["video_id"]).column("video_id").to_pylist())


def _registry_paths(root: Path) -> list[str]:
    """Every path-like value in the root's MLflow registry (artifact locations, model sources)."""
    with sqlite3.connect(root / "mlflow.db") as db:
        return [value for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                                            ("model_versions", "source"), ("model_versions", "storage_location"))
                for (value,) in db.execute(f"SELECT {column} FROM {table}") if value]


@pytest.mark.spark
@pytest.mark.slow  # two job processes, each with its own JVM
def test_a_copied_data_root_publishes_into_its_own_tables_and_leaves_the_original_alone(tmp_path):
    original, copy = tmp_path / "original" / "data", tmp_path / "restored" / "data"
    _publish(original, _videos(tmp_path / "first", FIRST))
    assert _video_ids(original, "video_embeddings") == set(FIRST)
    files_before, tables_before = _files(original), _tables(original)

    # a copy that lacks a table's folder: refused, naming the table; nothing re-pointed
    partial = tmp_path / "partial" / "data"
    shutil.copytree(original, partial, symlinks=True)
    shutil.rmtree(partial / "warehouse" / DB / "video_flags")
    refused = _catalogfs(partial, "relocate")
    assert refused.returncode == 4, refused.stdout + refused.stderr
    assert "table catalog_features.video_flags: its folder is missing" in refused.stderr, refused.stderr
    assert str(original) in _catalogfs(partial, "relocate", "--dry-run").stdout  # still the old root's

    shutil.copytree(original, copy, symlinks=True)
    embedded = _publish(copy, _videos(tmp_path / "later", LATER))

    # the copy's own tables got the new video, next to what was copied
    for table in ("frames", "frame_embeddings", "video_embeddings", "video_labels"):
        assert _video_ids(copy, table) == set(FIRST) | set(LATER), table
    assert "published: True" in embedded, embedded[-3000:]
    assert "data root moved from" in embedded and str(original) in embedded, embedded[-3000:]  # one warning line
    # the original: same Delta versions, same files, same rows; no file under it changed
    assert _tables(original) == tables_before
    assert _files(original) == files_before
    # the copy's registry names only the copy's own artifacts (the default model resolves from there)
    paths = _registry_paths(copy)
    assert paths and all(str(original) not in p for p in paths), paths
    assert any(str(copy) in p for p in paths), paths


@pytest.mark.slow  # no JVM, but the registry's first migrations and the default bundle take ~45 s here
def test_a_moved_registry_keeps_resolving_the_default_model_from_its_new_place(tmp_path):
    from mlflow import MlflowClient

    from catalogfs.config import DEFAULT_CONF_DIR, load_config
    from catalogfs.tracking import configure_mlflow
    from catalogfs.udfs.model_registry import ModelRef, ensure_default_model, resolve_model

    def config(root: Path):
        return load_config([DEFAULT_CONF_DIR / "local.yaml"], [f"storage.data_root={root}"])

    before, after = config(tmp_path / "old" / "data"), config(tmp_path / "disk2" / "data")
    experiment_id = configure_mlflow(before)  # (before the client: it reads the tracking URI when made)
    ensure_default_model(MlflowClient(), before.model.name, before.model.alias, experiment_id=experiment_id)
    before.storage.data_root.parent.rename(after.storage.data_root.parent)  # a move: the old root is gone

    configure_mlflow(after)
    resolved = resolve_model(MlflowClient(), ModelRef(after.model.name, alias=after.model.alias),
                             cache_dir=after.storage.model_cache_dir)
    assert resolved.source_uri.startswith((after.storage.data_root / "mlflow-artifacts").as_uri()), resolved.source_uri
    assert resolved.spec.embedding_dim == 1280
    assert all(str(before.storage.data_root) not in p for p in _registry_paths(after.storage.data_root))


@pytest.mark.spark
@pytest.mark.slow  # one command with its own JVM
def test_when_a_command_exits_its_jvm_has_exited_too(tmp_path):
    """A backup taken the moment a scheduled command returns must see its final data root: the
    command's JVM (logs, the metastore's lock, Derby's files) has finished before the process exits.
    (Seen: a copy test found the original's JVM log still growing after the job had returned.)"""
    from catalogfs.catalog_lock import metastore_holder

    root = tmp_path / "data"
    done = _catalogfs(root, "sql", "SELECT 1 AS one")
    assert done.returncode == 0, done.stdout + done.stderr
    assert metastore_holder(root / "metastore_db") is None  # no JVM of that command holds the catalogue
    after_exit = _files(root)
    assert any(name.startswith("logs/spark-") for name in after_exit)
    import time

    time.sleep(5)
    assert _files(root) == after_exit  # nothing under the data root changes once the command has returned
