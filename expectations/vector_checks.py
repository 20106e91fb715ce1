"""Vector checks that Great Expectations lacks, computed as ordinary columns the suites can test.

``emb_dim``, ``emb_norm``, ``emb_finite``, ``emb_missing_when_ok`` (and ``pipeline_failure``,
:func:`with_status_checks`) are null/false-safe: rows
without a vector (non-ok status) get nulls, which GE's column expectations skip.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from catalogfs.statuses import INPUT_STATUSES, Status


def with_vector_checks(df: DataFrame, *, embedding: str = "embedding") -> DataFrame:
    """Add emb_dim, emb_norm, emb_finite (and emb_missing_when_ok when a status column exists)."""
    vec = F.col(embedding)
    finite = F.aggregate(
        vec, F.lit(True),
        lambda acc, x: acc & ~F.isnan(x) & (F.abs(x) != F.lit(float("inf"))),
    )
    out = (df.withColumn("emb_dim", F.size(vec))
           .withColumn("emb_dim", F.when(vec.isNotNull(), F.col("emb_dim")))
           .withColumn("emb_norm", F.sqrt(F.aggregate(vec, F.lit(0.0).cast("double"),
                                                      lambda acc, x: acc + x.cast("double") * x)))
           .withColumn("emb_finite", finite))
    if "status" in df.columns:
        out = out.withColumn("emb_missing_when_ok", (F.col("status") == Status.OK) & vec.isNull())
    return out


def with_status_checks(df: DataFrame, *, input_statuses: frozenset[str]) -> DataFrame:
    """Add ``pipeline_failure``: the row is not ok and its status is not one of the input's own
    (bad upload) statuses — what the run's reject rate counts."""
    return df.withColumn("pipeline_failure", (F.col("status") != Status.OK)
                         & ~F.col("status").isin(sorted(input_statuses)))


def with_score_checks(df: DataFrame, *, scores: str = "label_scores") -> DataFrame:
    """Add label_score_min / label_score_max over an array of scores."""
    return (df.withColumn("label_score_min", F.array_min(F.col(scores)))
            .withColumn("label_score_max", F.array_max(F.col(scores))))


def with_frame_checks(df: DataFrame) -> DataFrame:
    """Every column the frame suite tests: vector, score and status checks (``pipeline_failure``
    against the input's own statuses, :data:`catalogfs.statuses.INPUT_STATUSES`)."""
    return with_status_checks(with_score_checks(with_vector_checks(df)), input_statuses=INPUT_STATUSES)
