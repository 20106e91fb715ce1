"""The model registry: register a model, move an alias, list versions.

    catalogfs models register --from DIR --name NAME [--alias challenger] [--taxonomy conf/taxonomies/x.yaml]
    catalogfs models alias NAME VERSION ALIAS          (e.g. promote a challenger to champion)
    catalogfs models list [NAME]

DIR is a model bundle folder, or a transformers ``save_pretrained`` folder (CLIP, SigLIP, ViT,
DINOv2 …; safetensors weights and preprocessor_config.json) that is turned into one. The embed job
uses ``models:/<model.name>@<model.alias>``, or ``--model NAME@ALIAS``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Sequence

import yaml

from catalogfs.config import Config, ConfigError
from catalogfs.job_main import InputError, run_main


def _bundle_from(source: Path, taxonomy_file: Path | None, workdir: Path) -> Path:
    from udfs.hf_models import write_transformers_bundle
    from udfs.model_bundle import SPEC_FILE

    if (source / SPEC_FILE).exists():
        return source
    if not (source / "config.json").exists():
        raise InputError(f"{source}: neither a model bundle ({SPEC_FILE}) nor a transformers folder (config.json)")
    taxonomy, version = None, ""
    if taxonomy_file:
        try:
            data = yaml.safe_load(taxonomy_file.read_text())
            taxonomy, version = data["labels"], str(data["version"])
        except (OSError, KeyError, TypeError, yaml.YAMLError) as exc:
            raise ConfigError(f"{taxonomy_file}: expected 'version' and 'labels: {{label: [prompts]}}' ({exc})") from exc
    try:
        return write_transformers_bundle(source, workdir / "bundle", taxonomy=taxonomy, taxonomy_version=version)
    except ValueError as exc:
        raise InputError(str(exc)) from exc


def run_registry(cfg: Config, *, action: str, args: list[str], source: Path | None = None, name: str | None = None,
                 alias: str | None = None, taxonomy: Path | None = None) -> list[str]:
    from mlflow import MlflowClient

    from catalogfs.tracking import configure_mlflow
    from udfs.model_registry import register_bundle

    experiment_id = configure_mlflow(cfg)
    client = MlflowClient()
    if action == "register":
        if source is None or not name:
            raise InputError("register needs --from DIR and --name NAME")
        with tempfile.TemporaryDirectory(prefix="catalogfs-register-") as tmp:
            version = register_bundle(client, name, _bundle_from(source, taxonomy, Path(tmp)), alias=alias,
                                      experiment_id=experiment_id)
        return [f"registered {name} version {version}" + (f" with alias {alias}" if alias else "")]
    if action == "alias":
        if len(args) != 3:
            raise InputError("alias needs NAME VERSION ALIAS")
        client.set_registered_model_alias(args[0], args[2], args[1])
        return [f"{args[0]}@{args[2]} → version {args[1]}"]
    lines = []
    for model in client.search_registered_models():
        if args and model.name not in args:
            continue
        aliases = {}
        for a, v in (model.aliases or {}).items():
            aliases.setdefault(str(v), []).append(a)
        for mv in client.search_model_versions(f"name='{model.name}'"):
            tags = mv.tags or {}
            lines.append(f"{model.name} v{mv.version} family={tags.get('family', '?')} "
                         f"dim={tags.get('embedding_dim', '?')} aliases={','.join(aliases.get(str(mv.version), [])) or '-'}")
    return sorted(lines)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    from catalogfs.job_main import EXIT_CONFIG, EXIT_INPUT, EXIT_OK, add_common_arguments, config_from_args, setup_logging

    parser = argparse.ArgumentParser(prog="catalogfs models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("action", choices=["register", "alias", "list"])
    parser.add_argument("args", nargs="*")
    parser.add_argument("--from", dest="source", type=Path)
    parser.add_argument("--name")
    parser.add_argument("--alias")
    parser.add_argument("--taxonomy", type=Path, help="YAML: version + labels {label: [prompts]} (CLIP-like zero-shot)")
    ns = parser.parse_args(argv)
    setup_logging(ns.log_level, ns.quiet)
    try:
        cfg = config_from_args(ns)
        if ns.check:
            return EXIT_OK
        for line in run_registry(cfg, action=ns.action, args=ns.args, source=ns.source, name=ns.name,
                                 alias=ns.alias, taxonomy=ns.taxonomy):
            print(line)
        return EXIT_OK
    except ConfigError as exc:
        print(f"catalogfs models: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except InputError as exc:
        print(f"catalogfs models: {exc}", file=sys.stderr)
        return EXIT_INPUT


if __name__ == "__main__":
    sys.exit(main())
