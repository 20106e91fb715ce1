"""The inference engine: encoded image bytes → L2-normalised float32 embeddings and top-k labels.

Free of Spark and MLflow, so it can be unit-tested and benchmarked alone. One engine holds one
loaded model; :func:`cached_engine` keeps one per (bundle, options) per process, which is how the
Spark wrapper loads the model once per Python worker.
"""

from __future__ import annotations

import ctypes
import logging
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from udfs.images import STATUS_OK, decode_image
from udfs.model_bundle import LoadedModel, load_bundle

log = logging.getLogger(__name__)

STATUS_INFERENCE_ERROR = "inference_error"


@dataclass(frozen=True)
class EngineOptions:
    batch_size: int = 32
    device: str = "auto"
    num_threads: int = 1
    top_k: int = 5
    max_image_pixels: int = 40_000_000


@dataclass
class EmbeddingResult:
    """One entry per input image, in input order. Failed rows have ``embedding is None``."""

    embeddings: list[np.ndarray | None] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    errors: list[str | None] = field(default_factory=list)
    label_names: list[list[str]] = field(default_factory=list)
    label_scores: list[list[float]] = field(default_factory=list)
    forward_passes: int = 0


_MALLOC_TUNED = False


def tune_malloc() -> None:
    """Stop glibc from mmapping/unmapping every large activation (a 4-5x CPU slowdown here).

    Equivalent to MALLOC_MMAP_MAX_=0 and a large MALLOC_TRIM_THRESHOLD_; a no-op off glibc.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        libc.mallopt(m_mmap_max, 0)
        libc.mallopt(m_trim_threshold, 512 * 1024 * 1024)
        _MALLOC_TUNED = True
    except (OSError, AttributeError):  # not glibc
        pass


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("inference.device is 'cuda' but torch sees no CUDA device")
    return torch.device(requested)


class EmbeddingEngine:
    """Embeds batches of encoded images with one loaded model."""

    def __init__(self, model: LoadedModel, options: EngineOptions = EngineOptions()) -> None:
        tune_malloc()
        self.model = model
        self.options = options
        self.device = pick_device(options.device)
        if self.device.type == "cpu":
            torch.set_num_threads(options.num_threads)
        module = model.module.to(self.device).eval()
        self.module = module.to(memory_format=torch.channels_last)
        self.preprocess = model.spec.preprocess

    @classmethod
    def from_directory(cls, directory: str | Path, options: EngineOptions = EngineOptions()) -> "EmbeddingEngine":
        return cls(load_bundle(Path(directory)), options)

    @property
    def embedding_dim(self) -> int:
        return self.model.spec.embedding_dim

    def _forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = torch.from_numpy(batch).to(self.device, non_blocking=True)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if self.device.type == "cuda":
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    pooled, logits = self.module(x)
            else:
                pooled, logits = self.module(x)
            pooled = torch.nn.functional.normalize(pooled.float(), dim=1)
            probs = torch.softmax(logits.float(), dim=1)
            k = min(self.options.top_k, probs.shape[1])
            top = torch.topk(probs, k, dim=1)
        return pooled.cpu().numpy().astype(np.float32), np.stack(
            [top.indices.cpu().numpy(), top.values.cpu().numpy()], axis=0)

    def embed(self, images: Sequence[bytes | bytearray | memoryview | None]) -> EmbeddingResult:
        """Decode, preprocess and embed ``images``; undecodable ones get a status row instead."""
        n = len(images)
        result = EmbeddingResult(
            embeddings=[None] * n, statuses=[STATUS_OK] * n, errors=[None] * n,
            label_names=[[] for _ in range(n)], label_scores=[[] for _ in range(n)],
        )
        pending_idx: list[int] = []
        pending_arr: list[np.ndarray] = []

        def run(indices: list[int], arrays: list[np.ndarray]) -> None:
            """Forward a batch; on out-of-memory halve it and retry, down to single frames."""
            try:
                pooled, top = self._forward(np.stack(arrays))
            except (RuntimeError, ValueError) as exc:
                if _is_out_of_memory(exc) and len(indices) > 1:
                    self._release_memory()
                    half = len(indices) // 2
                    log.warning("out of memory on a batch of %d; retrying as %d + %d",
                                len(indices), half, len(indices) - half)
                    run(indices[:half], arrays[:half])
                    run(indices[half:], arrays[half:])
                    return
                for i in indices:
                    result.statuses[i] = STATUS_INFERENCE_ERROR
                    result.errors[i] = f"{type(exc).__name__}: {exc}"[:500]
                return
            result.forward_passes += 1
            indices_top, scores = top
            for row, i in enumerate(indices):
                result.embeddings[i] = pooled[row]
                result.label_names[i] = [self._label(int(c)) for c in indices_top[row]]
                result.label_scores[i] = [float(v) for v in scores[row]]

        def flush() -> None:
            if pending_idx:
                run(list(pending_idx), list(pending_arr))
            pending_idx.clear()
            pending_arr.clear()

        for i, data in enumerate(images):
            outcome = decode_image(data, max_pixels=self.options.max_image_pixels,
                                   draft_size=self.preprocess.draft_size)
            if outcome.image is None:
                result.statuses[i] = outcome.status
                result.errors[i] = outcome.error
                continue
            try:
                pending_arr.append(self.preprocess.to_array(outcome.image))
            except (OSError, ValueError) as exc:
                result.statuses[i] = "preprocess_error"
                result.errors[i] = f"{type(exc).__name__}: {exc}"
                continue
            pending_idx.append(i)
            if len(pending_idx) >= self.options.batch_size:
                flush()
        flush()
        return result

    def _release_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _label(self, index: int) -> str:
        labels = self.model.labels
        return labels[index] if index < len(labels) else f"class_{index}"


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


_CACHE: dict[tuple[str, EngineOptions], EmbeddingEngine] = {}
_CACHE_LOCK = threading.Lock()


def cached_engine(directory: str | Path, options: EngineOptions) -> EmbeddingEngine:
    """The process-wide engine for (bundle folder, options), loaded on first use."""
    key = (str(Path(directory).resolve()), options)
    with _CACHE_LOCK:
        engine = _CACHE.get(key)
        if engine is None:
            log.info("loading model bundle %s on this worker", directory)
            engine = EmbeddingEngine.from_directory(directory, options)
            _CACHE[key] = engine
        return engine
