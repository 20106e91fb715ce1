"""catalogfs: a Spark-based catalogue feature store for visual content understanding.

The documented Python surface is what this module exports (``__all__``); everything else
(``catalogfs.features.…``, ``catalogfs.udfs.…``, ``catalogfs.jobs.…``) stays importable but is
internal and may change between versions. Names are imported on first use, so ``import catalogfs``
costs nothing (no Spark, pandas or torch).

    import catalogfs
    catalogfs.__version__
    cfg = catalogfs.load_config(["local"])                      # the packaged profile, + files, + --set
    index = catalogfs.VectorIndex.open_current(cfg.storage.indexes_dir, space, "video")   # no Spark
    train = catalogfs.training_set(spark, cfg.storage, catalogfs.read_events(spark, "clicks.parquet"))
    rng = catalogfs.change_range(spark, cfg.storage, "video_embeddings", since=12)
    changes = catalogfs.read_changes(spark, cfg.storage, rng)

Errors are importable from :mod:`catalogfs.errors` (and from here): every one a job reports is a
:class:`CatalogfsError` with an ``exit_code``.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from catalogfs.errors import (
    CatalogBusy, CatalogfsError, ChangeFeedError, ConfigError, DataRootMoved, InputError, IntegrityMismatch,
    ModelResolutionError, PublishConflict, ReadOnlyRefused, RegistryUnavailable, ServerUnavailable,
    SimilarityError, TrainingSetArgumentError, TrainingSetError, ValidationFailed, VectorIndexError,
)

__version__ = "0.1.0"

# public name → the module that defines it (imported on first attribute access)
_LAZY = {
    "Config": "catalogfs.config",
    "load_config": "catalogfs.config",
    "VectorIndex": "catalogfs.features.ann",
    "read_events": "catalogfs.features.training_set",
    "training_set": "catalogfs.features.training_set",
    "change_range": "catalogfs.features.change_feed",
    "read_changes": "catalogfs.features.change_feed",
    "net_changes": "catalogfs.features.change_feed",
    "similar": "catalogfs.features.similarity",
    "build_spark": "catalogfs.spark",
}

__all__ = [
    "__version__", *_LAZY,
    "CatalogfsError", "ConfigError", "DataRootMoved", "InputError", "ValidationFailed", "PublishConflict", "CatalogBusy",
    "ChangeFeedError", "IntegrityMismatch", "ModelResolutionError", "ReadOnlyRefused", "RegistryUnavailable",
    "ServerUnavailable", "SimilarityError", "TrainingSetError", "TrainingSetArgumentError", "VectorIndexError",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'catalogfs' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # the next access is a plain lookup
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
