"""The model bundle format: the files of a bundle folder and its spec, ``model_spec.json``.

::

    model_spec.json     family, embedding dim, preprocessing, label set, family options
    model.safetensors   weights (safetensors only: loading them runs no code)
    labels.txt          one class name per line, in logit order

Bundles registered in users' MLflow registries are read by every later version of the engine, so
this format only grows: the JSON keys stay, and ``options`` stays the mapping it is on disk. What a
family makes of its options is its own typed view (:mod:`udfs.families`); the flags every family
may carry are read here (:class:`FlagSettings`).

A leaf module: nothing from udfs but the preprocessing spec, no torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from catalogfs.udfs.preprocess import PreprocessSpec
from catalogfs.errors import BundleError

SPEC_FILE = "model_spec.json"
WEIGHTS_FILE = "model.safetensors"
LABELS_FILE = "labels.txt"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class FlagSettings:
    """A bundle's moderation flags (:mod:`udfs.flags`): ``{label: threshold}`` (empty: none) and
    how their scores are computed (``sigmoid`` / ``softmax``; None when the spec records none).

    Stored as ``options["flags"]`` and ``options["flag_score"]`` of the spec, for every family."""

    thresholds: dict[str, float] = field(default_factory=dict)
    score: str | None = None

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> "FlagSettings":
        return cls(thresholds=dict(options.get("flags") or {}), score=options.get("flag_score"))


@dataclass(frozen=True)
class BundleSpec:
    family: str
    embedding_dim: int
    preprocess: PreprocessSpec
    label_set: str
    metric: str = "cosine"
    # As stored: read through FlagSettings (flags) and the family's typed options, not directly.
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def flags(self) -> FlagSettings:
        return FlagSettings.from_options(self.options)

    def with_flags(self, thresholds: Mapping[str, float], score: str) -> "BundleSpec":
        """This spec with ``thresholds`` as its flags, scored by ``score``."""
        return replace(self, options={**self.options, "flags": dict(thresholds), "flag_score": score})

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


def read_spec(directory: Path) -> BundleSpec:
    """The spec of the bundle folder ``directory`` (:class:`BundleError` when missing or invalid)."""
    path = Path(directory) / SPEC_FILE
    try:
        return BundleSpec.from_dict(json.loads(path.read_text()))
    except FileNotFoundError as exc:
        raise BundleError(f"{path}: model bundle has no {SPEC_FILE}") from exc
    except (KeyError, ValueError, TypeError) as exc:
        raise BundleError(f"{path}: invalid model spec: {exc}") from exc


def write_spec(directory: Path, spec: BundleSpec) -> Path:
    """Write ``spec`` as the bundle folder's ``model_spec.json`` (sorted keys) and return its path."""
    path = Path(directory) / SPEC_FILE
    path.write_text(json.dumps(spec.to_dict(), indent=2, sort_keys=True))
    return path


def read_labels(directory: Path) -> list[str]:
    """The bundle's ``labels.txt`` (one name per line, in logit order), or [] when it has none."""
    path = Path(directory) / LABELS_FILE
    return path.read_text().splitlines() if path.exists() else []
