"""Exact k-nearest-neighbour search by cosine on unit vectors: a batched matrix product, on the GPU
when torch sees one. Pure: numpy in, numpy out."""

from __future__ import annotations

import numpy as np


def top_k_neighbours(queries: np.ndarray, corpus: np.ndarray, k: int, *, exclude_self: bool = False,
                     batch_size: int = 4096, device: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """For each query row, the indices and cosine scores of its ``k`` best corpus rows.

    Rows must be unit vectors. With ``exclude_self`` query i is corpus row i and is never its own
    neighbour. Ties keep the lower index. Runs in batches of ``batch_size`` queries.
    """
    import torch

    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    k = min(k, corpus.shape[0] - (1 if exclude_self else 0))
    if k <= 0:
        return np.zeros((len(queries), 0), dtype=np.int64), np.zeros((len(queries), 0), dtype=np.float32)
    corpus_t = torch.from_numpy(np.ascontiguousarray(corpus, dtype=np.float32)).to(dev)
    all_idx, all_scores = [], []
    for start in range(0, len(queries), batch_size):
        q = torch.from_numpy(np.ascontiguousarray(queries[start:start + batch_size], dtype=np.float32)).to(dev)
        sims = q @ corpus_t.T
        if exclude_self:
            rows = torch.arange(q.shape[0], device=dev)
            sims[rows, rows + start] = -float("inf")
        # Stable ordering: best score first, lower index first among equals.
        order = torch.argsort(-sims, dim=1, stable=True)[:, :k]
        all_idx.append(order.cpu().numpy())
        all_scores.append(torch.gather(sims, 1, order).cpu().numpy())
    return np.concatenate(all_idx), np.concatenate(all_scores).astype(np.float32)
