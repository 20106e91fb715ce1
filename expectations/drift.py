"""Drift of candidates against the currently published space of the same registered model.

For frames whose content did not change, a new version of the same model should give vectors close
to the published ones and a similar label distribution; a large drop says the new version (or its
preprocessing) is broken. Computed as columns for the suites, like the vector checks.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from catalogfs.statuses import Status

_MATCH = ["video_id", "frame_ts_ms", "content_sha256"]


def with_drift_cosine(candidates: DataFrame, reference: DataFrame) -> DataFrame:
    """Add ``drift_cosine``: cosine between each ok candidate vector and the reference vector of the
    same frame content (null where there is none). Both sides are unit vectors."""
    ref = (reference.where(F.col("status") == Status.OK)
           .select(*_MATCH, F.col("embedding").alias("_ref_embedding")))
    joined = candidates.join(ref, _MATCH, "left")
    dot = F.aggregate(F.zip_with("embedding", "_ref_embedding", lambda x, y: x.cast("double") * y),
                      F.lit(0.0).cast("double"), lambda acc, v: acc + v)
    return joined.withColumn("drift_cosine", F.when(
        (F.col("status") == Status.OK) & F.col("_ref_embedding").isNotNull(), dot)).drop("_ref_embedding")


def label_shift(candidates: DataFrame, reference: DataFrame) -> DataFrame:
    """One row: ``label_shift`` = total variation distance between the top-1 label distributions of
    candidates and reference over the frames both have (0 = same, 1 = disjoint), and
    ``matched_frames``."""
    def top1(df: DataFrame, name: str) -> DataFrame:
        return (df.where((F.col("status") == Status.OK) & (F.size("labels") > 0))
                .select(*_MATCH, F.col("labels")[0].alias(name)))

    both = top1(candidates, "label_c").join(top1(reference, "label_r"), _MATCH)
    n = both.count()
    if n == 0:
        return candidates.sparkSession.createDataFrame([(0.0, 0)], "label_shift double, matched_frames long")
    p = both.groupBy(F.col("label_c").alias("label")).agg((F.count(F.lit(1)) / n).alias("p"))
    q = both.groupBy(F.col("label_r").alias("label")).agg((F.count(F.lit(1)) / n).alias("q"))
    tv = (p.join(q, "label", "full").fillna(0.0)
          .agg((F.sum(F.abs(F.col("p") - F.col("q"))) / 2).alias("label_shift")))
    return tv.withColumn("matched_frames", F.lit(n).cast("long"))
