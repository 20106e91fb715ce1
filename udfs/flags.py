"""Moderation-style flags: labels with their own thresholds, and the taxonomy file format.

A *flags spec* maps label → threshold in [0, 1]. For every ok frame the engine scores each flagged
label on its own and keeps those whose score is at least the label's threshold (several labels can
be flagged at once: multi-label). It lives in a model bundle's spec ``options["flags"]``, together
with ``options["flag_score"]`` which says how a label's score is computed:

- ``sigmoid``: ``sigmoid(logit)`` of the label. Used for classifiers trained multi-label
  (transformers config ``problem_type == "multi_label_classification"``), whose labels are
  independent by construction: a frame can score 0.9 on two labels.
- ``softmax``: the label's probability as the engine computes it for the top-k labels (softmax over
  the model's label set; for CLIP-like models over the taxonomy, through the model's logit scale).
  Used for every other model. Each label is still compared with its own threshold, but the scores
  share one unit of probability mass, so thresholds for such models should be set lower, and two
  labels can only both pass thresholds that sum to at most 1.

Which of the two a model gets is its family's call (:meth:`udfs.families.ModelFamily.flag_score`),
made when the flags are attached and recorded in the spec.

Spark-free and torch-free: the registry job and the engine both use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping
from catalogfs.errors import FlagsError

FLAG_SCORE_SIGMOID = "sigmoid"
FLAG_SCORE_SOFTMAX = "softmax"
FLAG_SCORES = (FLAG_SCORE_SIGMOID, FLAG_SCORE_SOFTMAX)


def parse_flags(data: Any, *, source: str) -> dict[str, float]:
    """Check a ``{label: threshold}`` mapping; thresholds are numbers in [0, 1].

    ``source`` names where the mapping came from (a file, a spec) for the error message.
    """
    if not isinstance(data, Mapping) or not data:
        raise FlagsError(f"{source}: flags must be a non-empty mapping label: threshold, got {data!r}")
    flags: dict[str, float] = {}
    for label, threshold in data.items():
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise FlagsError(f"{source}: threshold of flag {label!r} must be a number in [0, 1], got {threshold!r}")
        value = float(threshold)
        if math.isnan(value) or not 0.0 <= value <= 1.0:
            raise FlagsError(f"{source}: threshold of flag {label!r} must be in [0, 1], got {threshold!r}")
        flags[str(label)] = value
    return flags


def check_flag_labels(flags: Mapping[str, float], labels: Iterable[str], *, source: str) -> None:
    """Refuse flags on labels the model does not produce."""
    known = set(labels)
    unknown = sorted(set(flags) - known)
    if unknown:
        shown = sorted(known)[:20]
        raise FlagsError(f"{source}: flags {unknown} are not labels of the model; its labels: "
                         f"{shown}{' …' if len(known) > 20 else ''}")


def load_flags_file(path: Path) -> dict[str, float]:
    """A YAML file of ``label: threshold`` lines (``catalogfs models register --flags FILE``).

    A file with a top-level ``flags:`` mapping (e.g. a taxonomy file) is accepted too.
    """
    data = _read_yaml(path)
    if isinstance(data, Mapping) and isinstance(data.get("flags"), Mapping):
        data = data["flags"]
    return parse_flags(data, source=str(path))


@dataclass(frozen=True)
class Taxonomy:
    """A zero-shot taxonomy: ``labels`` {label: [prompt, …]}, a ``version``, optional ``flags``."""

    version: str
    labels: dict[str, list[str]]
    flags: dict[str, float] = field(default_factory=dict)


def _packaged_taxonomy(path: Path) -> Path:
    if path.exists() or len(path.parts) > 1:
        return path
    from catalogfs.packaged import taxonomies_dir

    packaged = taxonomies_dir() / (path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml")
    return packaged if packaged.exists() else path


def load_taxonomy(path: Path) -> Taxonomy:
    """Read a taxonomy YAML file (format in ``conf/taxonomies/README.md``); a bare name that is not a
    file (``content_v1``) is a packaged taxonomy."""
    path = _packaged_taxonomy(Path(path))
    data = _read_yaml(path)
    if not isinstance(data, Mapping) or "version" not in data or not isinstance(data.get("labels"), Mapping):
        raise FlagsError(f"{path}: expected 'version' and 'labels: {{label: [prompts]}}'")
    unknown_keys = sorted(set(data) - {"version", "labels", "flags"})
    if unknown_keys:
        raise FlagsError(f"{path}: unknown keys {unknown_keys}; expected version, labels, flags")
    labels: dict[str, list[str]] = {}
    for label, prompts in data["labels"].items():
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise FlagsError(f"{path}: label {label!r} needs a non-empty list of prompt strings, got {prompts!r}")
        labels[str(label)] = list(prompts)
    flags: dict[str, float] = {}
    if data.get("flags") is not None:
        flags = parse_flags(data["flags"], source=f"{path}: flags")
        check_flag_labels(flags, labels, source=f"{path}: flags")
    return Taxonomy(version=str(data["version"]), labels=labels, flags=flags)


def _read_yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise FlagsError(f"{path}: cannot read YAML ({exc})") from exc
