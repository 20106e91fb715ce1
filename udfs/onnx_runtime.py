"""Same weights, faster CPU runtime: a loaded model exported to ONNX once and run by ONNX Runtime.

On CPU, ONNX Runtime runs the default EfficientNet-Lite0 1.3-1.8x faster than eager PyTorch on one
thread (docs/performance.md). Nothing changes in what is computed: each time it is loaded, the
exported graph is checked against the PyTorch module on a fixed batch, and refused (PyTorch is
used) unless their outputs agree within ``TOLERANCE``.

Exports are cached by content (weights, spec, input shape, library versions) in
``CATALOGFS_ONNX_CACHE`` (default ``<tmp>/catalogfs-onnx-<uid>``), written atomically, so the Python
workers of one machine export a model once between them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)

TOLERANCE = 1e-4  # largest absolute difference allowed between the two runtimes' outputs
OUTPUTS = ("pooled", "logits")
_CHECK_BATCH = 2


class OnnxExportError(RuntimeError):
    """The model could not be exported, or the export computes something else than the model."""


def onnx_available() -> bool:
    """Whether ONNX Runtime and the exporter's ``onnx`` package import."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def cache_dir() -> Path:
    """Where exports are kept: ``CATALOGFS_ONNX_CACHE``, else a per-user folder in the temp dir."""
    default = Path(tempfile.gettempdir()) / f"catalogfs-onnx-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    return Path(os.environ.get("CATALOGFS_ONNX_CACHE") or default)


def export_key(files: Sequence[Path], input_shape: tuple[int, ...]) -> str:
    """A content key for an export: the bundle's files, the input shape and the library versions."""
    import onnxruntime

    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.name.encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    digest.update(f"{input_shape}|torch {torch.__version__}|ort {onnxruntime.__version__}".encode())
    return digest.hexdigest()[:32]


def export(module: torch.nn.Module, path: Path, input_shape: tuple[int, ...]) -> Path:
    """Export ``module`` (forward(x) → (pooled, logits)) to ``path`` with a dynamic batch axis.
    The file appears complete or not at all (written beside it, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    example = torch.zeros((1, *input_shape[1:]), dtype=torch.float32)
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes on shape arithmetic: the input size is fixed
            torch.onnx.export(module.eval(), (example,), str(partial), input_names=["x"], output_names=list(OUTPUTS),
                              dynamic_axes={"x": {0: "n"}, **{o: {0: "n"} for o in OUTPUTS}},
                              opset_version=17, dynamo=False)
        os.replace(partial, path)
    except Exception as exc:
        partial.unlink(missing_ok=True)
        raise OnnxExportError(f"cannot export the model to ONNX: {type(exc).__name__}: {exc}") from exc
    return path


class OnnxModule:
    """Called like the PyTorch module it was exported from: ``x`` (N, C, H, W float32) →
    ``(pooled, logits)`` as CPU tensors."""

    def __init__(self, path: Path, *, num_threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, num_threads)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.path = path
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        pooled, logits = self.session.run(list(OUTPUTS), {"x": array})
        return torch.from_numpy(pooled), torch.from_numpy(logits)


def check_same_outputs(module: torch.nn.Module, onnx_module: OnnxModule, input_shape: tuple[int, ...]) -> float:
    """Largest absolute difference between the two runtimes on a fixed pseudo-random batch;
    raises :class:`OnnxExportError` above ``TOLERANCE``."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((_CHECK_BATCH, *input_shape[1:]), generator=generator)
    with torch.inference_mode():
        expected = module(x)
    got = onnx_module(x)
    worst = max(float((e.float() - g).abs().max()) for e, g in zip(expected, got))
    if not worst <= TOLERANCE:
        raise OnnxExportError(f"the ONNX export differs from the model by {worst:.2e} (> {TOLERANCE:.0e})")
    return worst


def load_onnx_module(module: torch.nn.Module, files: Sequence[Path], input_shape: tuple[int, ...], *,
                     num_threads: int = 1) -> OnnxModule:
    """The cached export of ``module`` (exported now when missing), checked against ``module``."""
    path = cache_dir() / f"{export_key(files, input_shape)}.onnx"
    started = time.monotonic()
    if not path.exists():
        export(module, path, input_shape)
        log.info("exported the model to ONNX in %.1f s: %s", time.monotonic() - started, path)
    try:
        onnx_module = OnnxModule(path, num_threads=num_threads)
    except Exception as exc:  # a damaged cache file: removed, so the next load exports again
        path.unlink(missing_ok=True)
        raise OnnxExportError(f"cannot load the ONNX export {path}: {type(exc).__name__}: {exc}") from exc
    worst = check_same_outputs(module, onnx_module, input_shape)
    log.info("ONNX Runtime serves the model (%s; outputs within %.1e of PyTorch)", path.name, worst)
    return onnx_module
