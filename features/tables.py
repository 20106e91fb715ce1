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



# ---------------------------------------------------------------- the registry
# Every table is described once, here: its definition above and its entry in REGISTRY below. The
# stage, audit, publish and relabel steps, the plan, the lineage, the verification, the views, the
# maintenance and the change feeds iterate over the registry; none lists tables by name. Adding a
# table a run fills touches three files: this one (definition and entry), expectations/suites.py
# (its suite) and features/pooling.py (its rows, for a video-level table).

FRAME_LEVEL, VIDEO_LEVEL = "frame", "video"


@dataclass(frozen=True)
class Fill:
    """How embed and relabel runs fill a published table: staged, audited by its suite, then one
    MERGE on the table's keys within the run's space and videos (:mod:`features.staging`,
    :mod:`features.audit`, :mod:`features.publish`), in registry order.

    ``suite``: a function of :mod:`expectations.suites`, ``(SuiteParams, columns) → suite``.
    ``checks``: a function of :mod:`expectations.vector_checks` adding the columns the suite tests
    (empty: none). ``level``: ``frame`` — the run's own frame rows (the embed stage's, or a
    relabel's rescored ones) — or ``video``: derived from the frame rows by ``rows``, a function of
    :mod:`features.pooling`, ``(frame rows, PoolParams) → rows`` (the run adds ``run_id``,
    ``computed_at`` and, where the schema has it, ``taxonomy_version``). ``changed``: the MERGE's
    update condition (matched rows are rewritten only where it holds; None: always). ``flags``: the
    rows come from the frames' flags — filled only for models with flags, and a video has rows only
    where one of its ok frames is flagged. ``relabel``: a relabel rewrites it (its rows derive from
    labels).
    """

    suite: str
    level: str = VIDEO_LEVEL
    rows: str = ""
    checks: str = ""
    changed: str | None = None
    flags: bool = False
    relabel: bool = True


@dataclass(frozen=True)
class Registered:
    """One table of the catalogue: its definition; ``fill``: how runs fill it (None: not published by
    embed or relabel runs); ``view``: a ``current_<name>`` view selects the current space's rows
    (:mod:`features.promotion`). Every table keeps a change data feed and is vacuumed by
    ``catalogfs maintain``."""

    table: TableDef
    fill: Fill | None = None
    view: bool = False

    @property
    def name(self) -> str:
        return self.table.name

    @property
    def per_space(self) -> bool:
        """Rows belong to one embedding space (shared tables such as ``frames`` do not)."""
        return "embedding_space" in self.table.keys


REGISTRY: tuple[Registered, ...] = (
    Registered(FRAMES),
    Registered(FRAME_EMBEDDINGS, Fill(suite="frame_embeddings_suite", level=FRAME_LEVEL, checks="with_frame_checks",
                                      changed="t.run_id <> s.run_id OR NOT (t.content_sha256 <=> s.content_sha256)"),
               view=True),
    Registered(VIDEO_EMBEDDINGS, Fill(suite="video_embeddings_suite", rows="video_embeddings_rows",
                                      checks="with_vector_checks", relabel=False), view=True),
    Registered(VIDEO_LABELS, Fill(suite="video_labels_suite", rows="video_labels_rows"), view=True),
    Registered(VIDEO_FLAGS, Fill(suite="video_flags_suite", rows="video_flags_rows", flags=True), view=True),
    Registered(FEATURE_VERSIONS),
    Registered(VIDEO_NEIGHBORS),
    Registered(VIDEO_EMBEDDINGS_HISTORY),
    Registered(VECTOR_INDEXES),
    Registered(TAXONOMIES),
)

ALL_TABLES = tuple(r.table for r in REGISTRY)
PUBLISHED = tuple(r for r in REGISTRY if r.fill is not None)  # in publish (MERGE) order
PUBLISHED_TABLES = tuple(r.table for r in PUBLISHED)


def published(registry: tuple[Registered, ...] = REGISTRY) -> tuple[Registered, ...]:
    """The tables of ``registry`` that runs fill, in publish order."""
    return tuple(r for r in registry if r.fill is not None)


def run_tables(*, relabel: bool = False, with_flags: bool = True,
               registry: tuple[Registered, ...] = REGISTRY) -> tuple[Registered, ...]:
    """The tables one run writes, in publish order: an embed run every published table (those of
    flags only when its model has flags, ``with_flags``), a relabel those its labels rewrite."""
    return tuple(r for r in published(registry)
                 if (r.fill.relabel if relabel else with_flags or not r.fill.flags))


def current_views(registry: tuple[Registered, ...] = REGISTRY) -> dict[str, str]:
    """``current_<table>`` view → table, for the tables with a view."""
    return {f"current_{r.name}": r.name for r in registry if r.view}


def every_publish(registry: tuple[Registered, ...] = REGISTRY) -> frozenset[str]:
    """The tables every embed publish writes (those of flags only some): a run that committed to
    all of them published completely (:func:`features.lineage.repair_lineage`)."""
    return frozenset(r.name for r in run_tables(with_flags=False, registry=registry))
