"""Zero-shot labels from stored vectors: a new taxonomy without an image forward pass.

For a CLIP-like model a frame's labels depend on its image only through its unit image embedding
(the vector the store keeps): logits are the model's logit scale times the cosines to the labels'
text embeddings. So a new taxonomy (or new flag thresholds) needs only the text tower: the
:class:`ZeroShotScorer` holds the taxonomy's text embeddings and scores stored vectors with the
engine's own functions (:mod:`udfs.label_scores`), giving the labels a full re-embed would give,
to float rounding.

The scorer is built once on the driver (:func:`zero_shot_scorer`: the text tower of the space's
registered bundle), then is plain data — label names, a small matrix, a scale — sent to the Spark
workers, which load no model (:func:`udfs.spark_udf.make_relabel_udf`). Spark-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from catalogfs.errors import RelabelError
from catalogfs.udfs.bundle_format import BundleSpec, read_spec
from catalogfs.udfs.families import family
from catalogfs.udfs.flags import Taxonomy
from catalogfs.udfs.hf_models import FAMILY as TRANSFORMERS
from catalogfs.udfs.label_scores import flags_over_thresholds, score_logits, zero_shot_logits


@dataclass
class FrameLabels:
    """One entry per input vector, in input order; None for a row without a vector (and flags None
    when the taxonomy has no flags, as the engine writes for a model without flags)."""

    labels: list[list[str] | None] = field(default_factory=list)
    label_scores: list[list[float] | None] = field(default_factory=list)
    flags: list[list[str] | None] = field(default_factory=list)
    flag_scores: list[list[float] | None] = field(default_factory=list)

    def as_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"labels": self.labels, "label_scores": self.label_scores,
                             "flags": self.flags, "flag_scores": self.flag_scores})


@dataclass(frozen=True)
class ZeroShotScorer:
    """Stored unit image vectors → top-k labels and flags over one taxonomy (see module doc)."""

    labels: tuple[str, ...]
    text_embeddings: np.ndarray  # float32, one unit row per label
    logit_scale: float
    top_k: int
    taxonomy_version: str
    flags: dict[str, float] = field(default_factory=dict)  # label → threshold (softmax scores)

    @property
    def dim(self) -> int:
        return int(self.text_embeddings.shape[1])

    def score(self, vectors: Sequence[np.ndarray | Sequence[float] | None]) -> FrameLabels:
        """Labels, scores and flags of each vector, exactly as the engine scores an image embedding."""
        n = len(vectors)
        out = FrameLabels([None] * n, [None] * n, [None] * n, [None] * n)
        rows = [i for i, v in enumerate(vectors) if v is not None]
        if not rows:
            return out
        x = torch.from_numpy(np.stack([np.asarray(vectors[i], dtype=np.float32) for i in rows]))
        if x.shape[1] != self.dim:
            raise ValueError(f"vectors of dimension {x.shape[1]}, but the taxonomy's text embeddings have {self.dim}")
        flag_labels = list(self.flags)
        flag_index = torch.tensor([self.labels.index(f) for f in flag_labels], dtype=torch.long) if flag_labels else None
        with torch.inference_mode():
            logits = zero_shot_logits(x, torch.from_numpy(self.text_embeddings), self.logit_scale)
            scores = score_logits(logits, top_k=self.top_k, flag_index=flag_index)
        top_indices, top_scores = scores.top_indices.numpy(), scores.top_scores.numpy()
        flag_scores = None if scores.flag_scores is None else scores.flag_scores.numpy().astype(np.float32)
        thresholds = np.asarray([self.flags[f] for f in flag_labels], dtype=np.float32)
        for row, i in enumerate(rows):
            out.labels[i] = [self.labels[int(c)] for c in top_indices[row]]
            out.label_scores[i] = [float(v) for v in top_scores[row]]
            if flag_scores is not None:
                out.flags[i], out.flag_scores[i] = flags_over_thresholds(flag_labels, thresholds, flag_scores[row])
        return out

    def score_series(self, vectors: pd.Series) -> pd.DataFrame:
        """:meth:`score` over a pandas batch (a pandas UDF's input): labels, label_scores, flags, flag_scores."""
        return self.score([None if v is None else v for v in vectors.tolist()]).as_frame()


def is_zero_shot(spec: BundleSpec) -> bool:
    """Whether the bundle's labels are zero-shot over a taxonomy's text embeddings (CLIP-like)."""
    return spec.family == TRANSFORMERS.name and family(spec.family).options(spec).kind == "clip"


def require_zero_shot(spec: BundleSpec, *, what: str) -> None:
    """Refuse a bundle whose labels are not zero-shot over text embeddings (a classifier, a plain
    encoder, the default EfficientNet): :class:`RelabelError` naming ``what`` (the space) and why."""
    if not is_zero_shot(spec):
        kind = getattr(family(spec.family).options(spec), "kind", "none")
        raise RelabelError(
            f"{what} cannot be re-labelled from its vectors: its model (family {spec.family}, kind {kind}, labels "
            f"{spec.label_set or 'none'}) is not CLIP-like — its labels come from a classifier head, not from "
            f"text embeddings. Re-labelling needs a CLIP-like space (a model registered with --taxonomy).")


def zero_shot_scorer(bundle_dir: Path, taxonomy: Taxonomy, *, top_k: int, what: str = "the space") -> ZeroShotScorer:
    """The scorer for ``taxonomy`` with the model of the bundle folder ``bundle_dir``: the labels'
    text embeddings from its text tower (no image forward pass) and its logit scale."""
    from catalogfs.udfs.hf_models import load_text_tower, zero_shot_head

    spec = read_spec(Path(bundle_dir))
    require_zero_shot(spec, what=what)
    model, tokenizer = load_text_tower(Path(bundle_dir))
    texts, scale = zero_shot_head(model, tokenizer, taxonomy.labels)
    if texts.shape[1] != spec.embedding_dim:
        raise RelabelError(f"{what}: text embeddings of dimension {texts.shape[1]}, image vectors of "
                           f"{spec.embedding_dim}: the model's towers do not share one space")
    return ZeroShotScorer(labels=tuple(taxonomy.labels), text_embeddings=texts.numpy().astype(np.float32),
                          logit_scale=scale, top_k=top_k, taxonomy_version=taxonomy.version,
                          flags=dict(taxonomy.flags))
