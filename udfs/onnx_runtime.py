"""Same weights, faster CPU runtime: a loaded model exported to ONNX once and run by ONNX Runtime.

On CPU, ONNX Runtime runs the default EfficientNet-Lite0 1.3-1.8x faster than eager PyTorch on one
thread (docs/performance.md). Nothing changes in what is computed: each time it is loaded, the
exported graph is checked against the PyTorch module on a fixed batch, and refused (PyTorch is
used) unless their outputs agree within ``TOLERANCE``.

Exports are cached by content (weights, spec, input shape, library versions) in
``CATALOGFS_ONNX_CACHE`` (default ``$XDG_CACHE_HOME/catalogfs/onnx``, else
``~/.cache/catalogfs/onnx``), written atomically, so the Python workers of one machine export a
model once between them. ONNX Runtime runs whatever graph the file holds, and the output check on
one fixed batch cannot tell a planted graph from ours, so the cache must be trusted: a folder is
used only if it belongs to this user and nobody else can write to it or to the folders above it
(else a private folder of this process is used), and each export has a sidecar with its sha256,
checked before the bytes are loaded.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import shutil
import stat
import tempfile
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from catalogfs.errors import OnnxExportError

log = logging.getLogger(__name__)

TOLERANCE = 1e-4  # largest absolute difference allowed between the two runtimes' outputs
OUTPUTS = ("pooled", "logits")
_CHECK_BATCH = 2
_private_dir: tuple[int, Path] | None = None  # (pid, folder): the fallback of this process


def onnx_available() -> bool:
    """Whether ONNX Runtime and the exporter's ``onnx`` package import."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/catalogfs/onnx`` (when absolute, as the XDG spec requires), else
    ``~/.cache/catalogfs/onnx``: a folder of this user, not one in the shared temp folder that
    another user could create first."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "catalogfs" / "onnx"


def untrusted_reason(folder: Path) -> str | None:
    """Why another local user could change what ``folder`` (a resolved path) holds, or None: it
    must be this user's folder, writable by nobody else, and every folder above it must belong to
    this user or root and be writable by nobody else (unless sticky, like /tmp), or the folder
    could be renamed and replaced."""
    if not hasattr(os, "getuid"):
        return None  # no POSIX owners (Windows): the per-user home folder is the protection
    uid, info = os.getuid(), folder.stat()
    if not stat.S_ISDIR(info.st_mode):
        return "not a folder"
    if info.st_uid != uid:
        return f"owned by uid {info.st_uid}, not {uid}"
    if info.st_mode & 0o022:
        return f"writable by others (mode {stat.S_IMODE(info.st_mode):o})"
    for parent in folder.parents:
        info = parent.stat()
        if info.st_uid not in (0, uid):
            return f"{parent} is owned by uid {info.st_uid}"
        if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
            return f"{parent} is writable by others (mode {stat.S_IMODE(info.st_mode):o})"
    return None


def private_cache_dir() -> Path:
    """A fresh folder (mode 0700) for this process only, removed when it exits: where exports
    go when the cache folder is not trusted (each process then exports for itself)."""
    global _private_dir
    if _private_dir is None or _private_dir[0] != os.getpid():  # a forked worker makes its own
        folder = Path(tempfile.mkdtemp(prefix="catalogfs-onnx-"))
        atexit.register(shutil.rmtree, folder, True)
        _private_dir = (os.getpid(), folder)
    return _private_dir[1]


def cache_dir() -> Path:
    """The folder exports are kept in: ``CATALOGFS_ONNX_CACHE``, else :func:`default_cache_dir`;
    used only when :func:`untrusted_reason` finds nothing, else a warning and
    :func:`private_cache_dir`."""
    configured = os.environ.get("CATALOGFS_ONNX_CACHE") or ""
    try:
        folder = prepared_dir(Path(configured).expanduser() if configured else default_cache_dir())
        reason = untrusted_reason(folder)
    except (OSError, RuntimeError) as exc:  # RuntimeError: no home folder (a worker without HOME)
        reason = f"{type(exc).__name__}: {exc}"
    if reason is None:
        return folder
    log.warning("not using the ONNX cache %s (%s): this process exports into a private folder",
                configured or "under the home folder", reason)
    return private_cache_dir()


def prepared_dir(folder: Path) -> Path:
    """``folder`` created with mode 0700 (whatever the umask) when missing, and resolved, so that
    a symbolic link swapped later does not redirect the files."""
    if not folder.exists():
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder.chmod(0o700)
    return folder.resolve(strict=True)


def sidecar(path: Path) -> Path:
    """The file beside an export that holds its sha256 (``sha256sum`` format)."""
    return path.with_name(f"{path.name}.sha256")


def read_verified(path: Path) -> bytes | None:
    """The cached export's bytes when they match its sidecar, else None. A file that does not
    match (changed, cut short, or without sidecar) is deleted, so that it is exported again."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        recorded = sidecar(path).read_text().split()[0]
    except (OSError, IndexError):
        recorded = None
    if recorded == hashlib.sha256(data).hexdigest():
        return data
    log.warning("the cached ONNX export %s does not match its sha256 sidecar (changed or damaged): "
                "exporting again", path)
    path.unlink(missing_ok=True)
    return None


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


def export(module: torch.nn.Module, path: Path, input_shape: tuple[int, ...]) -> bytes:
    """Export ``module`` (forward(x) → (pooled, logits)) to ``path`` with a dynamic batch axis;
    returns the bytes written. The file appears complete or not at all (written beside it, then
    renamed); its sha256 sidecar is written (atomically too) after it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.partial")
    example = torch.zeros((1, *input_shape[1:]), dtype=torch.float32)
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes on shape arithmetic: the input size is fixed
            torch.onnx.export(module.eval(), (example,), str(partial), input_names=["x"], output_names=list(OUTPUTS),
                              dynamic_axes={"x": {0: "n"}, **{o: {0: "n"} for o in OUTPUTS}},
                              opset_version=17, dynamo=False)
        data = partial.read_bytes()
        os.replace(partial, path)
        _write_atomically(sidecar(path), f"{hashlib.sha256(data).hexdigest()}  {path.name}\n".encode())
    except Exception as exc:
        partial.unlink(missing_ok=True)
        raise OnnxExportError(f"cannot export the model to ONNX: {type(exc).__name__}: {exc}") from exc
    return data


def _write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.partial")
    try:
        partial.write_bytes(data)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


class OnnxModule:
    """Called like the PyTorch module it was exported from: ``x`` (N, C, H, W float32) →
    ``(pooled, logits)`` as CPU tensors. With ``data`` the graph is loaded from those bytes (the
    ones that were checked), not read again from ``path``."""

    def __init__(self, path: Path, *, num_threads: int = 1, data: bytes | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, num_threads)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.path = path
        self.session = ort.InferenceSession(str(path) if data is None else data, options,
                                            providers=["CPUExecutionProvider"])

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
    """The cached export of ``module`` (exported now when missing or not matching its sidecar),
    checked against ``module``."""
    path = cache_dir() / f"{export_key(files, input_shape)}.onnx"
    started = time.monotonic()
    try:
        data = read_verified(path)
    except OSError as exc:
        raise OnnxExportError(f"cannot read the ONNX export {path}: {type(exc).__name__}: {exc}") from exc
    if data is None:
        data = export(module, path, input_shape)
        log.info("exported the model to ONNX in %.1f s: %s", time.monotonic() - started, path)
    try:
        onnx_module = OnnxModule(path, num_threads=num_threads, data=data)
    except Exception as exc:  # an export ONNX Runtime cannot load: removed, so the next load exports again
        path.unlink(missing_ok=True)
        sidecar(path).unlink(missing_ok=True)
        raise OnnxExportError(f"cannot load the ONNX export {path}: {type(exc).__name__}: {exc}") from exc
    worst = check_same_outputs(module, onnx_module, input_shape)
    log.info("ONNX Runtime serves the model (%s; outputs within %.1e of PyTorch)", path.name, worst)
    return onnx_module
