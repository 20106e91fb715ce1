"""transformers vision models as engine modules: CLIP/SigLIP, ViT-style classifiers, plain encoders.

A transformers bundle holds the model's own ``save_pretrained`` folder under ``hf/`` (safetensors
weights only; ``trust_remote_code`` is never enabled) and a spec whose ``options`` say:

- ``kind``: ``clip`` (CLIP, SigLIP: the projected image embedding; zero-shot labels against
  ``taxonomy``), ``classifier`` (``*ForImageClassification``: the CLS hidden state; labels from
  ``id2label``) or ``encoder`` (ViT, DINOv2: ``pooler_output``, else the CLS token; no labels).
- ``taxonomy`` (clip only): ``{label: [prompt, …]}``. Each label's text embedding is the
  re-normalised mean of its prompts' embeddings (prompt ensembling); scores are the softmax of the
  model's own logit scale times the cosine.
- ``flags`` (optional): ``{label: threshold}`` moderation-style flags on the model's labels, and
  ``flag_score``: ``sigmoid`` for multi-label classifiers, else ``softmax`` (see :mod:`udfs.flags`).

Read through :class:`TransformersOptions`; the family itself is :data:`FAMILY` (see
:mod:`udfs.families`).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from catalogfs.udfs.bundle_format import BundleSpec, write_spec
from catalogfs.udfs.flags import FLAG_SCORE_SIGMOID, FLAG_SCORE_SOFTMAX, check_flag_labels, parse_flags
from catalogfs.udfs.label_scores import zero_shot_logits
from catalogfs.udfs.preprocess import PreprocessSpec

HF_DIR = "hf"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


@dataclass(frozen=True)
class TransformersOptions:
    """The typed view of a transformers bundle's ``spec.options`` (flags aside: those are
    :attr:`udfs.bundle_format.BundleSpec.flags`)."""

    kind: str = "encoder"  # clip / classifier / encoder
    model_type: str = ""  # the transformers config's model_type, for the record
    taxonomy: dict[str, list[str]] = field(default_factory=dict)  # clip only: {label: [prompt, …]}

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> "TransformersOptions":
        return cls(kind=str(options.get("kind", "encoder")), model_type=str(options.get("model_type", "")),
                   taxonomy=dict(options.get("taxonomy") or {}))

    def to_options(self) -> dict[str, Any]:
        """As stored in the spec (``taxonomy`` only when there is one)."""
        options: dict[str, Any] = {"kind": self.kind, "model_type": self.model_type}
        if self.taxonomy:
            options["taxonomy"] = self.taxonomy
        return options


def _first(output: Any) -> torch.Tensor:
    """transformers 5 returns output objects from get_*_features; older versions plain tensors."""
    return output.pooler_output if hasattr(output, "pooler_output") else output


class TransformersVision(nn.Module):
    """forward(pixel_values) → (embedding, logits) for one of the kinds above."""

    def __init__(self, model: nn.Module, kind: str, text_embeddings: torch.Tensor | None = None,
                 logit_scale: float | None = None) -> None:
        super().__init__()
        self.model, self.kind = model, kind
        self.register_buffer("text_embeddings", text_embeddings if text_embeddings is not None else torch.zeros(0, 1))
        self.logit_scale = logit_scale

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        x = x.contiguous()  # patch embeddings want plain layout
        if self.kind == "clip":
            pooled = _first(self.model.get_image_features(pixel_values=x))
            if self.text_embeddings.shape[0]:
                assert self.logit_scale is not None, "text embeddings come with their logit scale"
                return pooled, zero_shot_logits(pooled, self.text_embeddings, self.logit_scale)
            return pooled, pooled.new_zeros(pooled.shape[0], 0)
        if self.kind == "classifier":
            out = self.model(pixel_values=x, output_hidden_states=True)
            return out.hidden_states[-1][:, 0], out.logits
        out = self.model(pixel_values=x)
        pooled = getattr(out, "pooler_output", None)
        pooled = out.last_hidden_state[:, 0] if pooled is None else pooled
        return pooled, pooled.new_zeros(pooled.shape[0], 0)


def _refuse_pickles(hf_dir: Path) -> None:
    if not any(hf_dir.glob("*.safetensors")):
        pickles = [p.name for p in hf_dir.iterdir() if p.suffix in PICKLE_SUFFIXES]
        raise ValueError(f"{hf_dir}: no safetensors weights" + (f" (refusing pickle files {pickles})" if pickles else ""))


def infer_kind(config: Mapping[str, Any]) -> str:
    architectures = config.get("architectures") or []
    model_type = config.get("model_type", "")
    if model_type in ("clip", "siglip", "siglip2") or any(a in ("CLIPModel", "SiglipModel") for a in architectures):
        return "clip"
    if any(a.endswith("ForImageClassification") for a in architectures):
        return "classifier"
    return "encoder"


def embedding_dim(config: Mapping[str, Any], kind: str) -> int:
    if kind == "clip":
        return int(config.get("projection_dim") or config.get("vision_config", {}).get("hidden_size"))
    return int(config.get("hidden_size") or config.get("vision_config", {}).get("hidden_size"))


def text_embeddings(model: nn.Module, tokenizer, taxonomy: Mapping[str, list[str]]) -> torch.Tensor:
    """One unit vector per label: the re-normalised mean of its prompts' text embeddings."""
    rows = []
    with torch.inference_mode():
        for prompts in taxonomy.values():
            tokens = tokenizer(list(prompts), padding=True, return_tensors="pt")
            emb = nn.functional.normalize(_first(model.get_text_features(**tokens)).float(), dim=-1)
            rows.append(nn.functional.normalize(emb.mean(dim=0), dim=-1))
    return torch.stack(rows)


def load_transformers_module(directory: Path, spec: BundleSpec) -> tuple[nn.Module, list[str]]:
    """Build the engine module of a transformers bundle (safetensors only, no remote code)."""
    from transformers import AutoModel, AutoModelForImageClassification, AutoTokenizer

    hf_dir = Path(directory) / HF_DIR
    _refuse_pickles(hf_dir)
    options = TransformersOptions.from_options(spec.options)
    kind = options.kind
    loader = AutoModelForImageClassification if kind == "classifier" else AutoModel
    model = loader.from_pretrained(str(hf_dir), trust_remote_code=False, use_safetensors=True,
                                   local_files_only=True).eval()
    if kind == "classifier":
        id2label = model.config.id2label
        return TransformersVision(model, kind), [str(id2label[i]) for i in range(len(id2label))]
    if kind == "clip" and options.taxonomy:
        tokenizer = AutoTokenizer.from_pretrained(str(hf_dir), trust_remote_code=False, local_files_only=True)
        texts, scale = zero_shot_head(model, tokenizer, options.taxonomy)
        return TransformersVision(model, kind, texts, scale), list(options.taxonomy)
    return TransformersVision(model, kind), []


def zero_shot_head(model: nn.Module, tokenizer, taxonomy: Mapping[str, list[str]]) -> tuple[torch.Tensor, float]:
    """What zero-shot labels over ``taxonomy`` need from a CLIP-like model, from its text tower
    only: the labels' unit text embeddings (:func:`text_embeddings`) and the model's logit scale
    (``exp(logit_scale)``; 100 for a model without one)."""
    texts = text_embeddings(model, tokenizer, taxonomy)
    scale = float(model.logit_scale.detach().exp()) if hasattr(model, "logit_scale") else 100.0
    return texts, scale


def load_text_tower(directory: Path) -> tuple[nn.Module, Any]:
    """The model and tokenizer of a transformers bundle folder, for text embeddings (nothing of the
    image tower runs; its weights load with the model). Safetensors only, no remote code."""
    from transformers import AutoModel, AutoTokenizer

    hf_dir = Path(directory) / HF_DIR
    _refuse_pickles(hf_dir)
    model = AutoModel.from_pretrained(str(hf_dir), trust_remote_code=False, use_safetensors=True,
                                      local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir), trust_remote_code=False, local_files_only=True)
    return model, tokenizer


def declared_labels(config: Mapping[str, Any], kind: str, taxonomy: Mapping[str, list[str]] | None) -> list[str]:
    """The labels a bundle of this kind will produce: the taxonomy's (clip), ``id2label`` (classifier)."""
    if kind == "clip":
        return list(taxonomy or {})
    if kind == "classifier":
        id2label = config.get("id2label") or {}
        return [str(id2label[k]) for k in sorted(id2label, key=int)]
    return []


def flag_score_mode(config: Mapping[str, Any], kind: str) -> str:
    """``sigmoid`` for multi-label classifiers (by their config's ``problem_type``), else ``softmax``."""
    if kind == "classifier" and config.get("problem_type") == "multi_label_classification":
        return FLAG_SCORE_SIGMOID
    return FLAG_SCORE_SOFTMAX


def write_transformers_bundle(hf_source: Path, directory: Path, *, taxonomy: Mapping[str, list[str]] | None = None,
                              taxonomy_version: str = "", kind: str | None = None,
                              flags: Mapping[str, float] | None = None) -> Path:
    """Make a bundle from a ``save_pretrained`` folder; refuses folders with pickle weights only.

    ``flags`` ({label: threshold}, see :mod:`udfs.flags`) must name labels the bundle produces; the
    flag scores are sigmoids for multi-label classifiers, softmax probabilities otherwise.
    """
    hf_source = Path(hf_source)
    _refuse_pickles(hf_source)
    config = json.loads((hf_source / "config.json").read_text())
    kind = kind or infer_kind(config)
    processor = hf_source / "preprocessor_config.json"
    if not processor.exists():
        raise ValueError(f"{hf_source}: no preprocessor_config.json (save the image processor with the model)")
    preprocess = PreprocessSpec.from_hf_processor(json.loads(processor.read_text()))
    zero_shot = kind == "clip" and bool(taxonomy)
    options = TransformersOptions(kind=kind, model_type=config.get("model_type", ""), taxonomy=(
        {str(k): [str(p) for p in v] for k, v in taxonomy.items()} if zero_shot and taxonomy else {}))
    label_set = ""
    if zero_shot:
        label_set = taxonomy_version or "taxonomy"
    elif kind == "classifier":
        label_set = f"{config.get('model_type', 'model')}-id2label"
    if flags:
        flags = parse_flags(flags, source=f"{hf_source}: flags")
        check_flag_labels(flags, declared_labels(config, kind, taxonomy), source=f"{hf_source}: flags")
    spec = BundleSpec(family=FAMILY.name, embedding_dim=embedding_dim(config, kind), preprocess=preprocess,
                      label_set=label_set, options=options.to_options())
    if flags:
        spec = spec.with_flags(flags, flag_score_mode(config, kind))
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copytree(hf_source, directory / HF_DIR, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(*(f"*{s}" for s in PICKLE_SUFFIXES)))
    write_spec(directory, spec)
    return directory


def _hf_config(directory: Path) -> dict[str, Any]:
    """The transformers config of the bundle folder ``directory``."""
    return json.loads((Path(directory) / HF_DIR / "config.json").read_text())


class TransformersFamily:
    """The ``transformers`` family (:class:`udfs.families.ModelFamily`)."""

    name = "transformers"
    serves_onnx_on_cpu = False  # not checked to export exactly: PyTorch serves it

    def options(self, spec: BundleSpec) -> TransformersOptions:
        return TransformersOptions.from_options(spec.options)

    def build(self, directory: Path, spec: BundleSpec) -> tuple[nn.Module, list[str]]:
        return load_transformers_module(directory, spec)

    def label_names(self, directory: Path, spec: BundleSpec) -> list[str]:
        options = self.options(spec)
        return declared_labels(_hf_config(directory), options.kind, options.taxonomy)

    def flag_score(self, directory: Path, spec: BundleSpec) -> str:
        return flag_score_mode(_hf_config(directory), self.options(spec).kind)


FAMILY = TransformersFamily()
