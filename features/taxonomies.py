"""The taxonomy a CLIP-like space's labels come from, and scoring frame rows with it.

A model version is registered with one taxonomy (its bundle's ``label_set``). ``catalogfs relabel``
gives a space another one from its stored vectors (:mod:`features.relabel`); from then on the space's
labels are of that taxonomy, and every later embed run must label the frames *it* embeds with the
same one, or a new video (or a video that gains frames) would carry the registered taxonomy beside
the relabelled ones.

- **What a taxonomy version means** is recorded in the ``taxonomies`` table (one row per space and
  version: labels with their prompts, flags with their thresholds), by the relabel before it
  publishes (:func:`record_taxonomy`). A version names one content: re-using a recorded version
  for other prompts or thresholds is refused.
- **Which taxonomy is active** is read from the published data itself: the ``taxonomy_version`` of
  the space's newest ``video_labels`` row (:func:`active_taxonomy`). The relabel commits every
  video's label rows in one MERGE, so there is no window in which the record and the labels
  disagree: a relabel that did not publish changes nothing.
- An embed run with an active taxonomy other than its bundle's re-scores its new frames' vectors
  with it (:func:`relabelled_frames`, the relabel's own function) before pooling, so its rows equal
  those a relabel would write.

The embed run reads the active taxonomy once, at its start: a relabel of the same space that
publishes while an embed run is under way leaves that run's new frames in the taxonomy it started
with (run the relabel after the embed run, as a scheduled job would).
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from catalogfs.config import StorageConfig
from catalogfs.errors import RelabelError
from catalogfs.statuses import Status
from catalogfs.features import delta_writer
from catalogfs.features.spaces import EmbeddingSpace
from catalogfs.features.tables import TAXONOMIES, VIDEO_LABELS
from catalogfs.udfs.flags import Taxonomy
from catalogfs.udfs.model_registry import ResolvedModel
from catalogfs.udfs.relabel import ZeroShotScorer, is_zero_shot
from catalogfs.udfs.spark_udf import make_relabel_udf

log = logging.getLogger(__name__)

# The frame columns a taxonomy decides (``run_id``: the run that wrote them).
RELABELLED_COLUMNS = ("labels", "label_scores", "flags", "flag_scores", "run_id")


def relabelled_frames(frame_rows: DataFrame, scorer: ZeroShotScorer, *, run_id: str) -> DataFrame:
    """``frame_rows`` (one space, ``frame_embeddings`` schema) with :data:`RELABELLED_COLUMNS`
    recomputed from each ok row's vector by ``scorer``; rows without a vector are left as they are
    (their run id too, so a publish's MERGE leaves them alone)."""
    has_vector = (F.col("status") == Status.OK) & F.col("embedding").isNotNull()
    scored = frame_rows.withColumn("_relabel", make_relabel_udf(scorer)(F.col("embedding")))
    new = {c: F.col(f"_relabel.{c}") for c in RELABELLED_COLUMNS if c != "run_id"}
    new["run_id"] = F.lit(run_id)
    return scored.select(*(F.when(has_vector, new[c]).otherwise(F.col(c)).alias(c) if c in new else F.col(c)
                           for c in frame_rows.columns))


def model_taxonomy(model: ResolvedModel) -> Taxonomy | None:
    """The taxonomy a CLIP-like model version was registered with; None for other models."""
    from catalogfs.udfs.families import family

    spec = model.spec
    if not is_zero_shot(spec):
        return None
    options = family(spec.family).options(spec)
    return Taxonomy(version=spec.label_set, labels={k: list(v) for k, v in options.taxonomy.items()},
                    flags=dict(spec.flags.thresholds))


def _same(a: Taxonomy, b: Taxonomy) -> bool:
    return a.labels == b.labels and {k: float(v) for k, v in a.flags.items()} == {k: float(v) for k, v in b.flags.items()}


def recorded_taxonomy(spark: SparkSession, storage: StorageConfig, space_id: str, version: str) -> Taxonomy | None:
    """The taxonomy recorded for ``space_id`` under ``version``, or None (also when the table is not
    there yet: a data root of an older catalogfs, before its next job creates it)."""
    if not spark.catalog.tableExists(storage.qualified(TAXONOMIES.name)):
        return None
    rows = (spark.table(storage.qualified(TAXONOMIES.name))
            .where((F.col("embedding_space") == space_id) & (F.col("taxonomy_version") == version))
            .select("labels", "flags").collect())
    if not rows:
        return None
    return Taxonomy(version=version, labels=json.loads(rows[0]["labels"]), flags=json.loads(rows[0]["flags"]))


def check_taxonomy(spark: SparkSession, storage: StorageConfig, model: ResolvedModel, space_id: str,
                   taxonomy: Taxonomy) -> Taxonomy | None:
    """Refuse (:class:`RelabelError`, exit 2) a taxonomy whose version already names other labels,
    prompts or thresholds, for this space (recorded) or in the model's own bundle; returns the
    recorded one (None when the version is new to the space)."""
    for known, where in ((model_taxonomy(model), f"the registered taxonomy of models:/{model.name}/{model.version}"),
                         (recorded_taxonomy(spark, storage, space_id, taxonomy.version),
                          f"the taxonomy recorded for space {space_id} (table {TAXONOMIES.name})")):
        if known is not None and known.version == taxonomy.version and not _same(known, taxonomy):
            raise RelabelError(f"taxonomy version {taxonomy.version!r} is already {where}, with other labels, "
                               f"prompts or flag thresholds: a version names one taxonomy — give this one a new "
                               f"version")
    return recorded_taxonomy(spark, storage, space_id, taxonomy.version)


def record_taxonomy(spark: SparkSession, storage: StorageConfig, model: ResolvedModel, space_id: str,
                    taxonomy: Taxonomy, *, run_id: str) -> None:
    """Record what ``taxonomy.version`` means for ``space_id`` (once; refused when it already means
    something else, see :func:`check_taxonomy`). Written before the relabel publishes."""
    if check_taxonomy(spark, storage, model, space_id, taxonomy) is not None:
        return
    row = spark.createDataFrame([(space_id, taxonomy.version, json.dumps(taxonomy.labels, sort_keys=True),
                                  json.dumps(taxonomy.flags, sort_keys=True), run_id, datetime.now(timezone.utc))],
                                TAXONOMIES.schema)
    # two relabels racing to record the same version: one insert, and the other finds it matched
    delta_writer.upsert_rows(spark, storage, TAXONOMIES, row, on=(
        "t.embedding_space = s.embedding_space AND t.taxonomy_version = s.taxonomy_version"))


def active_taxonomy(spark: SparkSession, storage: StorageConfig, space: EmbeddingSpace,
                    model: ResolvedModel) -> tuple[Taxonomy | None, str | None]:
    """``(taxonomy, warning)``: the taxonomy the space's published labels are of, when it is not the
    one ``model`` was registered with (None otherwise, and always for models that are not CLIP-like:
    nothing is read then). ``warning`` when the labels are of a taxonomy that was never recorded (a
    relabel from before the ``taxonomies`` table): new frames then keep the registered taxonomy."""
    if not is_zero_shot(model.spec) or not spark.catalog.tableExists(storage.qualified(VIDEO_LABELS.name)):
        return None, None
    newest = (spark.table(storage.qualified(VIDEO_LABELS.name)).where(F.col("embedding_space") == space.id)
              .orderBy(F.col("computed_at").desc()).select("taxonomy_version").limit(1).collect())
    version = newest[0]["taxonomy_version"] if newest else None
    if version is None or version == model.spec.label_set:
        return None, None
    taxonomy = recorded_taxonomy(spark, storage, space.id, version)
    if taxonomy is None:
        warning = (f"space {space.id}: its labels are of taxonomy {version!r}, which is not recorded in table "
                   f"{TAXONOMIES.name} (re-labelled by an older catalogfs); new frames are labelled with the "
                   f"registered taxonomy {model.spec.label_set!r}: run `catalogfs relabel` with that taxonomy's file "
                   f"again to record it")
        log.warning(warning)
        return None, warning
    log.info("space %s: labelling new frames with its active taxonomy %s (registered: %s)", space.id, version,
             model.spec.label_set)
    return taxonomy, None
