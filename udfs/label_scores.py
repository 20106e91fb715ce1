"""How a frame's label and flag scores follow from its logits: one definition, shared by the
engine (:mod:`udfs.engine`, after an image forward pass) and the re-labeller (:mod:`udfs.relabel`,
from stored vectors), so that both give the same labels.

- Zero-shot (CLIP-like) logits: the model's logit scale times the cosine between the image
  embedding (re-normalised) and each label's unit text embedding.
- Label scores: the softmax of the logits over the label set; a frame keeps its ``top_k``.
- Flag scores: each flagged label's sigmoid (multi-label classifiers) or its softmax probability
  (every other model); a label is flagged when its score reaches its own threshold.

Torch only; no model, no Spark.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch import nn


def zero_shot_logits(image_features: torch.Tensor, text_embeddings: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """``logit_scale`` × cosine(image, label) for every label: the rows of ``image_features`` are
    re-normalised (float32), ``text_embeddings`` holds one unit vector per label."""
    image = nn.functional.normalize(image_features.float(), dim=-1)
    return logit_scale * image @ text_embeddings.T


class LabelScores(NamedTuple):
    """Per row: the ``top_k`` label indices and their probabilities (best first), and the flag
    labels' scores (None when the model has no flags)."""

    top_indices: torch.Tensor
    top_scores: torch.Tensor
    flag_scores: torch.Tensor | None


def score_logits(logits: torch.Tensor, *, top_k: int, flag_index: torch.Tensor | None = None,
                 flag_sigmoid: bool = False) -> LabelScores:
    """Softmax over the label set, its ``top_k`` (at most the number of labels), and the scores of
    the labels at ``flag_index`` (sigmoids of their logits when ``flag_sigmoid``, else their
    softmax probabilities)."""
    logits = logits.float()
    probs = torch.softmax(logits, dim=1)
    k = min(top_k, probs.shape[1])
    top = torch.topk(probs, k, dim=1)
    flag_scores = None
    if flag_index is not None:
        flag_scores = torch.sigmoid(logits[:, flag_index]) if flag_sigmoid else probs[:, flag_index]
    return LabelScores(top.indices, top.values, flag_scores)


def flags_over_thresholds(labels: Sequence[str], thresholds: np.ndarray,
                          scores: np.ndarray) -> tuple[list[str], list[float]]:
    """The labels whose score reaches their own threshold, best first (ties by label)."""
    hits = [(float(s), label) for label, s, t in zip(labels, scores, thresholds) if s >= t]
    hits.sort(key=lambda h: (-h[0], h[1]))
    return [label for _, label in hits], [s for s, _ in hits]
