"""The thin Spark wrapper around the engine: an Iterator pandas UDF, image bytes → result struct.

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

from udfs.engine import EngineOptions, cached_engine, is_cached
from udfs.model_registry import local_bundle_dir

EMBED_RESULT_DDL = (
    "struct<embedding: array<float>, status: string, error: string, "
    "labels: array<string>, label_scores: array<float>, flags: array<string>, flag_scores: array<float>>"
)


def make_embed_udf(bundle_uri: str, options: EngineOptions, *, cache_dir: str,
                   forward_passes=None, frames_done=None, model_loads=None):
    """Build the pandas UDF for one resolved model version.

    ``bundle_uri`` is the registry's download URI of the version; ``cache_dir`` is where a worker
    that cannot read it directly keeps a local copy. ``forward_passes`` and ``frames_done`` are
    optional Spark accumulators that receive the forward passes run and the frames processed;
    ``model_loads`` one that counts the times a worker had to load the model (≤ Python workers).
    """

    @pandas_udf(EMBED_RESULT_DDL)  # type: ignore[call-overload]
    def embed_images(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        task = TaskContext.get()
        attempt = task.attemptNumber() if task is not None else None
        engine = None
        for images in batches:
            failpoints.reached("udf", task_attempt=attempt)
            if engine is None:  # loaded on the first batch: an empty partition loads nothing
                directory = local_bundle_dir(bundle_uri, Path(cache_dir))
                loaded_before = is_cached(directory, options)
                engine = cached_engine(directory, options)
                if model_loads is not None and not loaded_before:
                    model_loads.add(1)
            result = engine.embed(images.tolist())
            if forward_passes is not None and result.forward_passes:
                forward_passes.add(result.forward_passes)
            if frames_done is not None:
                frames_done.add(len(images))
            yield pd.DataFrame({
                "embedding": result.embeddings,
                "status": result.statuses,
                "error": result.errors,
                "labels": result.label_names,
                "label_scores": result.label_scores,
                "flags": result.flags,
                "flag_scores": result.flag_scores,
            })

    return embed_images

