"""The thin Spark wrapper around the engine: an Iterator pandas UDF, image bytes → result struct
(and :func:`make_relabel_udf`: stored vectors → labels over a new taxonomy, :mod:`udfs.relabel`).

The model bundle is opened once per Python worker (:func:`udfs.engine.cached_engine`), on the
first batch the worker sees, and reused for every later batch and task on that worker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pandas as pd
from pyspark import TaskContext
from pyspark.sql.functions import pandas_udf

from catalogfs import failpoints

from catalogfs.udfs.engine import EngineOptions, cached_engine, is_cached
from catalogfs.udfs.model_registry import local_bundle_dir

EMBED_RESULT_DDL = (
    "struct<embedding: array<float>, status: string, error: string, "
    "labels: array<string>, label_scores: array<float>, flags: array<string>, flag_scores: array<float>, "
    "forward_passes: int, model_load: int>"
)
# The two counters of the result struct: summed over the rows (a Spark Observation), they give the
# forward passes run and the times a Python worker loaded the model — no accumulator, so that it
# works over Spark Connect too. Each batch puts its counts on its first row and 0 on the others.
COUNTER_FIELDS = ("forward_passes", "model_load")


def make_embed_udf(bundle_uri: str, options: EngineOptions, *, cache_dir: str, frames_done=None):
    """Build the pandas UDF for one resolved model version.

    ``bundle_uri`` is the registry's download URI of the version; ``cache_dir`` is where a worker
    that cannot read it directly keeps a local copy. ``frames_done`` is an optional Spark
    accumulator (classic sessions only) that receives the frames processed, for live progress.
    Each result carries ``forward_passes`` and ``model_load`` (see :data:`COUNTER_FIELDS`).
    """

    @pandas_udf(EMBED_RESULT_DDL)  # type: ignore[call-overload]
    def embed_images(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        task = TaskContext.get()
        attempt = task.attemptNumber() if task is not None else None
        engine, loads = None, 0  # loads: model loads not yet reported on a row
        for images in batches:
            failpoints.reached("udf", task_attempt=attempt)
            if engine is None:  # loaded on the first batch: an empty partition loads nothing
                directory = local_bundle_dir(bundle_uri, Path(cache_dir))
                loaded_before = is_cached(directory, options)
                engine = cached_engine(directory, options)
                loads += 0 if loaded_before else 1
            result = engine.embed(images.tolist())
            if frames_done is not None:
                frames_done.add(len(images))
            n = len(images)
            yield pd.DataFrame({
                "embedding": result.embeddings,
                "status": result.statuses,
                "error": result.errors,
                "labels": result.label_names,
                "label_scores": result.label_scores,
                "flags": result.flags,
                "flag_scores": result.flag_scores,
                "forward_passes": _first_row(result.forward_passes, n),
                "model_load": _first_row(loads, n),
            })
            if n:
                loads = 0

    return embed_images


def _first_row(count: int, rows: int) -> list[int]:
    """``count`` on the first of ``rows`` rows, 0 on the others (a column whose sum is ``count``)."""
    return [int(count)] + [0] * (rows - 1) if rows else []


RELABEL_RESULT_DDL = "struct<labels: array<string>, label_scores: array<float>, flags: array<string>, flag_scores: array<float>>"


def make_relabel_udf(scorer):
    """A pandas UDF: stored vectors (array<float>, null for frames without one) → the struct of
    ``labels``, ``label_scores``, ``flags``, ``flag_scores`` of :class:`udfs.relabel.ZeroShotScorer`
    ``scorer``, which travels with the UDF as data: workers load no model and run no forward pass."""

    @pandas_udf(RELABEL_RESULT_DDL)
    def relabel_vectors(vectors: pd.Series) -> pd.DataFrame:
        return scorer.score_series(vectors)

    return relabel_vectors
