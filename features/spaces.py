"""Embedding spaces: what makes two vectors comparable.

A space is identified by the registered model name + version + preprocessing settings (short hash)
+ dimension. Two spaces never mix in one pooled vector, one label aggregate or one search.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from catalogfs.udfs.model_registry import ResolvedModel


@dataclass(frozen=True)
class EmbeddingSpace:
    model_name: str
    model_version: str
    preprocess_hash: str
    dim: int
    metric: str = "cosine"
    taxonomy_version: str = ""

    @property
    def id(self) -> str:
        """e.g. ``efficientnet_lite0_imagenet-v1-pp3fa2b1c0-d1280``."""
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", self.model_name)
        return f"{name}-v{self.model_version}-pp{self.preprocess_hash}-d{self.dim}"

    @classmethod
    def for_model(cls, model: ResolvedModel) -> "EmbeddingSpace":
        return cls(
            model_name=model.name,
            model_version=model.version,
            preprocess_hash=model.spec.preprocess.short_hash(),
            dim=model.spec.embedding_dim,
            metric=model.spec.metric,
            taxonomy_version=model.spec.label_set,
        )
