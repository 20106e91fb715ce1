"""Re-label a CLIP-like space from its stored vectors with a new taxonomy (or new flag thresholds):
no image forward pass; validated and published like any run, with its own lineage row.

    catalogfs relabel --taxonomy conf/taxonomies/content_v2.yaml [--space SPACE] [--dry-run]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from catalogfs.config import Config
from catalogfs.tracking import job_run
from catalogfs.features.relabel import RelabelResult, relabel_space
from catalogfs.jobs.job_main import run_main


def run(spark, cfg: Config, *, taxonomy: Path, space: str | None = None, dry_run: bool = False) -> RelabelResult:
    """Re-label ``space`` (default: the current space) with the taxonomy file ``taxonomy``."""
    import mlflow
    from mlflow import MlflowClient

    with job_run(cfg, "relabel") as run_info:
        mlflow.set_tag("taxonomy_file", str(taxonomy))
        result = relabel_space(spark, cfg, space, taxonomy, run_id=run_info.info.run_id, client=MlflowClient(),
                               dry_run=dry_run)
        mlflow.set_tags({"embedding_space": result.space.id, "taxonomy_version": result.space.taxonomy_version,
                         "validation": "passed", "dry_run": str(dry_run).lower()})
        mlflow.log_metrics({"frames_relabelled": result.frames_relabelled, "videos_relabelled": result.videos_relabelled,
                            "videos_with_new_labels": result.videos_with_new_labels, "image_forward_passes": 0})
        for table, version in result.table_versions.items():
            mlflow.set_tag(f"delta.{table}.version", str(version))
    return result


def print_result(result: RelabelResult, cfg: Config) -> None:
    was = ", ".join(result.previous_taxonomies) or "none"
    print(f"relabel: space {result.space.id}: taxonomy {was} → {result.space.taxonomy_version}: "
          f"{result.videos_relabelled} videos relabelled ({result.frames_relabelled} frames), "
          f"labels changed for {result.videos_with_new_labels} videos; "
          f"image forward passes {result.image_forward_passes}; {result.seconds:.1f} s")
    if result.dry_run:
        print("relabel: dry run: nothing published")
    else:
        print(f"relabel: published; table versions {result.table_versions}")
    if result.validation is not None:
        print(f"relabel: validation {result.validation.summary}; report: {result.report_dir}")


def _arguments(parser) -> None:
    parser.add_argument("--taxonomy", type=Path, required=True, metavar="FILE",
                        help="taxonomy YAML (version, labels {label: [prompts]}, optional flags), "
                             "see conf/taxonomies/README.md")
    parser.add_argument("--space", default=None, help="embedding space id (default: the current space)")
    parser.add_argument("--dry-run", action="store_true",
                        help="compute and validate the new labels, print the summary, publish nothing")


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, argv, prog="relabel", description=__doc__, report=print_result, configure=_arguments)


if __name__ == "__main__":
    sys.exit(main())
