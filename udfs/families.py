"""Model families: what a bundle's ``family`` names, and the registry of the known ones.

A family turns a bundle folder into an engine module and says what else depends on the kind of
model: its label names, how its flags are scored, whether ONNX Runtime may serve it on CPU, and
its typed options. Each family lives in its own module (:mod:`udfs.efficientnet_lite`,
:mod:`udfs.hf_models`) and satisfies :class:`ModelFamily` structurally, so those modules import
nothing from here; nothing outside them branches on a family's name.

Labels: for every family the engine ranks the softmax of the module's logits (top-k). What differs
is which logits the module gives (class logits; for zero-shot families the scaled cosines to the
taxonomy's text embeddings, so that softmax is the zero-shot distribution), their names
(:meth:`ModelFamily.label_names`), and how flag scores are computed
(:meth:`ModelFamily.flag_score`), which is decided when flags are attached and recorded in the
spec (``flag_score``), so registered bundles keep scoring their flags the way they were made.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Protocol, Sequence

from torch import nn

from catalogfs.errors import BundleError
from catalogfs.udfs.bundle_format import BundleSpec
from catalogfs.udfs.efficientnet_lite import FAMILY as EFFICIENTNET_LITE0
from catalogfs.udfs.hf_models import FAMILY as TRANSFORMERS


class FamilyOptions(Protocol):
    """What every family's typed view of ``spec.options`` tells the registry (model-version tags)."""

    @property
    def kind(self) -> str:
        """The kind of model within the family (``clip``, ``classifier``, …; else the family's name)."""

    @property
    def taxonomy(self) -> Mapping[str, Sequence[str]]:
        """Zero-shot labels → prompts (the spec's ``label_set`` is then its version); {} otherwise."""


class ModelFamily(Protocol):
    """One family of bundles (the spec's ``family``)."""

    name: str
    serves_onnx_on_cpu: bool  # runtime "auto" may serve it with ONNX Runtime on CPU (exports exactly)

    def options(self, spec: BundleSpec) -> FamilyOptions:
        """The family's typed view of ``spec.options`` (a frozen dataclass)."""

    def build(self, directory: Path, spec: BundleSpec) -> tuple[nn.Module, list[str]]:
        """The module (``forward(x) → (pooled, logits)``) and the names of its logits."""

    def label_names(self, directory: Path, spec: BundleSpec) -> list[str]:
        """The label names the model produces, read from the bundle's files (no weights loaded)."""

    def flag_score(self, directory: Path, spec: BundleSpec) -> str:
        """How flags on this model are scored: ``sigmoid`` or ``softmax`` (see :mod:`udfs.flags`)."""


FAMILIES: dict[str, ModelFamily] = {f.name: f for f in (EFFICIENTNET_LITE0, TRANSFORMERS)}


def family(name: str) -> ModelFamily:
    """The family called ``name``; :class:`BundleError` naming the known ones otherwise."""
    found = FAMILIES.get(name)
    if found is None:
        raise BundleError(f"unknown model family {name!r}; known: {sorted(FAMILIES)}")
    return found


def serves_onnx_on_cpu(name: str) -> bool:
    """Whether runtime ``auto`` may serve family ``name`` with ONNX Runtime on CPU (False for a
    name that is no known family, e.g. a module built in memory by a test or benchmark)."""
    found = FAMILIES.get(name)
    return found is not None and found.serves_onnx_on_cpu
