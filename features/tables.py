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
    """A published table: name, key columns (NOT NULL), schema, comment, and Delta CHECK constraints.

    ``checks`` are ``(constraint name, SQL boolean expression)`` pairs; Delta refuses any write
    that breaks one. They are added to new tables at creation and to existing tables when absent
    (``delta_writer.ensure_catalog``); to change an expression, give it a new name.
    """

    name: str
    keys: tuple[str, ...]
    schema: StructType
    comment: str
    checks: tuple[tuple[str, str], ...] = ()


def _f(name: str, dtype, nullable: bool = True, comment: str = "") -> StructField:
    return StructField(name, dtype, nullable, metadata={"comment": comment} if comment else {})


FRAMES = TableDef(
    name="frames",
    keys=("video_id", "frame_ts_ms"),
    comment="Sampled video frames as JPEG, one row per kept frame (or one status row per unreadable video).",
    checks=(("frame_ts_ms_valid", "frame_ts_ms >= -1"), ("frame_index_valid", "frame_index >= -1"),
            ("status_not_empty", "length(status) > 0")),
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
    checks=(("frame_ts_ms_valid", "frame_ts_ms >= -1"), ("status_not_empty", "length(status) > 0"),
            ("ok_frame_has_embedding", "status <> 'ok' OR embedding IS NOT NULL")),
    comment="One L2-normalised embedding per frame and embedding space, with the frame's top labels and flags.",
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
        # Added after the first release: last, so tables migrated by ADD COLUMNS have the same layout.
        _f("flags", ArrayType(StringType(), True), True,
           "Labels whose score reached their own threshold, best first; null when the model has no flags "
           "or the frame is not ok, empty when nothing was flagged."),
        _f("flag_scores", ArrayType(FloatType(), True), True, "Scores of `flags`, in [0, 1]."),
    ]),
)

VIDEO_EMBEDDINGS = TableDef(
    name="video_embeddings",
    keys=("video_id", "embedding_space"),
    comment="Mean of a video's ok frame embeddings, re-normalised to unit length.",
    checks=(("n_frames_positive", "n_frames > 0"),),
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
    checks=(("score_in_unit_range", "score BETWEEN 0 AND 1"), ("rank_positive", "rank >= 1"),
            ("n_frames_supporting_valid", "n_frames_supporting >= 0")),
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

VIDEO_FLAGS = TableDef(
    name="video_flags",
    keys=("video_id", "embedding_space", "flag"),
    comment="Moderation-style flags per video: labels that reached their threshold on at least one ok frame.",
    checks=(("max_score_in_unit_range", "max_score BETWEEN 0 AND 1"),
            ("threshold_in_unit_range", "threshold BETWEEN 0 AND 1"),
            ("max_score_reaches_threshold", "max_score >= threshold"),
            ("n_frames_flagged_positive", "n_frames_flagged >= 1"), ("first_flag_ts_ms_valid", "first_flag_ts_ms >= 0")),
    schema=StructType([
        _f("video_id", StringType(), False),
        _f("embedding_space", StringType(), False),
        _f("flag", StringType(), False, "A label of the model's flags spec."),
        _f("max_score", FloatType(), False, "Highest score of the label over the video's flagged frames."),
        _f("n_frames_flagged", IntegerType(), False, "Ok frames on which the label reached its threshold."),
        _f("first_flag_ts_ms", LongType(), False, "Time of the first flagged frame, in ms."),
        _f("threshold", FloatType(), False, "The label's threshold in the model's flags spec."),
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
    checks=(("dim_positive", "dim > 0"), ("frames_embedded_valid", "frames_embedded >= 0")),
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
        _f("frames_version", LongType(), True, "Delta version of frames the run planned on: the next run of "
                                               "the space plans only what changed after it (null: unknown)."),
    ]),
)

VIDEO_NEIGHBORS = TableDef(
    name="video_neighbors",
    keys=("video_id", "embedding_space", "neighbor_id"),
    comment="All-pairs top-k nearest videos by cosine, per space (candidate generation, near-duplicates).",
    checks=(("rank_positive", "rank >= 1"),),
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

VIDEO_EMBEDDINGS_HISTORY = TableDef(
    name="video_embeddings_history",
    # the commit that wrote a value identifies it (commit timestamps of two commits may coincide)
    keys=("video_id", "embedding_space", "commit_version"),
    comment="SCD2 history of video_embeddings: every value a (video, space) had, valid from the commit "
            "that wrote it until the commit that replaced or deleted it (point-in-time training sets).",
    checks=(("n_frames_positive", "n_frames > 0"),
            ("ended_after_written", "ended_version IS NULL OR ended_version > commit_version")),
    schema=StructType([
        _f("video_id", StringType(), False),
        _f("embedding_space", StringType(), False),
        _f("commit_version", LongType(), False, "Delta version of video_embeddings that wrote the value."),
        _f("embedding", ArrayType(FloatType(), True), False),
        _f("n_frames", IntegerType(), False),
        _f("model_name", StringType(), False),
        _f("model_version", StringType(), False),
        _f("run_id", StringType(), False),
        _f("computed_at", TimestampType(), False),
        _f("valid_from", TimestampType(), False, "Commit timestamp at which the value became visible."),
        _f("valid_to", TimestampType(), True, "Commit timestamp of the change that replaced or deleted it; "
                                              "null while current."),
        _f("ended_version", LongType(), True, "Delta version of that change; null while current."),
        _f("recorded_from", StringType(), False, "change_feed, or snapshot (the feed did not cover it: "
                                                 "valid_from is the commit of the value's run)."),
    ]),
)

VECTOR_INDEXES = TableDef(
    name="vector_indexes",
    keys=("index_id",),
    comment="Lineage of the ANN index versions of each space and level: what each was built from, how "
            "it was checked (recall@k against exact search), and whether it became current.",
    checks=(("recall_in_unit_range", "recall_at_k BETWEEN 0 AND 1"), ("n_vectors_valid", "n_vectors >= 0")),
    schema=StructType([
        _f("index_id", StringType(), False, "Folder name of the version under <data_root>/indexes/<space>/<level>/."),
        _f("embedding_space", StringType(), False),
        _f("level", StringType(), False, "video (keys: video_id) or frame (keys: video_id, frame_ts_ms)."),
        _f("kind", StringType(), False, "faiss index: ivf_flat or flat (exact)."),
        _f("status", StringType(), False, "validated (became current) or rejected (recall below the minimum)."),
        _f("build_mode", StringType(), False, "full, or incremental (changes added to the previous version)."),
        _f("source_table", StringType(), False),
        _f("source_version", LongType(), False, "Delta version of source_table the index was built from."),
        _f("n_vectors", LongType(), False),
        _f("dim", IntegerType(), False),
        _f("nlist", IntegerType(), False, "Inverted lists (0 for flat)."),
        _f("nprobe", IntegerType(), False, "Lists searched per query: the smallest that met min_recall."),
        _f("recall_at_k", FloatType(), False, "Mean recall@k on the held-back queries at nprobe."),
        _f("k", IntegerType(), False),
        _f("n_queries", IntegerType(), False),
        _f("min_recall", FloatType(), False),
        _f("trained_vectors", LongType(), False, "Vectors the quantizer was trained on (at the last full build)."),
        _f("added_since_training", LongType(), False),
        _f("path", StringType(), False),
        _f("validation_report", StringType(), True),
        _f("failed_expectations", StringType(), True),
        _f("previous_index_id", StringType(), True),
        _f("note", StringType(), True),
        _f("build_seconds", FloatType(), False),
        _f("built_at", TimestampType(), False),
    ]),
)

TAXONOMIES = TableDef(
    name="taxonomies",
    keys=("embedding_space", "taxonomy_version"),
    comment="The zero-shot taxonomies a CLIP-like space was re-labelled with (catalogfs relabel): what each "
            "taxonomy_version of the space's label rows means, and what its later embed runs label new frames with.",
    schema=StructType([
        _f("embedding_space", StringType(), False),
        _f("taxonomy_version", StringType(), False),
        _f("labels", StringType(), False, "JSON: label → [prompt, …] (each label's text embedding is their mean)."),
        _f("flags", StringType(), False, "JSON: flag label → threshold ({} when the taxonomy has none)."),
        _f("run_id", StringType(), False, "The relabel run that recorded it first."),
        _f("recorded_at", TimestampType(), False),
    ]),
)

PUBLISHED_TABLES = (FRAME_EMBEDDINGS, VIDEO_EMBEDDINGS, VIDEO_LABELS, VIDEO_FLAGS)
ALL_TABLES = (FRAMES, FRAME_EMBEDDINGS, VIDEO_EMBEDDINGS, VIDEO_LABELS, VIDEO_FLAGS, FEATURE_VERSIONS,
              VIDEO_NEIGHBORS, VIDEO_EMBEDDINGS_HISTORY, VECTOR_INDEXES, TAXONOMIES)
