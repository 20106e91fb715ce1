"""Pure DataFrame transforms from frame embeddings to video-level features.

Input rows follow the ``frame_embeddings`` schema; only ``status = 'ok'`` rows count. Rows of
different embedding spaces are never mixed: every aggregate groups by ``embedding_space``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from catalogfs.statuses import Status

_POOLED_SCHEMA = "video_id string, embedding_space string, embedding array<float>, n_frames int"


def _pool_group(pdf: pd.DataFrame) -> pd.DataFrame:
    arrays = [np.asarray(v, dtype=np.float64) for v in pdf["embedding"]]
    if len({a.shape for a in arrays}) != 1:
        pooled = None  # frames of mixed dimension cannot be pooled: the video suite refuses the null
    else:
        mean = np.stack(arrays).mean(axis=0)
        norm = np.linalg.norm(mean)
        pooled = (mean / norm if norm > 0 else mean).astype(np.float32)
    return pd.DataFrame({
        "video_id": [pdf["video_id"].iloc[0]],
        "embedding_space": [pdf["embedding_space"].iloc[0]],
        "embedding": [pooled],
        "n_frames": [len(pdf)],
    })


def pool_video_embeddings(frame_embeddings: DataFrame) -> DataFrame:
    """Mean of each video's ok frame vectors per space, re-normalised to unit length.

    Returns video_id, embedding_space, embedding, n_frames (plus model_name, model_version).
    """
    ok = frame_embeddings.where((F.col("status") == Status.OK) & F.col("embedding").isNotNull())
    pooled = (ok.select("video_id", "embedding_space", "embedding")
              .groupBy("video_id", "embedding_space").applyInPandas(_pool_group, _POOLED_SCHEMA))
    models = ok.groupBy("video_id", "embedding_space").agg(
        F.max("model_name").alias("model_name"), F.max("model_version").alias("model_version"))
    return pooled.join(models, ["video_id", "embedding_space"])


def aggregate_video_labels(frame_embeddings: DataFrame, *, top_k: int) -> DataFrame:
    """Per video and space: the ``top_k`` labels by mean frame score.

    A label's score is the mean over the video's ok frames of its score in each frame (0 where it
    was not in the frame's top-k), so scores stay in [0, 1]; ``n_frames_supporting`` counts the
    frames that had it in their top-k. Returns video_id, embedding_space, label, score, rank,
    n_frames_supporting, model_name, model_version.
    """
    ok = frame_embeddings.where((F.col("status") == Status.OK) & F.col("labels").isNotNull())
    per_video = ok.groupBy("video_id", "embedding_space").agg(
        F.count(F.lit(1)).alias("n_ok"), F.max("model_name").alias("model_name"),
        F.max("model_version").alias("model_version"))
    exploded = ok.select(
        "video_id", "embedding_space",
        F.explode(F.arrays_zip(F.col("labels").alias("label"), F.col("label_scores").alias("score"))).alias("l"),
    ).select("video_id", "embedding_space", F.col("l.label").alias("label"), F.col("l.score").alias("score"))
    sums = exploded.groupBy("video_id", "embedding_space", "label").agg(
        F.sum("score").alias("score_sum"), F.count(F.lit(1)).alias("n_frames_supporting"))
    rank_window = Window.partitionBy("video_id", "embedding_space").orderBy(F.desc("score"), F.asc("label"))
    return (sums.join(per_video, ["video_id", "embedding_space"])
            .withColumn("score", (F.col("score_sum") / F.col("n_ok")).cast("float"))
            .withColumn("rank", F.row_number().over(rank_window).cast("int"))
            .where(F.col("rank") <= top_k)
            .select("video_id", "embedding_space", "label", "score", "rank",
                    F.col("n_frames_supporting").cast("int").alias("n_frames_supporting"),
                    "model_name", "model_version"))


def aggregate_video_flags(frame_embeddings: DataFrame, *, thresholds: Mapping[str, float]) -> DataFrame:
    """Per video, space and flag: the flag's frames among the video's ok frames.

    Frames carry the flags they reached (score ≥ the label's own threshold); a video gets one row per
    label flagged on at least one ok frame, and none for labels never flagged. ``thresholds`` is the
    model's flags spec (label → threshold), recorded in each row. Returns video_id, embedding_space,
    flag, max_score, n_frames_flagged, first_flag_ts_ms, threshold, model_name, model_version.
    """
    ok = frame_embeddings.where((F.col("status") == Status.OK) & (F.size("flags") > 0))
    exploded = ok.select(
        "video_id", "embedding_space", "frame_ts_ms", "model_name", "model_version",
        F.explode(F.arrays_zip(F.col("flags").alias("flag"), F.col("flag_scores").alias("score"))).alias("f"),
    ).select("video_id", "embedding_space", "frame_ts_ms", "model_name", "model_version",
             F.col("f.flag").alias("flag"), F.col("f.score").alias("score"))
    spec = F.create_map(*[c for label, threshold in sorted(thresholds.items())
                          for c in (F.lit(label), F.lit(float(threshold)).cast("float"))]) if thresholds else None
    grouped = exploded.groupBy("video_id", "embedding_space", "flag").agg(
        F.max("score").cast("float").alias("max_score"),
        F.count(F.lit(1)).cast("int").alias("n_frames_flagged"),
        F.min("frame_ts_ms").alias("first_flag_ts_ms"),
        F.max("model_name").alias("model_name"), F.max("model_version").alias("model_version"))
    threshold = spec[F.col("flag")] if spec is not None else F.lit(None).cast("float")
    return grouped.select("video_id", "embedding_space", "flag", "max_score", "n_frames_flagged",
                          "first_flag_ts_ms", threshold.cast("float").alias("threshold"),
                          "model_name", "model_version")


@dataclass(frozen=True)
class PoolParams:
    """What the video-level rows of a run are derived with: labels kept per video, and the flags
    spec (label → threshold; empty: the model has no flags)."""

    top_k_per_video: int
    flags: Mapping[str, float] = field(default_factory=dict)


# The video-level tables' rows (named by the table registry, features.tables.REGISTRY): each takes a
# space's frame rows and the run's PoolParams.

def video_embeddings_rows(frame_rows: DataFrame, p: PoolParams) -> DataFrame:
    """``video_embeddings`` rows (without the run's columns): :func:`pool_video_embeddings`."""
    return pool_video_embeddings(frame_rows)


def video_labels_rows(frame_rows: DataFrame, p: PoolParams) -> DataFrame:
    """``video_labels`` rows (without the run's columns): :func:`aggregate_video_labels`."""
    return aggregate_video_labels(frame_rows, top_k=p.top_k_per_video)


def video_flags_rows(frame_rows: DataFrame, p: PoolParams) -> DataFrame:
    """``video_flags`` rows (without the run's columns): :func:`aggregate_video_flags`."""
    return aggregate_video_flags(frame_rows, thresholds=p.flags)
