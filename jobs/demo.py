"""Job: the whole pipeline on the embedded default, then a summary a new user can act on.

    catalogfs demo            (what `make demo` runs)

Sample videos → frames → EfficientNet-Lite0 embeddings and ImageNet labels → validated, published
Delta tables; prints videos, frames, the embedding space, table versions, each video's top labels,
where the tables live and SQL to paste.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Sequence

from catalogfs.config import Config
from catalogfs.jobs.job_main import run_main
from catalogfs.features.embedding_run import EmbedResult
from catalogfs.features.tables import FRAMES, VIDEO_LABELS
from catalogfs.jobs import embed_frames, extract_frames, make_sample_videos
from catalogfs.statuses import Status


@dataclass
class DemoResult:
    extract: extract_frames.ExtractResult
    embed: EmbedResult
    top_labels: dict[str, list[tuple[str, float]]]
    n_frames: int


def run(spark, cfg: Config) -> DemoResult:
    make_sample_videos.run(cfg)
    extracted = extract_frames.run(spark, cfg, input=str(cfg.storage.samples_dir))
    embedded = embed_frames.run(spark, cfg)
    q = cfg.storage.qualified
    rows = spark.sql(
        f"SELECT video_id, label, score FROM {q(VIDEO_LABELS.name)} "
        f"WHERE embedding_space = '{embedded.space.id}' AND rank <= 3 ORDER BY video_id, rank").collect()
    top: dict[str, list[tuple[str, float]]] = {}
    for r in rows:
        top.setdefault(r["video_id"], []).append((r["label"], float(r["score"])))
    n_frames = spark.table(q(FRAMES.name)).where(f"status = '{Status.OK}'").count()
    return DemoResult(extract=extracted, embed=embedded, top_labels=top, n_frames=n_frames)


def print_summary(result: DemoResult, cfg: Config) -> None:
    storage = cfg.storage
    db = storage.schema_name
    emb = result.embed
    print()
    print("=" * 78)
    print("catalogfs demo: done")
    print("=" * 78)
    print(f"videos           {result.extract.publish.videos} "
          f"(frame statuses: {result.extract.publish.status_counts})")
    print(f"frames (ok)      {result.n_frames}")
    print(f"embedding space  {emb.space.id}  ({emb.space.dim}-d, {emb.space.metric})")
    print(f"this run         {emb.frames_embedded} frames embedded, {emb.forward_passes} forward passes"
          + (f", validation {emb.validation.summary}" if emb.validation else ", nothing new to validate"))
    print("table versions   " + ", ".join(f"{t}=v{v}" for t, v in sorted(emb.table_versions.items())))
    print(f"tables live in   {storage.warehouse_dir / (storage.database + '.db')}")
    print(f"run report       {emb.report_html}")
    if emb.report_dir:
        print(f"validation report {emb.report_dir}")
        if emb.validation and emb.validation.data_docs:
            print(f"Data Docs (HTML) {emb.validation.data_docs}")
    print("\ntop labels per video:")
    for video_id, labels in sorted(result.top_labels.items()):
        shown = "; ".join(f"{label} ({score:.2f})" for label, score in labels)
        print(f"  {video_id:<16} {shown}")
    print("\nSQL to try (catalogfs sql \"...\" or any Spark session with this catalog):")
    print(f"  SELECT video_id, label, score FROM {db}.video_labels WHERE rank = 1 ORDER BY score DESC;")
    print(f"  SELECT video_id, n_frames, size(embedding) AS dim FROM {db}.video_embeddings "
          f"WHERE embedding_space = '{emb.space.id}';")
    print(f"  SELECT embedding_space, model_name, model_version, status, table_versions "
          f"FROM {db}.feature_versions ORDER BY finished_at DESC;")
    print()


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, argv, prog="demo", description=__doc__, report=print_summary)


if __name__ == "__main__":
    sys.exit(main())
