"""The table contract: names, keys and schemas of the published tables.

Names and key columns are part of the product (consumers write SQL against them); change them only
with a migration and a note.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql.types import (
    ArrayType,
    BinaryType,
    FloatType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)


@dataclass(frozen=True)
class TableDef:
    name: str
    keys: tuple[str, ...]
    schema: StructType
    comment: str


def _f(name: str, dtype, nullable: bool = True, comment: str = "") -> StructField:
    return StructField(name, dtype, nullable, metadata={"comment": comment} if comment else {})


FRAMES = TableDef(
    name="frames",
    keys=("video_id", "frame_ts_ms"),
    comment="Sampled video frames as JPEG, one row per kept frame (or one status row per unreadable video).",
    schema=StructType([
        _f("video_id", StringType(), False, "Video identifier (file stem for file inputs)."),
        _f("frame_ts_ms", LongType(), False, "Presentation time of the frame in ms; -1 for a video-level status row."),
        _f("frame_index", IntegerType(), False, "Index of the kept frame within the video; -1 for a status row."),
        _f("image", BinaryType(), True, "JPEG bytes; null when status is not ok."),
        _f("width", IntegerType(), True),
        _f("height", IntegerType(), True),
        _f("content_sha256", StringType(), True, "sha256 of the JPEG bytes."),
        _f("source_uri", StringType(), False),
        _f("status", StringType(), False, "ok, or why there is no image."),
        _f("error", StringType(), True),
        _f("extracted_at", TimestampType(), False),
    ]),
)

FRAME_EMBEDDINGS = TableDef(
    name="frame_embeddings",
    keys=("video_id", "frame_ts_ms", "embedding_space"),
    comment="One L2-normalised embedding per frame and embedding space, with the frame's top labels.",
    schema=StructType([
        _f("video_id", StringType(), False),
        _f("frame_ts_ms", LongType(), False),
        _f("embedding_space", StringType(), False, "model name + version + preprocessing hash + dim."),
        _f("embedding", ArrayType(FloatType(), True), True, "Unit-norm float32 vector; null when status is not ok."),
        _f("content_sha256", StringType(), True),
        _f("labels", ArrayType(StringType(), True), True, "Top-k labels of the frame."),
        _f("label_scores", ArrayType(FloatType(), True), True, "Scores of `labels`, in [0, 1]."),
        _f("status", StringType(), False),
        _f("error", StringType(), True),
        _f("model_name", StringType(), False),
        _f("model_version", StringType(), False),
        _f("run_id", StringType(), False),
        _f("computed_at", TimestampType(), False),
    ]),
)

VIDEO_EMBEDDINGS = TableDef(
    name="video_embeddings",
    keys=("video_id", "embedding_space"),
    comment="Mean of a video's ok frame embeddings, re-normalised to unit length.",
    schema=StructType([
        _f("video_id", StringType(), False),
        _f("embedding_space", StringType(), False),
        _f("embedding", ArrayType(FloatType(), True), False),
        _f("n_frames", IntegerType(), False, "Ok frames pooled."),
        _f("model_name", StringType(), False),
        _f("model_version", StringType(), False),
        _f("run_id", StringType(), False),
        _f("computed_at", TimestampType(), False),
    ]),
)

VIDEO_LABELS = TableDef(
    name="video_labels",
    keys=("video_id", "embedding_space", "label"),
    comment="Top labels per video: mean frame score over the video's ok frames.",
    schema=StructType([
        _f("video_id", StringType(), False),
        _f("embedding_space", StringType(), False),
        _f("label", StringType(), False),
        _f("score", FloatType(), False, "Mean of the frames' scores (0 where not in a frame's top-k)."),
        _f("rank", IntegerType(), False, "1 = best label of the video."),
        _f("n_frames_supporting", IntegerType(), False, "Frames that had the label in their top-k."),
        _f("taxonomy_version", StringType(), False),
        _f("model_name", StringType(), False),
        _f("model_version", StringType(), False),
        _f("run_id", StringType(), False),
        _f("computed_at", TimestampType(), False),
    ]),
)

FEATURE_VERSIONS = TableDef(
    name="feature_versions",
    keys=("run_id", "embedding_space"),
    comment="Lineage: one row per embedding space and publish attempt.",
    schema=StructType([
        _f("run_id", StringType(), False),
        _f("embedding_space", StringType(), False),
        _f("model_name", StringType(), False),
        _f("model_version", StringType(), False),
        _f("model_uri", StringType(), False),
        _f("preprocess_hash", StringType(), False),
        _f("dim", IntegerType(), False),
        _f("metric", StringType(), False),
        _f("status", StringType(), False, "published, rejected, or promoted (the space became current)."),
        _f("validation_success", StringType(), True, "true/false, or null when nothing was validated."),
        _f("validation_report", StringType(), True),
        _f("failed_expectations", StringType(), True),
        _f("table_versions", StringType(), True, "JSON: table → Delta version written."),
        _f("frames_embedded", LongType(), False),
        _f("note", StringType(), True, "For promotions: why (promoted, rollback from <space>)."),
        _f("started_at", TimestampType(), False),
        _f("finished_at", TimestampType(), False),
    ]),
)

VIDEO_NEIGHBORS = TableDef(
    name="video_neighbors",
    keys=("video_id", "embedding_space", "neighbor_id"),
    comment="All-pairs top-k nearest videos by cosine, per space (candidate generation, near-duplicates).",
    schema=StructType([
        _f("video_id", StringType(), False),
        _f("embedding_space", StringType(), False),
        _f("neighbor_id", StringType(), False),
        _f("score", FloatType(), False, "Cosine similarity of the two video embeddings."),
        _f("rank", IntegerType(), False, "1 = nearest."),
        _f("run_id", StringType(), False),
        _f("computed_at", TimestampType(), False),
    ]),
)

PUBLISHED_TABLES = (FRAME_EMBEDDINGS, VIDEO_EMBEDDINGS, VIDEO_LABELS)
ALL_TABLES = (FRAMES, FRAME_EMBEDDINGS, VIDEO_EMBEDDINGS, VIDEO_LABELS, FEATURE_VERSIONS, VIDEO_NEIGHBORS)
