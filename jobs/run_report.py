"""The HTML report of an embed run: counts, timings, validation, a 2-D map of the videos, a contact
sheet of frames per label. Written to ``<data_root>/reports/<run_id>/report.html`` with its PNGs."""

from __future__ import annotations

import html
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from catalogfs.config import Config
from features.embedding_run import EmbedResult
from features.tables import FRAME_EMBEDDINGS, FRAMES, VIDEO_EMBEDDINGS, VIDEO_LABELS
from catalogfs.statuses import Status

THUMB = (160, 90)


def project_2d(vectors: np.ndarray) -> np.ndarray:
    """First two principal components (centred SVD); zeros when there are fewer than 2 vectors."""
    if len(vectors) < 2:
        return np.zeros((len(vectors), 2))
    centred = vectors - vectors.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def _projection_png(path: Path, ids: list[str], points: np.ndarray, labels: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=100)
    names = sorted(set(labels))
    colours = plt.get_cmap("tab10")
    for i, name in enumerate(names):
        sel = [j for j, lab in enumerate(labels) if lab == name]
        ax.scatter(points[sel, 0], points[sel, 1], s=80, color=colours(i % 10), label=name[:30])
    for j, vid in enumerate(ids):
        ax.annotate(vid, points[j], fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set_title("Video embeddings, first two principal components (colour: top label)")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _contact_sheet_png(path: Path, groups: dict[str, list[bytes]], per_label: int = 4) -> None:
    rows = sorted(groups)
    width, height = 220 + per_label * (THUMB[0] + 6), max(1, len(rows)) * (THUMB[1] + 10) + 10
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, label in enumerate(rows):
        y = 10 + r * (THUMB[1] + 10)
        draw.text((8, y + THUMB[1] // 2 - 6), label[:32], fill=(0, 0, 0))
        c = 0
        for jpeg in groups[label]:
            if c == per_label:
                break
            try:
                with Image.open(io.BytesIO(jpeg)) as img:
                    thumb = img.convert("RGB")
                    thumb.thumbnail(THUMB)
            except (OSError, ValueError, SyntaxError):  # a frame the model could not read either
                continue
            sheet.paste(thumb, (220 + c * (THUMB[0] + 6), y))
            c += 1
    sheet.save(path)


def write_run_report(spark: SparkSession, cfg: Config, result: EmbedResult) -> Path:
    """Write the report of ``result`` (the whole space as it stands after the run)."""
    storage = cfg.storage
    out = storage.reports_dir / result.run_id
    out.mkdir(parents=True, exist_ok=True)
    space = result.space.id
    q = storage.qualified

    videos = (spark.table(q(VIDEO_EMBEDDINGS.name)).where(F.col("embedding_space") == space)
              .select("video_id", "embedding").orderBy("video_id").collect())
    top = {r["video_id"]: r["label"] for r in spark.table(q(VIDEO_LABELS.name))
           .where((F.col("embedding_space") == space) & (F.col("rank") == 1)).collect()}
    images = []
    if videos:
        ids = [r["video_id"] for r in videos]
        points = project_2d(np.stack([np.asarray(r["embedding"], np.float64) for r in videos]))
        _projection_png(out / "projection.png", ids, points, [top.get(v, "?") for v in ids])
        images.append(("projection.png", "Video embeddings in 2-D"))
        sample = (spark.table(q(FRAMES.name)).where(F.col("status") == Status.OK)
                  .where(F.col("video_id").isin(ids)).orderBy("video_id", "frame_ts_ms")
                  .select("video_id", "image").collect())
        groups: dict[str, list[bytes]] = {}
        for r in sample:
            groups.setdefault(top.get(r["video_id"], "?"), []).append(bytes(r["image"]))
        _contact_sheet_png(out / "contact_sheet.png", groups)
        images.append(("contact_sheet.png", "Sample frames per top label"))

    statuses = {r["status"]: r["count"] for r in spark.table(q(FRAME_EMBEDDINGS.name))
                .where(F.col("embedding_space") == space).groupBy("status").count().collect()}
    validation = result.validation
    docs = ""
    if validation is not None and validation.data_docs:
        docs = f' — <a href="{html.escape(os.path.relpath(validation.data_docs, out))}">Data Docs</a>'

    def table(rows: dict) -> str:
        body = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                       for k, v in rows.items())
        return f"<table>{body}</table>"

    run_rows = {
        "run id": result.run_id, "embedding space": space,
        "model": f"{result.space.model_name} v{result.space.model_version}",
        "frames in the frames table": result.frames_total, "frames embedded this run": result.frames_embedded,
        "model forward passes": result.forward_passes, "embed stage (s)": f"{result.embed_seconds:.1f}",
        "frames/s (embed stage)": f"{result.frames_per_second:.1f}", "whole run (s)": f"{result.seconds:.1f}",
        "published": result.published, "table versions": result.table_versions,
        "model loads (Python workers that loaded it)": result.model_loads,
        "seconds per stage": result.stage_summary,
    }
    sections = [
        f"<h1>catalogfs embed run {html.escape(result.run_id)}</h1>", table(run_rows),
        "<h2>Frame statuses in this space</h2>", table(dict(sorted(statuses.items()))),
        "<h2>This run's frames by status</h2>", table(dict(sorted(result.status_counts.items())) or {"—": 0}),
        "<h2>Validation</h2>",
        f"<p>{html.escape(validation.summary if validation else 'nothing new to validate')}{docs}</p>",
    ]
    sections += [f'<h2>{html.escape(title)}</h2><img src="{name}" alt="{html.escape(title)}">'
                 for name, title in images]
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>catalogfs run report</title><style>"
            "body{font-family:sans-serif;margin:2em} td{padding:2px 12px;border-bottom:1px solid #ddd}"
            "img{max-width:100%;border:1px solid #ccc}</style></head><body>"
            + "\n".join(sections) + "</body></html>")
    path = out / "report.html"
    path.write_text(page)
    return path
