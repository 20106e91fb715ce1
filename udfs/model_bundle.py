"""Model bundles: write a bundle folder, load one into an engine module, attach flags to a copy.

The folder format is :mod:`udfs.bundle_format` (its names are importable from here too); what a
bundle's ``family`` does with it is :mod:`udfs.families`. The engine loads bundles from a local
folder; getting the folder out of the MLflow registry is the job of :mod:`udfs.model_registry`,
so this module needs neither MLflow nor Spark.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from catalogfs.errors import BundleError
from catalogfs.udfs.bundle_format import (
    FORMAT_VERSION, LABELS_FILE, SPEC_FILE, WEIGHTS_FILE, BundleSpec, FlagSettings, read_spec,
    write_spec,
)
from catalogfs.udfs.families import FAMILIES, ModelFamily, family
from catalogfs.udfs.flags import check_flag_labels, parse_flags

__all__ = [  # the bundle API; the format's names are re-exported for the callers that import them from here
    "FAMILIES", "FORMAT_VERSION", "LABELS_FILE", "SPEC_FILE", "WEIGHTS_FILE", "BundleSpec",
    "FlagSettings", "LoadedModel", "bundle_labels", "copy_with_flags", "load_bundle", "read_spec", "write_bundle",
    "write_spec",
]


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


def write_bundle(directory: Path, spec: BundleSpec, state_dict: dict[str, torch.Tensor],
                 labels: list[str]) -> Path:
    """Write a bundle folder (weights as safetensors) and return it."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(directory / WEIGHTS_FILE))
    (directory / LABELS_FILE).write_text("\n".join(labels) + "\n")
    write_spec(directory, spec)
    return directory


def _family_of(directory: Path, spec: BundleSpec) -> ModelFamily:
    """The bundle's family; an unknown one is a :class:`BundleError` that names the spec file."""
    try:
        return family(spec.family)
    except BundleError as exc:
        raise BundleError(f"{directory / SPEC_FILE}: {exc}") from None


def load_bundle(directory: Path) -> LoadedModel:
    """Load a bundle folder into an eval-mode module. Only safetensors weights are accepted."""
    directory = Path(directory)
    spec = read_spec(directory)
    module, labels = _family_of(directory, spec).build(directory, spec)
    return LoadedModel(spec=spec, module=module.eval(), labels=labels, directory=directory)


def bundle_labels(directory: Path, spec: BundleSpec) -> list[str]:
    """The label names a bundle's model produces, read from its files (no weights loaded)."""
    directory = Path(directory)
    return _family_of(directory, spec).label_names(directory, spec)


def copy_with_flags(directory: Path, destination: Path, flags: dict[str, float]) -> Path:
    """Copy bundle ``directory`` to ``destination`` with ``flags`` ({label: threshold}) in its spec.

    Flags must name labels of the model (:class:`udfs.flags.FlagsError` otherwise); how they are
    scored is the family's call (sigmoids for multi-label transformers classifiers, softmax
    probabilities otherwise).
    """
    directory = Path(directory)
    spec = read_spec(directory)
    model_family = _family_of(directory, spec)
    flags = parse_flags(flags, source=f"{directory}: flags")
    check_flag_labels(flags, model_family.label_names(directory, spec), source=f"{directory}: flags")
    mode = model_family.flag_score(directory, spec)
    shutil.copytree(directory, destination, dirs_exist_ok=True)
    write_spec(Path(destination), spec.with_flags(flags, mode))
    return Path(destination)
