"""A model bundle: the folder format in which models are registered and loaded.

::

    model_spec.json     family, embedding dim, preprocessing, label set, weights file
    model.safetensors   weights (safetensors only: loading them runs no code)
    labels.txt          one class name per line, in logit order

The engine loads bundles from a local folder; getting the folder out of the MLflow registry is the
job of :mod:`udfs.model_registry`, so this module needs neither MLflow nor Spark.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from udfs.preprocess import PreprocessSpec
from catalogfs.errors import BundleError  # noqa: F401 (raised here, importable from here)

SPEC_FILE = "model_spec.json"
WEIGHTS_FILE = "model.safetensors"
LABELS_FILE = "labels.txt"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class BundleSpec:
    family: str
    embedding_dim: int
    preprocess: PreprocessSpec
    label_set: str
    metric: str = "cosine"
    options: dict[str, Any] = field(default_factory=dict)  # family-specific (e.g. transformers kind, taxonomy)

    def to_dict(self) -> dict[str, Any]:
        return {
            "options": self.options,
            "format_version": FORMAT_VERSION,
            "family": self.family,
            "embedding_dim": self.embedding_dim,
            "preprocess": self.preprocess.to_dict(),
            "label_set": self.label_set,
            "metric": self.metric,
            "weights": WEIGHTS_FILE,
            "labels": LABELS_FILE,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BundleSpec":
        return cls(
            family=str(data["family"]),
            embedding_dim=int(data["embedding_dim"]),
            preprocess=PreprocessSpec.from_dict(data["preprocess"]),
            label_set=str(data.get("label_set", "")),
            metric=str(data.get("metric", "cosine")),
            options=dict(data.get("options") or {}),
        )


@dataclass
class LoadedModel:
    spec: BundleSpec
    module: torch.nn.Module  # forward(x) -> (pooled features, logits)
    labels: list[str]
    directory: Path | None = None  # the bundle folder it was loaded from (None: built in memory)

    def files(self) -> list[Path]:
        """The bundle's files (what its content is), or [] for a model built in memory."""
        if self.directory is None:
            return []
        return sorted(p for p in self.directory.rglob("*") if p.is_file())


def _build_efficientnet_lite0(directory: Path, spec: BundleSpec) -> tuple[torch.nn.Module, list[str]]:
    from udfs.efficientnet_lite import build_efficientnet_lite0

    weights = directory / WEIGHTS_FILE
    if not weights.exists():
        raise BundleError(f"{weights}: weights file missing (bundles carry safetensors weights only)")
    labels_path = directory / LABELS_FILE
    labels = labels_path.read_text().splitlines() if labels_path.exists() else []
    # loaded bundles serve inference only: BatchNorm is folded into the convolutions here
    return build_efficientnet_lite0(load_file(str(weights))).fold_batchnorm(), labels


def _build_transformers(directory: Path, spec: BundleSpec) -> tuple[torch.nn.Module, list[str]]:
    from udfs.hf_models import load_transformers_module

    return load_transformers_module(directory, spec)


# family → builder(bundle folder, spec) → (module whose forward gives (pooled, logits), label names)
FAMILIES: dict[str, Callable[[Path, BundleSpec], tuple[torch.nn.Module, list[str]]]] = {
    "efficientnet_lite0": _build_efficientnet_lite0,
    "transformers": _build_transformers,
}


def write_bundle(directory: Path, spec: BundleSpec, state_dict: dict[str, torch.Tensor],
                 labels: list[str]) -> Path:
    """Write a bundle folder (weights as safetensors) and return it."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(directory / WEIGHTS_FILE))
    (directory / LABELS_FILE).write_text("\n".join(labels) + "\n")
    (directory / SPEC_FILE).write_text(json.dumps(spec.to_dict(), indent=2, sort_keys=True))
    return directory


def read_spec(directory: Path) -> BundleSpec:
    path = directory / SPEC_FILE
    try:
        return BundleSpec.from_dict(json.loads(path.read_text()))
    except FileNotFoundError as exc:
        raise BundleError(f"{path}: model bundle has no {SPEC_FILE}") from exc
    except (KeyError, ValueError, TypeError) as exc:
        raise BundleError(f"{path}: invalid model spec: {exc}") from exc


def load_bundle(directory: Path) -> LoadedModel:
    """Load a bundle folder into an eval-mode module. Only safetensors weights are accepted."""
    directory = Path(directory)
    spec = read_spec(directory)
    if spec.family not in FAMILIES:
        raise BundleError(f"{directory / SPEC_FILE}: unknown model family {spec.family!r}; "
                          f"known: {sorted(FAMILIES)}")
    module, labels = FAMILIES[spec.family](directory, spec)
    return LoadedModel(spec=spec, module=module.eval(), labels=labels, directory=directory)


def bundle_labels(directory: Path, spec: BundleSpec) -> list[str]:
    """The label names a bundle's model produces, read from its files (no weights loaded)."""
    directory = Path(directory)
    if spec.family == "transformers":
        from udfs.hf_models import HF_DIR, declared_labels

        config = json.loads((directory / HF_DIR / "config.json").read_text())
        return declared_labels(config, str(spec.options.get("kind", "encoder")), spec.options.get("taxonomy"))
    path = directory / LABELS_FILE
    return path.read_text().splitlines() if path.exists() else []


def copy_with_flags(directory: Path, destination: Path, flags: dict[str, float]) -> Path:
    """Copy bundle ``directory`` to ``destination`` with ``flags`` ({label: threshold}) in its spec.

    Flags must name labels of the model (:class:`udfs.flags.FlagsError` otherwise); their scores are
    sigmoids for multi-label transformers classifiers, softmax probabilities otherwise.
    """
    import shutil
    from dataclasses import replace

    from udfs.flags import check_flag_labels, flag_score_mode, parse_flags

    directory = Path(directory)
    spec = read_spec(directory)
    flags = parse_flags(flags, source=f"{directory}: flags")
    check_flag_labels(flags, bundle_labels(directory, spec), source=f"{directory}: flags")
    mode = "softmax"
    if spec.family == "transformers":
        from udfs.hf_models import HF_DIR

        config = json.loads((directory / HF_DIR / "config.json").read_text())
        mode = flag_score_mode(config, str(spec.options.get("kind", "encoder")))
    shutil.copytree(directory, destination, dirs_exist_ok=True)
    spec = replace(spec, options={**spec.options, "flags": flags, "flag_score": mode})
    (Path(destination) / SPEC_FILE).write_text(json.dumps(spec.to_dict(), indent=2, sort_keys=True))
    return Path(destination)
