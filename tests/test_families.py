"""Model families behind one protocol, and the bundle format they share: the registry, the typed
views of a spec's options, specs written by earlier versions. No Spark."""

import ast
import json
from pathlib import Path

import pytest

from catalogfs.udfs.bundle_format import BundleSpec, FlagSettings, read_spec, write_spec
from catalogfs.udfs.efficientnet_lite import EfficientNetLite0Options
from catalogfs.udfs.families import FAMILIES, family, serves_onnx_on_cpu
from catalogfs.udfs.hf_models import TransformersOptions
from catalogfs.udfs.model_bundle import bundle_labels, copy_with_flags, load_bundle
from catalogfs.errors import BundleError
from catalogfs.udfs.model_registry import bundle_metadata
from catalogfs.udfs.preprocess import PreprocessSpec

ROOT = Path(__file__).resolve().parent.parent

# A spec as the engine wrote it before families were plug-ins (a registered CLIP bundle with flags):
# it must still read, and write back byte for byte.
REGISTERED_CLIP_SPEC = """{
  "embedding_dim": 16,
  "family": "transformers",
  "format_version": 1,
  "label_set": "t-v1",
  "labels": "labels.txt",
  "metric": "cosine",
  "options": {
    "flag_score": "softmax",
    "flags": {
      "cat": 0.3
    },
    "kind": "clip",
    "model_type": "clip",
    "taxonomy": {
      "cat": [
        "a photo of a cat"
      ],
      "coffee": [
        "a cup of coffee"
      ]
    }
  },
  "preprocess": {
    "crop": 32,
    "interpolation": "bicubic",
    "long_side": "floor",
    "mean": [
      0.48145466,
      0.4578275,
      0.40821073
    ],
    "resize_shorter": 32,
    "std": [
      0.26862954,
      0.26130258,
      0.27577711
    ]
  },
  "weights": "model.safetensors"
}"""


def test_a_registered_spec_reads_into_typed_views_and_writes_back_unchanged(tmp_path):
    (tmp_path / "model_spec.json").write_text(REGISTERED_CLIP_SPEC)
    spec = read_spec(tmp_path)
    assert family(spec.family).options(spec) == TransformersOptions(
        kind="clip", model_type="clip", taxonomy={"cat": ["a photo of a cat"], "coffee": ["a cup of coffee"]})
    assert spec.flags == FlagSettings(thresholds={"cat": 0.3}, score="softmax")
    out = tmp_path / "again"
    out.mkdir()
    write_spec(out, spec)
    assert (out / "model_spec.json").read_text() == REGISTERED_CLIP_SPEC
    metadata = bundle_metadata(spec)
    assert (metadata["kind"], metadata["taxonomy_version"], metadata["flags"], metadata["flag_score"]) == (
        "clip", "t-v1", '{"cat": 0.3}', "softmax")


def test_unknown_families_are_refused_naming_the_known_ones(default_bundle, tmp_path):
    with pytest.raises(BundleError, match=r"unknown model family 'resnet'; known: \['efficientnet_lite0', 'transformers'\]"):
        family("resnet")
    spec = json.loads((default_bundle / "model_spec.json").read_text())
    (tmp_path / "model_spec.json").write_text(json.dumps({**spec, "family": "resnet"}))
    for attempt in (lambda: load_bundle(tmp_path), lambda: copy_with_flags(tmp_path, tmp_path / "c", {"x": 0.5})):
        with pytest.raises(BundleError, match=f"{tmp_path / 'model_spec.json'}: unknown model family 'resnet'"):
            attempt()
    assert not serves_onnx_on_cpu("resnet")  # a module built in memory (tests, benchmarks) runs on PyTorch


def test_every_family_is_registered_under_its_name_and_has_the_protocol():
    for name, member in FAMILIES.items():
        assert member.name == name and isinstance(member.serves_onnx_on_cpu, bool)
        for method in ("options", "build", "label_names", "flag_score"):
            assert callable(getattr(member, method)), (name, method)
    assert serves_onnx_on_cpu("efficientnet_lite0") and not serves_onnx_on_cpu("transformers")


def test_the_default_family_reads_its_labels_and_options(default_bundle):
    spec = read_spec(default_bundle)
    model = load_bundle(default_bundle)
    assert bundle_labels(default_bundle, spec) == model.labels and len(model.labels) == 1000
    assert family(spec.family).options(spec) == EfficientNetLite0Options()
    assert family(spec.family).flag_score(default_bundle, spec) == "softmax"
    assert spec.flags == FlagSettings() and bundle_metadata(spec)["kind"] == "efficientnet_lite0"


def test_with_flags_keeps_the_other_options():
    spec = BundleSpec("transformers", 8, PreprocessSpec(), "", options={"kind": "clip"})
    flagged = spec.with_flags({"cat": 0.5}, "sigmoid")
    assert flagged.options == {"kind": "clip", "flags": {"cat": 0.5}, "flag_score": "sigmoid"}
    assert spec.options == {"kind": "clip"}  # the original is unchanged


def test_no_code_branches_on_a_family_name():
    """What depends on the family is asked of the family (udfs.families), never `spec.family == "…"`."""
    found = []
    for package in ("udfs", "features", "jobs", "expectations"):
        for path in sorted((ROOT / package).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Compare):
                    operands = [node.left, *node.comparators]
                    names_family = any(isinstance(o, ast.Attribute) and o.attr == "family" for o in operands)
                    if names_family and any(isinstance(o, (ast.Constant, ast.Tuple, ast.List, ast.Set, ast.Name))
                                            for o in operands if not isinstance(o, ast.Attribute)):
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not found, found
