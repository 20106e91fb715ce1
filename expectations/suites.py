"""One Great Expectations suite per published table, built in code with thresholds as parameters.

Each table's suite is named in the table registry (:data:`features.tables.REGISTRY`) and called as
``suite(params, columns)``: ``columns`` are the candidate rows' columns (a suite may test a column
only when the audit added it).

The suites run against the *candidate* DataFrames (staging) after
:mod:`expectations.vector_checks` has added the vector columns they test.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import great_expectations as gx  # noqa: E402
import great_expectations.expectations as gxe  # noqa: E402
from catalogfs.statuses import Status


@dataclass(frozen=True)
class SuiteParams:
    dim: int
    norm_tolerance: float
    max_reject_rate: float
    expected_rows: int | None = None
    drift_min_cosine: float = 0.8
    drift_min_share: float = 0.95
    max_label_shift: float = 0.5
    max_input_reject_rate: float = 0.5
    max_input_rejects_per_run: int = 0  # 0: no limit


def _keys_not_null(keys: tuple[str, ...]) -> list:
    return [gxe.ExpectColumnValuesToNotBeNull(column=k) for k in keys]


def _vector_expectations(p: SuiteParams) -> list:
    return [
        gxe.ExpectColumnValuesToBeBetween(column="emb_dim", min_value=p.dim, max_value=p.dim),
        gxe.ExpectColumnValuesToBeBetween(column="emb_norm", min_value=1 - p.norm_tolerance,
                                          max_value=1 + p.norm_tolerance),
        gxe.ExpectColumnValuesToBeInSet(column="emb_finite", value_set=[True]),
    ]


def frame_embeddings_suite(p: SuiteParams, columns: tuple[str, ...] = ()) -> gx.ExpectationSuite:
    keys = ("video_id", "frame_ts_ms", "embedding_space")
    expectations = [
        *_keys_not_null(keys),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=list(keys)),
        *_vector_expectations(p),
        gxe.ExpectColumnValuesToBeInSet(column="emb_missing_when_ok", value_set=[False]),
        gxe.ExpectColumnValuesToBeBetween(column="label_score_min", min_value=0.0, max_value=1.0),
        gxe.ExpectColumnValuesToBeBetween(column="label_score_max", min_value=0.0, max_value=1.0),
        gxe.ExpectColumnValuesToNotBeNull(column="model_version"),
    ]
    if "pipeline_failure" in columns:  # the run's reject rate: failures of the pipeline itself
        expectations.append(gxe.ExpectColumnValuesToBeInSet(column="pipeline_failure", value_set=[False],
                                                            mostly=max(1.0 - p.max_reject_rate, 0.0)))
    else:  # no classification column: every non-ok status counts
        expectations.append(gxe.ExpectColumnValuesToBeInSet(column="status", value_set=[Status.OK.value],
                                                            mostly=max(1.0 - p.max_reject_rate, 0.0)))
    if "drift_cosine" in columns:  # unchanged frames stay close to the published space
        expectations.append(gxe.ExpectColumnValuesToBeBetween(
            column="drift_cosine", min_value=p.drift_min_cosine, max_value=1.0 + p.norm_tolerance,
            mostly=p.drift_min_share))
    if p.expected_rows is not None:  # one output row per input frame
        expectations.append(gxe.ExpectTableRowCountToEqual(value=p.expected_rows))
    return gx.ExpectationSuite(name="frame_embeddings", expectations=expectations)


def video_embeddings_suite(p: SuiteParams, columns: tuple[str, ...] = ()) -> gx.ExpectationSuite:
    keys = ("video_id", "embedding_space")
    return gx.ExpectationSuite(name="video_embeddings", expectations=[
        *_keys_not_null(keys),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=list(keys)),
        gxe.ExpectColumnValuesToNotBeNull(column="emb_dim"),  # null exactly when the vector is
        *_vector_expectations(p),
        gxe.ExpectColumnValuesToBeBetween(column="n_frames", min_value=1),
    ])


def video_labels_suite(p: SuiteParams, columns: tuple[str, ...] = ()) -> gx.ExpectationSuite:
    keys = ("video_id", "embedding_space", "label")
    return gx.ExpectationSuite(name="video_labels", expectations=[
        *_keys_not_null(keys),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=list(keys)),
        gxe.ExpectColumnValuesToBeBetween(column="score", min_value=0.0, max_value=1.0),
        gxe.ExpectColumnValuesToBeBetween(column="rank", min_value=1),
        gxe.ExpectColumnValuesToBeBetween(column="n_frames_supporting", min_value=1),
    ])


def video_flags_suite(p: SuiteParams, columns: tuple[str, ...] = ()) -> gx.ExpectationSuite:
    """Flag rows: unique keys, scores and thresholds in [0, 1], every row at or over its threshold."""
    keys = ("video_id", "embedding_space", "flag")
    return gx.ExpectationSuite(name="video_flags", expectations=[
        *_keys_not_null(keys),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=list(keys)),
        gxe.ExpectColumnValuesToBeBetween(column="max_score", min_value=0.0, max_value=1.0),
        gxe.ExpectColumnValuesToBeBetween(column="threshold", min_value=0.0, max_value=1.0),
        gxe.ExpectColumnValuesToNotBeNull(column="threshold"),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="max_score", column_B="threshold", or_equal=True),
        gxe.ExpectColumnValuesToBeBetween(column="n_frames_flagged", min_value=1),
        gxe.ExpectColumnValuesToBeBetween(column="first_flag_ts_ms", min_value=0),
    ])


def input_rejects_suite(p: SuiteParams) -> gx.ExpectationSuite:
    """For the one-row bad-input summary of a run (see ``features.embedding_run``): the share of the
    space's frame rows that are bad input after this publish, and this run's count of them."""
    expectations = [gxe.ExpectColumnValuesToBeBetween(column="space_bad_input_share", min_value=0.0,
                                                      max_value=p.max_input_reject_rate)]
    if p.max_input_rejects_per_run:
        expectations.append(gxe.ExpectColumnValuesToBeBetween(column="run_bad_input", min_value=0,
                                                              max_value=p.max_input_rejects_per_run))
    return gx.ExpectationSuite(name="input_rejects", expectations=expectations)


def drift_suite(p: SuiteParams) -> gx.ExpectationSuite:
    """For the one-row label-shift summary (see expectations.drift.label_shift)."""
    return gx.ExpectationSuite(name="label_drift", expectations=[
        gxe.ExpectColumnValuesToBeBetween(column="label_shift", min_value=0.0, max_value=p.max_label_shift),
    ])


def vector_index_suite(min_recall: float) -> gx.ExpectationSuite:
    """For the per-query recall@k of an ANN index against exact search (one row per held-back
    query): the mean must reach ``min_recall`` before the index becomes current."""
    return gx.ExpectationSuite(name="vector_index", expectations=[
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectColumnValuesToNotBeNull(column="recall_at_k"),
        gxe.ExpectColumnValuesToBeBetween(column="recall_at_k", min_value=0.0, max_value=1.0),
        gxe.ExpectColumnMeanToBeBetween(column="recall_at_k", min_value=min_recall, max_value=1.0),
    ])
