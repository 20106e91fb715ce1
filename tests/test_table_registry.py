"""The table registry (features.tables.REGISTRY) is the single description of the published tables:
every entry is complete, and stage, audit, publish, relabel, lineage and views iterate over it, so
a new entry is picked up everywhere. No JVM: the iteration functions take the registry as a
parameter, and pandas frames stand in for the staged rows where only their columns are read."""

from __future__ import annotations

import inspect
from dataclasses import replace

import pandas as pd
import pytest
from pyspark.sql.types import FloatType, IntegerType, StringType, StructType, TimestampType

from catalogfs.expectations import suites, vector_checks
from catalogfs.expectations.runner import suite_columns
from catalogfs.expectations.suites import SuiteParams
from catalogfs.features import pooling
from catalogfs.features.audit import table_checks
from catalogfs.features.promotion import CURRENT_VIEWS
from catalogfs.features.publish import merge_plan
from catalogfs.features.tables import (
    ALL_TABLES,
    FRAME_LEVEL,
    PUBLISHED,
    PUBLISHED_TABLES,
    REGISTRY,
    VIDEO_LEVEL,
    Fill,
    Registered,
    TableDef,
    _f,
    current_views,
    every_publish,
    run_tables,
)

PARAMS = SuiteParams(dim=4, norm_tolerance=1e-3, max_reject_rate=0.1)

# A made-up video-level table, registered like the real ones (its rows and suite reuse the labels').
VIDEO_TOPICS = TableDef(
    name="video_topics",
    keys=("video_id", "embedding_space", "label"),
    comment="test only",
    schema=StructType([
        _f("video_id", StringType(), False), _f("embedding_space", StringType(), False),
        _f("label", StringType(), False), _f("score", FloatType(), False), _f("rank", IntegerType(), False),
        _f("run_id", StringType(), False), _f("computed_at", TimestampType(), False),
    ]),
)
EXTRA = Registered(VIDEO_TOPICS, Fill(suite="video_labels_suite", rows="video_labels_rows", relabel=False), view=True)
WITH_EXTRA = (*REGISTRY, EXTRA)


def _columns(table: TableDef) -> list[str]:
    return [f.name for f in table.schema.fields]


def test_the_published_tables_are_the_four_feature_tables_in_merge_order():
    assert [t.name for t in PUBLISHED_TABLES] == ["frame_embeddings", "video_embeddings", "video_labels",
                                                  "video_flags"]
    assert [t.name for t in ALL_TABLES] == [
        "frames", "frame_embeddings", "video_embeddings", "video_labels", "video_flags", "feature_versions",
        "video_neighbors", "video_embeddings_history", "vector_indexes", "taxonomies"]
    assert len({t.name for t in ALL_TABLES}) == len(ALL_TABLES)


@pytest.mark.parametrize("entry", PUBLISHED, ids=lambda e: e.name)
def test_every_published_table_has_a_suite_whose_unique_keys_are_its_merge_keys(entry):
    build = getattr(suites, entry.fill.suite)
    suite = build(PARAMS, tuple(_columns(entry.table)))
    assert suite.name == entry.name
    unique = [e.configuration.kwargs["column_list"] for e in suite.expectations
              if e.configuration.kwargs.get("column_list")]
    assert unique == [list(entry.table.keys)]
    assert set(entry.table.keys) <= set(_columns(entry.table))
    assert all(not f.nullable for f in entry.table.schema.fields if f.name in entry.table.keys)
    # the suite reads only the table's columns and those the audit's checks add
    added = {"emb_dim", "emb_norm", "emb_finite", "emb_missing_when_ok", "pipeline_failure",
             "label_score_min", "label_score_max", "drift_cosine"}
    assert set(suite_columns(suite)) <= set(_columns(entry.table)) | added


@pytest.mark.parametrize("entry", PUBLISHED, ids=lambda e: e.name)
def test_every_published_table_has_a_stage_and_is_scoped_per_space_and_video(entry):
    assert entry.fill.level in (FRAME_LEVEL, VIDEO_LEVEL)
    if entry.fill.level == VIDEO_LEVEL:
        rows = getattr(pooling, entry.fill.rows)
        assert list(inspect.signature(rows).parameters) == ["frame_rows", "p"]
    else:
        assert entry.fill.rows == ""
    if entry.fill.checks:
        assert callable(getattr(vector_checks, entry.fill.checks))
    # publish deletes the space's vanished rows of the run's videos: both are key columns
    assert entry.per_space and "video_id" in entry.table.keys
    assert entry.view and CURRENT_VIEWS[f"current_{entry.name}"] == entry.name


def test_exactly_one_frame_level_table_and_shared_tables_are_not_per_space():
    assert [e.name for e in PUBLISHED if e.fill.level == FRAME_LEVEL] == ["frame_embeddings"]
    assert not REGISTRY[0].per_space and REGISTRY[0].name == "frames"
    assert CURRENT_VIEWS == {f"current_{t.name}": t.name for t in PUBLISHED_TABLES}


def test_which_tables_each_run_writes():
    assert [e.name for e in run_tables(with_flags=True)] == [t.name for t in PUBLISHED_TABLES]
    assert [e.name for e in run_tables(with_flags=False)] == ["frame_embeddings", "video_embeddings", "video_labels"]
    assert [e.name for e in run_tables(relabel=True)] == ["frame_embeddings", "video_labels", "video_flags"]
    assert every_publish() == {"frame_embeddings", "video_embeddings", "video_labels"}


def test_a_new_registered_table_is_picked_up_by_every_iteration():
    assert run_tables(registry=WITH_EXTRA)[-1] is EXTRA
    assert EXTRA not in run_tables(relabel=True, registry=WITH_EXTRA)
    assert "video_topics" in every_publish(WITH_EXTRA)
    assert current_views(WITH_EXTRA)["current_video_topics"] == "video_topics"
    staged = {"video_labels": "labels", "video_topics": "topics", "frame_embeddings": "frames"}
    plan = merge_plan(staged, registry=WITH_EXTRA)
    assert [(t.name, rows) for t, rows, _ in plan] == [("frame_embeddings", "frames"), ("video_labels", "labels"),
                                                        ("video_topics", "topics")]
    assert plan[0][2] == "t.run_id <> s.run_id OR NOT (t.content_sha256 <=> s.content_sha256)"
    assert plan[1][2] is None


def test_publish_and_audit_refuse_a_table_the_registry_does_not_publish():
    with pytest.raises(ValueError, match="video_topics"):
        merge_plan({"video_topics": "topics"})
    with pytest.raises(ValueError, match="frames"):
        merge_plan({"frames": "rows"})  # registered, but no run publishes it
    with pytest.raises(ValueError, match="video_topics"):
        table_checks({"video_topics": pd.DataFrame()}, PARAMS)


def test_audit_builds_each_staged_tables_suite_in_registry_order():
    columns = _columns(VIDEO_TOPICS)
    rows = {"video_topics": pd.DataFrame(columns=columns), "video_labels": pd.DataFrame(columns=columns)}
    checks = table_checks(rows, PARAMS, registry=WITH_EXTRA)
    assert list(checks) == ["video_labels", "video_topics"]
    df, suite = checks["video_topics"]
    assert df is rows["video_topics"] and suite.name == "video_labels"  # the suite the entry names


def test_an_unflagged_run_leaves_a_flag_table_out():
    flagged = replace(EXTRA, fill=replace(EXTRA.fill, flags=True))
    assert flagged in run_tables(with_flags=True, registry=(*REGISTRY, flagged))
    assert flagged not in run_tables(with_flags=False, registry=(*REGISTRY, flagged))
    assert "video_topics" not in every_publish((*REGISTRY, flagged))
