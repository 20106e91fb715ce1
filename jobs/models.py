"""The model registry: register a model, move an alias, list versions.

    catalogfs models register --from DIR --name NAME [--alias challenger] [--taxonomy conf/taxonomies/x.yaml]
                              [--flags flags.yaml]
    catalogfs models promote NAME VERSION [--alias champion]   (move an alias to a version; moving
                                                               the serving alias model.name@model.alias
                                                               makes the next embed run serve it)
    catalogfs models alias NAME VERSION ALIAS                  (the same, alias given positionally)
    catalogfs models list [NAME]

DIR is a model bundle folder, or a transformers ``save_pretrained`` folder (CLIP, SigLIP, ViT,
DINOv2 …; safetensors weights and preprocessor_config.json) that is turned into one. Flags
(moderation-style, label → threshold) come from the taxonomy's ``flags:`` section for CLIP-like
models, or from ``--flags FILE`` (YAML ``label: threshold``) for any model with labels. The embed
job uses ``models:/<model.name>@<model.alias>``, or ``--model NAME@ALIAS``.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from catalogfs.config import Config
from catalogfs.errors import ConfigError, InputError


def _bundle_from(source: Path, taxonomy_file: Path | None, workdir: Path, flags_file: Path | None = None) -> Path:
    from catalogfs.udfs.flags import load_flags_file, load_taxonomy
    from catalogfs.udfs.hf_models import write_transformers_bundle
    from catalogfs.udfs.model_bundle import SPEC_FILE, copy_with_flags

    taxonomy = load_taxonomy(taxonomy_file) if taxonomy_file else None  # FlagsError is a ConfigError
    flags = load_flags_file(flags_file) if flags_file else None
    if flags and taxonomy is not None and taxonomy.flags:
        raise ConfigError(f"flags given twice: in {taxonomy_file} and with --flags {flags_file}; keep one")
    flags = flags or (taxonomy.flags if taxonomy is not None else None)
    if (source / SPEC_FILE).exists():
        if taxonomy is not None:
            raise InputError(f"{source} is a model bundle already: --taxonomy applies to transformers folders")
        try:
            return copy_with_flags(source, workdir / "bundle", flags) if flags else source
        except ValueError as exc:
            raise InputError(str(exc)) from exc
    if not (source / "config.json").exists():
        raise InputError(f"{source}: neither a model bundle ({SPEC_FILE}) nor a transformers folder (config.json)")
    try:
        return write_transformers_bundle(source, workdir / "bundle",
                                         taxonomy=taxonomy.labels if taxonomy else None,
                                         taxonomy_version=taxonomy.version if taxonomy else "", flags=flags)
    except ValueError as exc:
        raise InputError(str(exc)) from exc


def describe_version(name: str, version: str, tags: dict[str, str], aliases: list[str]) -> str:
    """One line of ``models list``: metadata and signature recorded at registration."""
    from mlflow.models.signature import ModelSignature

    parts = [f"{name} v{version}", f"family={tags.get('family', '?')}"]
    if tags.get("kind") and tags.get("kind") != tags.get("family"):
        parts.append(f"kind={tags['kind']}")
    parts += [f"dim={tags.get('embedding_dim', '?')}", f"preprocess={tags.get('preprocess_hash', '?')}",
              f"labels={tags.get('label_set') or '-'}"]
    if tags.get("taxonomy_version"):
        parts.append(f"taxonomy={tags['taxonomy_version']}")
    if tags.get("flags"):
        try:
            flags = ",".join(f"{k}>={v:g}" for k, v in json.loads(tags["flags"]).items())
        except (ValueError, AttributeError, TypeError):
            flags = tags["flags"]
        parts.append(f"flags={flags} ({tags.get('flag_score', '?')})")
    if tags.get("signature_inputs") and tags.get("signature_outputs"):
        sig = ModelSignature.from_dict({"inputs": tags["signature_inputs"], "outputs": tags["signature_outputs"]})
        parts.append(f"signature=({_columns(sig.inputs)}) -> ({_columns(sig.outputs)})")
    parts.append(f"aliases={','.join(aliases) or '-'}")
    return " ".join(parts)


def _columns(schema) -> str:
    """``name:type, …`` of an MLflow schema (arrays as ``array<item>``)."""
    def type_name(spec) -> str:
        data = spec.to_dict()
        return f"array<{data['items']['type']}>" if data.get("type") == "array" else str(data.get("type"))

    return ", ".join(f"{col.name}:{type_name(col)}" for col in schema.inputs)


def run_registry(cfg: Config, *, action: str, args: list[str], source: Path | None = None, name: str | None = None,
                 alias: str | None = None, taxonomy: Path | None = None, flags: Path | None = None) -> list[str]:
    """Run one registry action (register, promote, alias, list); returns the lines to print."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from catalogfs.tracking import configure_mlflow
    from catalogfs.udfs.model_registry import describe_registry, is_not_found, register_bundle, registry_call, set_alias

    experiment_id = configure_mlflow(cfg)
    client = MlflowClient()
    if action == "register":
        if source is None or not name:
            raise InputError("register needs --from DIR and --name NAME")
        with tempfile.TemporaryDirectory(prefix="catalogfs-register-") as tmp:
            version = register_bundle(client, name, _bundle_from(source, taxonomy, Path(tmp), flags), alias=alias,
                                      experiment_id=experiment_id)
        return [f"registered {name} version {version}" + (f" with alias {alias}" if alias else "")]
    if action in ("promote", "alias"):
        if action == "promote" and len(args) == 2:
            args = [*args, alias or "champion"]
        if len(args) != 3:
            raise InputError("promote needs NAME VERSION [--alias ALIAS] (alias: NAME VERSION ALIAS)")
        model_name, version, target = args
        try:
            registry_call(client.get_model_version, model_name, version, what=f"reading models:/{model_name}/{version}")
        except MlflowException as exc:
            if not is_not_found(exc):
                raise
            raise InputError(f"models:/{model_name}/{version} is not in the registry: "
                             f"{describe_registry(client, model_name)}") from None
        set_alias(client, model_name, target, version)
        lines = [f"{model_name}@{target} → version {version}"]
        if (model_name, target) == (cfg.model.name, cfg.model.alias):  # the serving alias
            lines.append(f"the scheduled `catalogfs embed` now maintains version {version}; the current_* views "
                         f"switch to its space when that run has published it (validated)")
        return lines
    lines = []
    for model in client.search_registered_models():
        if args and model.name not in args:
            continue
        aliases = {}
        for a, v in (model.aliases or {}).items():
            aliases.setdefault(str(v), []).append(a)
        for mv in client.search_model_versions(f"name='{model.name}'"):
            lines.append(describe_version(model.name, str(mv.version), dict(mv.tags or {}),
                                          aliases.get(str(mv.version), [])))
    return sorted(lines)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    from catalogfs.errors import EXIT_CONFIG, EXIT_OK, CatalogfsError
    from catalogfs.jobs.job_main import add_common_arguments, config_from_args, setup_logging

    parser = argparse.ArgumentParser(prog="catalogfs models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("action", choices=["register", "promote", "alias", "list"])
    parser.add_argument("args", nargs="*")
    parser.add_argument("--from", dest="source", type=Path)
    parser.add_argument("--name")
    parser.add_argument("--alias", help="register: alias to give the new version; promote: alias to move "
                                        "(default champion)")
    parser.add_argument("--taxonomy", type=Path,
                        help="YAML: version + labels {label: [prompts]} [+ flags {label: threshold}] (CLIP-like zero-shot)")
    parser.add_argument("--flags", type=Path, help="YAML: {label: threshold} moderation-style flags on the model's labels")
    ns = parser.parse_args(argv)
    setup_logging(ns.log_level, ns.quiet)
    try:
        cfg = config_from_args(ns)
        if ns.check:
            return EXIT_OK
        for line in run_registry(cfg, action=ns.action, args=ns.args, source=ns.source, name=ns.name,
                                 alias=ns.alias, taxonomy=ns.taxonomy, flags=ns.flags):
            print(line)
        return EXIT_OK
    except ConfigError as exc:
        print(f"catalogfs models: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except CatalogfsError as exc:  # missing input, unknown model, registry down: each has its exit code
        print(f"catalogfs models: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
