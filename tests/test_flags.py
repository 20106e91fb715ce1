"""Moderation-style flags: the spec and taxonomy formats, and the engine's per-label thresholds on a
stub model whose scores are known exactly (no Spark, no MLflow)."""

import io
import math

import pytest
import torch
from PIL import Image

from catalogfs.udfs.engine import EmbeddingEngine, EngineOptions
from catalogfs.errors import BundleError, FlagsError
from catalogfs.udfs.flags import load_flags_file, load_taxonomy, parse_flags
from catalogfs.udfs.model_bundle import BundleSpec, LoadedModel
from catalogfs.udfs.preprocess import PreprocessSpec

LABELS = ["bright", "dark", "neutral"]


class _Brightness(torch.nn.Module):
    """logits = (4b, -4b, 0) where b is the frame's mean normalised pixel (white 1, black -1)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        b = x.float().mean(dim=(1, 2, 3))
        return x.float().mean(dim=(2, 3)), torch.stack([4 * b, -4 * b, torch.zeros_like(b)], dim=1)


def _engine(flags=None, flag_score="softmax") -> EmbeddingEngine:
    options = {"flags": flags, "flag_score": flag_score} if flags else {}
    spec = BundleSpec("stub", 3, PreprocessSpec(32, 32), "brightness-v1", options=options)
    return EmbeddingEngine(LoadedModel(spec=spec, module=_Brightness(), labels=LABELS),
                           EngineOptions(batch_size=2, top_k=3))


def _solid(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 40), (value, value, value)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


WHITE, BLACK, GRAY = _solid(255), _solid(0), _solid(128)
THRESHOLDS = {"bright": 0.9, "dark": 0.9, "neutral": 0.45}


def _sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def test_sigmoid_flags_are_independent_per_label():
    result = _engine(THRESHOLDS, "sigmoid").embed([WHITE, BLACK, GRAY, b"not an image"])
    # white: bright σ(4)=.982 and neutral σ(0)=.5 both pass; black: dark and neutral; gray: neutral only.
    assert result.flags == [["bright", "neutral"], ["dark", "neutral"], ["neutral"], None]
    assert result.flag_scores[0] == pytest.approx([_sigmoid(4), 0.5], abs=1e-4)
    assert result.flag_scores[1] == pytest.approx([_sigmoid(4), 0.5], abs=1e-4)
    assert result.flag_scores[3] is None and result.statuses[3] == "undecodable_image"


def test_softmax_flags_share_the_probability_mass():
    result = _engine(THRESHOLDS, "softmax").embed([WHITE, BLACK, GRAY])
    # Softmax of (4, -4, 0): bright .982, neutral .018 — neutral no longer passes; gray is 1/3 each.
    assert result.flags == [["bright"], ["dark"], []]
    expected = math.exp(4) / (math.exp(4) + math.exp(-4) + 1)
    assert result.flag_scores[0] == pytest.approx([expected], abs=1e-4)
    assert result.flag_scores[2] == []
    # The flag score is the label's probability, as in the top-k labels.
    assert dict(zip(result.label_names[0], result.label_scores[0]))["bright"] == pytest.approx(
        result.flag_scores[0][0], abs=1e-6)


def test_a_threshold_is_inclusive_and_flags_are_best_first():
    result = _engine({"neutral": 0.5, "bright": 0.0}, "sigmoid").embed([BLACK])
    assert result.flags == [["neutral", "bright"]]  # σ(0) = 0.5 reaches 0.5; σ(-4) > 0 = its threshold


def test_models_without_flags_give_null_flags():
    result = _engine().embed([WHITE, b""])
    assert result.flags == [None, None] and result.flag_scores == [None, None]
    assert result.statuses == ["ok", "empty_image"]


def test_flags_on_unknown_labels_are_refused_at_load():
    with pytest.raises(BundleError, match="violence"):
        _engine({"violence": 0.5})


@pytest.mark.parametrize("data, message", [
    ({}, "non-empty mapping"),
    ({"a": 1.5}, r"in \[0, 1\]"),
    ({"a": "high"}, "must be a number"),
    ({"a": True}, "must be a number"),
    ({"a": float("nan")}, r"in \[0, 1\]"),
])
def test_bad_flags_specs_are_refused(data, message):
    with pytest.raises(FlagsError, match=message):
        parse_flags(data, source="flags.yaml")


def test_flags_file_and_taxonomy_with_flags(tmp_path):
    flags = tmp_path / "flags.yaml"
    flags.write_text("violence: 0.8\nnudity: 0.25\n")
    assert load_flags_file(flags) == {"violence": 0.8, "nudity": 0.25}

    taxonomy = tmp_path / "t.yaml"
    taxonomy.write_text("version: mod-v1\nlabels:\n  weapon: [a gun, a knife]\n  safe: a landscape\n"
                        "flags:\n  weapon: 0.3\n")
    loaded = load_taxonomy(taxonomy)
    assert (loaded.version, loaded.labels, loaded.flags) == (
        "mod-v1", {"weapon": ["a gun", "a knife"], "safe": ["a landscape"]}, {"weapon": 0.3})
    taxonomy.write_text("version: mod-v1\nlabels:\n  weapon: [a gun]\nflags:\n  gore: 0.3\n")
    with pytest.raises(FlagsError, match="gore"):
        load_taxonomy(taxonomy)


def test_shipped_taxonomies_load():
    from catalogfs.config import DEFAULT_CONF_DIR

    moderation = load_taxonomy(DEFAULT_CONF_DIR / "taxonomies" / "moderation_v1.yaml")
    assert moderation.flags and set(moderation.flags) <= set(moderation.labels)
    assert not load_taxonomy(DEFAULT_CONF_DIR / "taxonomies" / "content_v1.yaml").flags
