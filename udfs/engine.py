"""The inference engine: encoded image bytes → L2-normalised float32 embeddings, top-k labels and
moderation flags (labels over their own thresholds, see :mod:`udfs.flags`).

Batches are cut by frame count and by bytes. On CUDA: pinned host batches copied asynchronously,
the next frames decoded in a background thread during the forward pass, and JPEG decode on the GPU
(:mod:`udfs.gpu_decode`) with a per-frame fallback to PIL. None of that runs on CPU.

Free of Spark and MLflow, so it can be unit-tested and benchmarked alone. One engine holds one
loaded model; :func:`cached_engine` keeps one per (bundle, options) per process, which is how the
Spark wrapper loads the model once per Python worker.
"""

from __future__ import annotations

import ctypes
import logging
import sys
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, NamedTuple, Sequence

import numpy as np
import torch

from catalogfs.errors import BundleError, OnnxExportError
from catalogfs.statuses import Status
from catalogfs.udfs.families import serves_onnx_on_cpu
from catalogfs.udfs.flags import FLAG_SCORE_SIGMOID
from catalogfs.udfs.gpu_decode import decode_jpeg_tensor, gpu_decode_available, looks_like_jpeg, tensor_preprocess_supported
from catalogfs.udfs.images import decode_image
from catalogfs.udfs.label_scores import flags_over_thresholds, score_logits
from catalogfs.udfs.model_bundle import LoadedModel, load_bundle
from catalogfs.udfs.onnx_runtime import load_onnx_module, onnx_available

if TYPE_CHECKING:  # the engine runs without the config layer (pydantic, yaml)
    from catalogfs.config import InferenceConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineOptions:
    """How the engine runs (not what it computes).

    Each field is the ``inference.*`` setting of the same name: what it means, the values it
    takes and its default are those of :class:`catalogfs.config.InferenceConfig`, the one
    description (tests/test_options.py keeps the two in step). Jobs build the options with
    :meth:`from_config`; tests and benchmarks may set fields directly.
    """

    batch_size: int = 32
    device: str = "auto"
    num_threads: int = 1
    top_k: int = 5
    max_image_pixels: int = 40_000_000
    max_batch_bytes: int = 256 * 1024 * 1024
    gpu_decode: str = "auto"
    runtime: str = "auto"

    @classmethod
    def from_config(cls, inference: "InferenceConfig") -> "EngineOptions":
        """The options an ``inference`` config section sets: every field, by its name."""
        return cls(**{f.name: getattr(inference, f.name) for f in fields(cls)})


@dataclass
class EmbeddingResult:
    """One entry per input image, in input order. Failed rows have ``embedding is None``."""

    embeddings: list[np.ndarray | None] = field(default_factory=list)
    statuses: list[Status] = field(default_factory=list)
    errors: list[str | None] = field(default_factory=list)
    label_names: list[list[str]] = field(default_factory=list)
    label_scores: list[list[float]] = field(default_factory=list)
    # Flagged labels (score >= the label's threshold, best first) and their scores; None for a frame
    # that failed or when the model has no flags spec, [] when no label reached its threshold.
    flags: list[list[str] | None] = field(default_factory=list)
    flag_scores: list[list[float] | None] = field(default_factory=list)
    forward_passes: int = 0

    @classmethod
    def empty(cls, n: int) -> "EmbeddingResult":
        """``n`` rows, each ok with nothing computed yet."""
        return cls(embeddings=[None] * n, statuses=[Status.OK] * n, errors=[None] * n,
                   label_names=[[] for _ in range(n)], label_scores=[[] for _ in range(n)],
                   flags=[None] * n, flag_scores=[None] * n)


class BatchOutput(NamedTuple):
    """What one forward pass gives, on the host: unit-norm embeddings, top-k label indices and
    scores, and the flag labels' scores (None when the model has no flags)."""

    embeddings: np.ndarray
    top_indices: np.ndarray
    top_scores: np.ndarray
    flag_scores: np.ndarray | None


@dataclass
class _Prepared:
    """One frame after decode and preprocessing: pixels (host array or device tensor) or a status."""

    pixels: np.ndarray | torch.Tensor | None
    status: Status = Status.OK
    error: str | None = None

    @property
    def nbytes(self) -> int:
        if isinstance(self.pixels, torch.Tensor):
            return self.pixels.element_size() * self.pixels.nelement()
        return 0 if self.pixels is None else int(self.pixels.nbytes)


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
    """``auto`` → CUDA when torch sees a device, else CPU; ``cuda`` without a device is an error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("inference.device is 'cuda' but torch sees no CUDA device")
    return torch.device(requested)


RUNTIMES = ("auto", "torch", "onnxruntime")
GPU_DECODE_MODES = ("auto", "off")


def wants_onnx(options: EngineOptions, device: torch.device, model: LoadedModel) -> bool:
    """Whether the engine should serve ``model`` with ONNX Runtime (see ``EngineOptions.runtime``)."""
    if options.runtime not in RUNTIMES:
        raise ValueError(f"inference.runtime must be one of {list(RUNTIMES)}, got {options.runtime!r}")
    if options.runtime == "onnxruntime":
        if device.type != "cpu":
            raise ValueError("inference.runtime 'onnxruntime' runs on CPU only; use 'auto' or 'torch' on CUDA")
        return True
    return (options.runtime == "auto" and device.type == "cpu" and serves_onnx_on_cpu(model.spec.family)
            and model.directory is not None and onnx_available())


def use_gpu_decode(options: EngineOptions, device: torch.device, preprocess) -> bool:
    """Whether JPEG frames are decoded by torchvision on the GPU: only on CUDA, with
    ``gpu_decode: auto``, when torchvision imports and the preprocessing has a tensor twin."""
    if options.gpu_decode not in GPU_DECODE_MODES:
        raise ValueError(f"gpu_decode must be 'auto' or 'off', got {options.gpu_decode!r}")
    return (options.gpu_decode == "auto" and device.type == "cuda"
            and tensor_preprocess_supported(preprocess) and gpu_decode_available())


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
        self.runtime = "torch"
        if wants_onnx(options, self.device, model):
            try:
                self.module = load_onnx_module(module, model.files(), (1, 3, model.spec.preprocess.crop,
                                                                       model.spec.preprocess.crop),
                                               num_threads=options.num_threads)
                self.runtime = "onnxruntime"
            except OnnxExportError as exc:
                if options.runtime == "onnxruntime":
                    raise
                log.warning("serving the model with PyTorch: %s", exc)
        if self.runtime == "torch":
            self.module = module.to(memory_format=torch.channels_last)
        self.preprocess = model.spec.preprocess
        self._init_flags(model)
        self.gpu_decode = use_gpu_decode(options, self.device, self.preprocess)
        # On CUDA the next frames are decoded in a background thread while the GPU runs the current
        # batch (PIL releases the GIL while decoding); with GPU decode the GPU does that work itself.
        self._prefetch = (ThreadPoolExecutor(max_workers=2, thread_name_prefix="catalogfs-decode")
                          if self.device.type == "cuda" and not self.gpu_decode else None)

    def _init_flags(self, model: LoadedModel) -> None:
        settings = model.spec.flags
        flags = settings.thresholds
        unknown = sorted(set(flags) - set(model.labels))
        if unknown:
            raise BundleError(f"model spec flags {unknown} are not labels of the model")
        self.flag_labels: list[str] = list(flags)
        self.flag_thresholds = np.asarray([flags[label] for label in self.flag_labels], dtype=np.float32)
        self.flag_sigmoid = settings.score == FLAG_SCORE_SIGMOID
        self._flag_index = (torch.tensor([model.labels.index(label) for label in self.flag_labels],
                                         dtype=torch.long, device=self.device) if flags else None)

    @classmethod
    def from_directory(cls, directory: str | Path, options: EngineOptions = EngineOptions()) -> "EmbeddingEngine":
        return cls(load_bundle(Path(directory)), options)

    @property
    def embedding_dim(self) -> int:
        return self.model.spec.embedding_dim

    def _forward(self, batch: np.ndarray | torch.Tensor) -> BatchOutput:
        """One forward pass over a stacked batch (host array, or a tensor already on the device)."""
        x = torch.from_numpy(batch) if isinstance(batch, np.ndarray) else batch
        if x.device.type == "cpu" and self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)  # async host→device copy
        else:
            x = x.to(self.device)
        if self.runtime == "torch":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if self.device.type == "cuda":
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    pooled, logits = self.module(x)
            else:
                pooled, logits = self.module(x)
            pooled = torch.nn.functional.normalize(pooled.float(), dim=1)
            scores = score_logits(logits, top_k=self.options.top_k, flag_index=self._flag_index,
                                  flag_sigmoid=self.flag_sigmoid)
            flag_scores = (None if scores.flag_scores is None
                           else scores.flag_scores.cpu().numpy().astype(np.float32))
        return BatchOutput(pooled.cpu().numpy().astype(np.float32), scores.top_indices.cpu().numpy(),
                           scores.top_scores.cpu().numpy(), flag_scores)

    def _stack(self, items: list[np.ndarray | torch.Tensor]) -> np.ndarray | torch.Tensor:
        """Frames → one batch. Host arrays stack on the host (on CUDA into pinned memory, so the
        copy to the device is asynchronous); frames already on the device stack there."""
        if all(isinstance(item, np.ndarray) for item in items):
            if self.device.type != "cuda":
                return np.stack(items)
            host = torch.empty((len(items), *items[0].shape), dtype=torch.float32, pin_memory=True)
            for row, item in enumerate(items):
                host[row].copy_(torch.from_numpy(item))
            return host.to(self.device, non_blocking=True)
        return torch.stack([torch.from_numpy(item).to(self.device, non_blocking=True)
                            if isinstance(item, np.ndarray) else item for item in items])

    def _prepare(self, data: bytes | bytearray | memoryview | None) -> _Prepared:
        """Decode and preprocess one frame: on the GPU when enabled and possible, else with PIL."""
        if self.gpu_decode and data is not None and looks_like_jpeg(data):
            try:
                return _Prepared(decode_jpeg_tensor(data, self.preprocess, device=self.device,
                                                    max_pixels=self.options.max_image_pixels))
            except Exception as exc:  # noqa: BLE001 — any failure: the PIL path decides the status
                log.debug("GPU decode not used for a frame (%s: %s); decoding with PIL", type(exc).__name__, exc)
        outcome = decode_image(data, max_pixels=self.options.max_image_pixels,
                               draft_size=self.preprocess.draft_size)
        if outcome.image is None:
            return _Prepared(None, outcome.status, outcome.error)
        try:
            return _Prepared(self.preprocess.to_array(outcome.image))
        except (OSError, ValueError) as exc:
            return _Prepared(None, Status.PREPROCESS_ERROR, f"{type(exc).__name__}: {exc}")

    def _prepared(self, images: Sequence[bytes | bytearray | memoryview | None]) -> Iterator[_Prepared]:
        """``_prepare`` over ``images`` in order; with a prefetch pool, up to two batches ahead."""
        if self._prefetch is None:
            for data in images:
                yield self._prepare(data)
            return
        window: deque = deque()
        ahead = 2 * self.options.batch_size
        for data in images:
            window.append(self._prefetch.submit(self._prepare, data))
            if len(window) >= ahead:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()

    def embed(self, images: Sequence[bytes | bytearray | memoryview | None]) -> EmbeddingResult:
        """Decode, preprocess and embed ``images``; undecodable ones get a status row instead."""
        result = EmbeddingResult.empty(len(images))
        for indices, pixels in self._batches(images, result):
            self._run(indices, pixels, result)
        return result

    def _batches(self, images: Sequence[bytes | bytearray | memoryview | None],
                 result: EmbeddingResult) -> Iterator[tuple[list[int], list[np.ndarray | torch.Tensor]]]:
        """The prepared frames as (input indices, pixels) batches, cut at ``batch_size`` frames or
        before ``max_batch_bytes`` bytes; frames that failed to prepare get their status in
        ``result`` instead. Each batch is run before the next frame is taken."""
        indices: list[int] = []
        pixels: list[np.ndarray | torch.Tensor] = []
        nbytes = 0
        max_bytes = self.options.max_batch_bytes
        for i, prepared in enumerate(self._prepared(images)):
            if prepared.pixels is None:
                result.statuses[i] = prepared.status
                result.errors[i] = prepared.error
                continue
            if max_bytes and indices and nbytes + prepared.nbytes > max_bytes:
                yield indices, pixels  # the batch is full in bytes before it is full in frames
                indices, pixels, nbytes = [], [], 0
            indices.append(i)
            pixels.append(prepared.pixels)
            nbytes += prepared.nbytes
            if len(indices) >= self.options.batch_size:
                yield indices, pixels
                indices, pixels, nbytes = [], [], 0
        if indices:
            yield indices, pixels

    def _run(self, indices: list[int], pixels: list[np.ndarray | torch.Tensor], result: EmbeddingResult) -> None:
        """Forward one batch into ``result``; on out-of-memory halve it and retry, down to single
        frames; a batch that still fails gets ``inference_error`` rows."""
        try:
            out = self._forward(self._stack(pixels))
        except (RuntimeError, ValueError) as exc:
            if _is_out_of_memory(exc) and len(indices) > 1:
                self._release_memory()
                half = len(indices) // 2
                log.warning("out of memory on a batch of %d; retrying as %d + %d",
                            len(indices), half, len(indices) - half)
                self._run(indices[:half], pixels[:half], result)
                self._run(indices[half:], pixels[half:], result)
                return
            for i in indices:
                result.statuses[i] = Status.INFERENCE_ERROR
                result.errors[i] = f"{type(exc).__name__}: {exc}"[:500]
            return
        result.forward_passes += 1
        for row, i in enumerate(indices):
            result.embeddings[i] = out.embeddings[row]
            result.label_names[i] = [self._label(int(c)) for c in out.top_indices[row]]
            result.label_scores[i] = [float(v) for v in out.top_scores[row]]
            if out.flag_scores is not None:
                result.flags[i], result.flag_scores[i] = self._flags(out.flag_scores[row])

    def _flags(self, scores: np.ndarray) -> tuple[list[str], list[float]]:
        """The labels whose score reaches their own threshold, best first (ties by label)."""
        return flags_over_thresholds(self.flag_labels, self.flag_thresholds, scores)

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


def is_cached(directory: str | Path, options: EngineOptions) -> bool:
    """Whether this process already holds the engine for (bundle folder, options)."""
    return (str(Path(directory).resolve()), options) in _CACHE


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
