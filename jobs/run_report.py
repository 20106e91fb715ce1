"""The HTML report of an embed run: counts, timings, validation, a 2-D map of the videos, a contact
sheet of frames per label, a table of the first videos. Written to
``<data_root>/reports/<run_id>/report.html`` with its PNGs.

Bounded at any catalogue size: what reaches the driver is a few aggregates (statuses, the top
labels by number of videos), a sample of at most ``max_points`` video embeddings for the projection,
at most ``frames_per_label`` JPEGs for each of the ``top_labels`` labels, and ``table_rows`` rows of
the video table. Everything else is counted by Spark.

- Projection sample: the ``max_points`` videos with the smallest ``xxhash64(video_id)`` (ties by
  video_id), i.e. ``ORDER BY xxhash64(video_id) LIMIT n``, which Spark plans as a top-k per
  partition (TakeOrderedAndProject), not a sort of the whole table. The same catalogue gives the
  same sample on every run; a video stays in it while the catalogue grows until pushed out by
  smaller hashes.
- Top labels: the labels with the most videos (rank-1 label), ties by label; the rest is "other".
- Contact sheet: for each top label, up to ``frames_per_label`` of its videos by the same hash
  (a per-label row_number, which Spark limits per partition before the shuffle), their first ok
  frames round-robin; the JPEGs are then read by a filter on exactly those (video_id, frame_ts_ms)
  keys.
"""

from __future__ import annotations

import html
import io
import os
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pyspark.sql import SparkSession, Window
from pyspark.sql import functions as F

from catalogfs.config import Config
from catalogfs.statuses import Status
from catalogfs.features.delta_writer import sql_literal
from catalogfs.features.embedding_run import EmbedResult
from catalogfs.features.tables import FRAME_EMBEDDINGS, FRAMES, VIDEO_EMBEDDINGS, VIDEO_LABELS

THUMB = (160, 90)
MAX_POINTS = 2000  # videos in the projection
TOP_LABELS = 10  # labels with a colour of their own and a row in the contact sheet
FRAMES_PER_LABEL = 4
TABLE_ROWS = 50  # videos listed in the report's table
ANNOTATE_UP_TO = 25  # more points than this: no video_id next to each point
MAX_SHEET_ROWS = 12  # the contact sheet never has more rows than this, whatever top_labels says
OTHER = "other"


@dataclass
class ReportData:
    """What the report shows, all of it bounded (see module doc)."""

    space: str
    total_videos: int  # videos of the space (rows of video_embeddings)
    labelled_videos: int  # videos with a rank-1 label
    distinct_labels: int  # distinct rank-1 labels
    top_labels: list[tuple[str, int]]  # (label, videos), most videos first, ties by label
    sample_ids: list[str]  # projection sample, sorted by video_id
    sample_labels: list[str | None]  # their rank-1 labels
    sample_vectors: np.ndarray  # (len(sample_ids), dim)
    sheet: dict[str, list[tuple[str, int, bytes]]]  # top label → [(video_id, frame_ts_ms, jpeg)], in top order
    table: list[tuple[str, str | None, int]]  # first videos by id: (video_id, top label, ok frames)
    statuses: dict[str, int]  # frame_embeddings rows of the space by status
    rows_collected: int = 0  # rows brought to the driver to build this
    max_points: int = MAX_POINTS
    frames_per_label: int = FRAMES_PER_LABEL
    collected_by: list[tuple[str, int]] = field(default_factory=list)


def project_2d(vectors: np.ndarray) -> np.ndarray:
    """First two principal components (centred SVD); zeros when there are fewer than 2 vectors."""
    if len(vectors) < 2:
        return np.zeros((len(vectors), 2))
    centred = vectors - vectors.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    points = centred @ vt[:2].T
    if points.shape[1] < 2:  # one-dimensional vectors
        points = np.hstack([points, np.zeros((len(points), 2 - points.shape[1]))])
    return points


def collect_report_data(spark: SparkSession, cfg: Config, space: str, *, max_points: int = MAX_POINTS,
                        top_labels: int = TOP_LABELS, frames_per_label: int = FRAMES_PER_LABEL,
                        table_rows: int = TABLE_ROWS) -> ReportData:
    """Aggregates and bounded samples of ``space`` (see module doc); nothing in proportion to the
    catalogue reaches the driver."""
    q = cfg.storage.qualified
    top_labels = max(0, min(top_labels, MAX_SHEET_ROWS))
    collected: list[tuple[str, int]] = []

    def collect(what: str, df) -> list:
        rows = df.collect()
        collected.append((what, len(rows)))
        return rows

    in_space = F.col("embedding_space") == space
    videos = spark.table(q(VIDEO_EMBEDDINGS.name)).where(in_space)
    top1 = (spark.table(q(VIDEO_LABELS.name)).where(in_space & (F.col("rank") == 1))
            .select("video_id", "label"))

    # Counts: by Spark, a handful of rows back.
    label_counts = top1.groupBy("label").agg(F.count(F.lit(1)).alias("videos"))
    top = [(r["label"], int(r["videos"])) for r in collect(
        "top labels", label_counts.orderBy(F.desc("videos"), F.asc("label")).limit(top_labels))] \
        if top_labels else []
    totals = collect("label totals", label_counts.agg(F.count(F.lit(1)).alias("labels"),
                                                      F.sum("videos").alias("labelled")))[0]
    total_videos = videos.count()
    statuses = {r["status"]: int(r["count"]) for r in collect(
        "statuses", spark.table(q(FRAME_EMBEDDINGS.name)).where(in_space).groupBy("status").count())}

    # Projection sample: the max_points smallest hashes (a top-k, no sort of the whole table).
    sample_rows = collect("projection sample", videos
                          .select("video_id", "embedding", F.xxhash64("video_id").alias("_h"))
                          .orderBy("_h", "video_id").limit(max_points)
                          .join(top1, "video_id", "left").select("video_id", "embedding", "label")) \
        if max_points > 0 else []
    sample_rows.sort(key=lambda r: r["video_id"])
    vectors = (np.stack([np.asarray(r["embedding"], np.float64) for r in sample_rows]) if sample_rows
               else np.zeros((0, 2)))

    # Contact sheet: a few videos per top label, their first ok frames, then exactly those JPEGs.
    sheet: dict[str, list[tuple[str, int, bytes]]] = {label: [] for label, _ in top}
    if top and frames_per_label > 0:
        chosen = (top1.where(F.col("label").isin([label for label, _ in top]))
                  .withColumn("v_rank", F.row_number().over(
                      Window.partitionBy("label").orderBy(F.xxhash64("video_id"), "video_id")))
                  .where(F.col("v_rank") <= frames_per_label))
        ok_frames = (spark.table(q(FRAME_EMBEDDINGS.name)).where(in_space & (F.col("status") == Status.OK))
                     .select("video_id", "frame_ts_ms"))
        keys = collect("contact sheet keys", ok_frames.join(F.broadcast(chosen), "video_id")
                       .withColumn("f_rank", F.row_number().over(
                           Window.partitionBy("video_id").orderBy("frame_ts_ms")))
                       .withColumn("pick", F.row_number().over(
                           Window.partitionBy("label").orderBy("f_rank", "v_rank")))
                       .where(F.col("pick") <= frames_per_label)
                       .select("label", "pick", "video_id", "frame_ts_ms"))
        if keys:
            wanted = {(r["video_id"], int(r["frame_ts_ms"])): (r["label"], int(r["pick"])) for r in keys}
            exact = reduce(lambda a, b: a | b, [(F.col("video_id") == v) & (F.col("frame_ts_ms") == t)
                                                 for v, t in wanted])
            images = collect("contact sheet frames", spark.table(q(FRAMES.name))
                             .where(F.col("video_id").isin(sorted({v for v, _ in wanted})) & exact
                                    & (F.col("status") == Status.OK))
                             .select("video_id", "frame_ts_ms", "image"))
            picked = sorted(((*wanted[(r["video_id"], int(r["frame_ts_ms"]))], r["video_id"],
                              int(r["frame_ts_ms"]), bytes(r["image"]))
                             for r in images if r["image"] is not None), key=lambda t: (t[0], t[1]))
            for label, _, vid, ts, jpeg in picked:
                sheet[label].append((vid, ts, jpeg))

    table = [(r["video_id"], r["label"], int(r["n_frames"])) for r in collect(
        "video table", videos.select("video_id", "n_frames").orderBy("video_id").limit(table_rows)
        .join(top1, "video_id", "left").orderBy("video_id"))] if table_rows > 0 else []

    return ReportData(space=space, total_videos=int(total_videos), labelled_videos=int(totals["labelled"] or 0),
                      distinct_labels=int(totals["labels"]), top_labels=top,
                      sample_ids=[r["video_id"] for r in sample_rows],
                      sample_labels=[r["label"] for r in sample_rows], sample_vectors=vectors,
                      sheet=sheet, table=table, statuses=statuses,
                      rows_collected=sum(n for _, n in collected), max_points=max_points,
                      frames_per_label=frames_per_label, collected_by=collected)


def _colours(n: int) -> list:
    """``n`` (at most MAX_SHEET_ROWS) distinct colours, none of them grey (grey is "other")."""
    import matplotlib

    tab10, tab20 = matplotlib.colormaps["tab10"].colors, matplotlib.colormaps["tab20"].colors
    palette = [c for i, c in enumerate(tab10) if i != 7] + [(0.1, 0.1, 0.1)] \
        + [c for i, c in enumerate(tab20) if i % 2 and i != 15]
    return [palette[i % len(palette)] for i in range(n)]


def _projection_png(path: Path, data: ReportData) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    ids, labels = data.sample_ids, data.sample_labels
    points = project_2d(data.sample_vectors)
    n = len(ids)
    counts = dict(data.top_labels)
    size = 80.0 if n <= ANNOTATE_UP_TO else float(np.clip(6000.0 / n, 4.0, 40.0))
    alpha = 1.0 if n <= ANNOTATE_UP_TO else 0.7
    other_colour = (0.75, 0.75, 0.75)

    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=100)
    other = [j for j, lab in enumerate(labels) if lab not in counts]
    if other:  # drawn first, behind the coloured points
        ax.scatter(points[other, 0], points[other, 1], s=size, color=other_colour, alpha=alpha, linewidths=0)
    handles = []
    for colour, (name, videos) in zip(_colours(len(data.top_labels)), data.top_labels):
        sel = [j for j, lab in enumerate(labels) if lab == name]
        if sel:
            ax.scatter(points[sel, 0], points[sel, 1], s=size, color=colour, alpha=alpha, linewidths=0)
        handles.append(Line2D([], [], marker="o", linestyle="", color=colour, label=f"{name[:30]} ({videos} videos)"))
    n_other = data.total_videos - sum(counts.values())
    if n_other:
        handles.append(Line2D([], [], marker="o", linestyle="", color=other_colour,
                              label=f"{OTHER} ({n_other} videos)"))
    if n <= ANNOTATE_UP_TO:
        for j, vid in enumerate(ids):
            ax.annotate(vid, points[j], fontsize=8, xytext=(4, 4), textcoords="offset points")
    shown = "all" if n >= data.total_videos else f"{n} of {data.total_videos}"
    ax.set_title(f"Video embeddings, first two principal components ({shown} videos)\n"
                 f"colour: top label (the {len(data.top_labels)} most frequent; the rest grey)", fontsize=10)
    if handles:
        ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _contact_sheet_png(path: Path, sheet: dict[str, list[tuple[str, int, bytes]]], per_label: int) -> None:
    rows = list(sheet)[:MAX_SHEET_ROWS]
    per_label = max(1, per_label)
    width, height = 220 + per_label * (THUMB[0] + 6), max(1, len(rows)) * (THUMB[1] + 10) + 10
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, label in enumerate(rows):
        y = 10 + r * (THUMB[1] + 10)
        draw.text((8, y + THUMB[1] // 2 - 6), label[:32], fill=(0, 0, 0))
        c = 0
        for _, _, jpeg in sheet[label]:
            if c == per_label:
                break
            try:
                with Image.open(io.BytesIO(jpeg)) as img:
                    thumb = img.convert("RGB")
                    thumb.thumbnail(THUMB)
            except (OSError, ValueError, SyntaxError):  # a frame the model could not read either
                continue
            canvas.paste(thumb, (220 + c * (THUMB[0] + 6), y))
            c += 1
    canvas.save(path)


def _kv_table(rows: dict) -> str:
    body = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                   for k, v in rows.items())
    return f"<table>{body}</table>"


def _list_query(cfg: Config, space: str) -> str:
    q = cfg.storage.qualified
    return (f"SELECT v.video_id, l.label AS top_label, v.n_frames\n"
            f"FROM {q(VIDEO_EMBEDDINGS.name)} v\n"
            f"LEFT JOIN {q(VIDEO_LABELS.name)} l\n"
            f"  ON l.video_id = v.video_id AND l.embedding_space = v.embedding_space AND l.rank = 1\n"
            f"WHERE v.embedding_space = {sql_literal(space)}\n"
            f"ORDER BY v.video_id")


def write_run_report(spark: SparkSession, cfg: Config, result: EmbedResult, *, max_points: int = MAX_POINTS,
                     top_labels: int = TOP_LABELS, frames_per_label: int = FRAMES_PER_LABEL,
                     table_rows: int = TABLE_ROWS) -> Path:
    """Write the report of ``result`` (the whole space as it stands after the run; bounded samples of
    it, see module doc)."""
    storage = cfg.storage
    out = storage.reports_dir / result.run_id
    out.mkdir(parents=True, exist_ok=True)
    space = result.space.id
    if not result.published and result.validation is None:  # nothing new: the space is as it was
        return _unchanged_report(out, result)
    data = collect_report_data(spark, cfg, space, max_points=max_points, top_labels=top_labels,
                               frames_per_label=frames_per_label, table_rows=table_rows)
    esc = html.escape
    total, n_sample = data.total_videos, len(data.sample_ids)

    validation = result.validation
    docs = ""
    if validation is not None and validation.data_docs:
        docs = f' — <a href="{esc(os.path.relpath(validation.data_docs, out))}">Data Docs</a>'

    run_rows = {
        "run id": result.run_id, "embedding space": space,
        "model": f"{result.space.model_name} v{result.space.model_version}",
        "frames in the frames table": result.frames_total, "frames embedded this run": result.frames_embedded,
        "model forward passes": result.forward_passes, "embed stage (s)": f"{result.embed_seconds:.1f}",
        "frames/s (embed stage)": f"{result.frames_per_second:.1f}", "whole run (s)": f"{result.seconds:.1f}",
        "published": result.published, "table versions": result.table_versions,
        "model loads (Python workers that loaded it)": result.model_loads,
        "seconds per stage": result.stage_summary, "plan": result.plan_scope or "—",
    }
    sections = [
        f"<h1>catalogfs embed run {esc(result.run_id)}</h1>", _kv_table(run_rows),
        "<h2>Frame statuses in this space</h2>", _kv_table(dict(sorted(data.statuses.items()))),
        "<h2>This run's frames by status</h2>", _kv_table(dict(sorted(result.status_counts.items())) or {"—": 0}),
        "<h2>Validation</h2>",
        f"<p>{esc(validation.summary if validation else 'nothing new to validate')}{docs}</p>",
    ]

    in_top = sum(n for _, n in data.top_labels)
    sections += [
        "<h2>Videos by top label</h2>",
        f"<p>{total} videos in this space, {data.labelled_videos} with a top label, "
        f"{data.distinct_labels} distinct top labels; the {len(data.top_labels)} with the most videos:</p>",
        '<table id="top-labels"><tr><th>top label</th><th>videos</th></tr>'
        + "".join(f"<tr><td>{esc(label)}</td><td>{n}</td></tr>" for label, n in data.top_labels)
        + f"<tr><td>{OTHER} (other labels, no label)</td><td>{total - in_top}</td></tr></table>",
    ]

    if total:
        _projection_png(out / "projection.png", data)
        if n_sample >= total:
            sampled = f"Projection of all {total} videos"
        else:
            sampled = (f"Projection of {n_sample} of {total} videos, chosen by hash of video_id "
                       f"(the {n_sample} smallest xxhash64(video_id); the same videos on every run)")
        sections += [
            "<h2>Video embeddings in 2-D</h2>",
            f'<p id="projection-sample">{esc(sampled)}; principal components of that sample. Colour: the '
            f"{len(data.top_labels)} most frequent top labels; the other videos grey.</p>",
            '<img src="projection.png" alt="Video embeddings in 2-D">',
        ]
        _contact_sheet_png(out / "contact_sheet.png", data.sheet, data.frames_per_label)
        sections += [
            "<h2>Sample frames per top label</h2>",
            f'<p id="contact-sheet">Up to {data.frames_per_label} ok frames for each of the '
            f"{len(data.sheet)} most frequent top labels (of {data.distinct_labels}), from up to "
            f"{data.frames_per_label} videos per label chosen by hash of video_id: "
            + ", ".join(f"{esc(label)} ({len(frames)})" for label, frames in data.sheet.items()) + ".</p>",
            '<img src="contact_sheet.png" alt="Sample frames per top label">',
        ]
        body = "".join(f"<tr><td>{esc(v)}</td><td>{esc(label or '—')}</td><td>{n}</td></tr>"
                       for v, label, n in data.table)
        sections += [
            "<h2>Videos</h2>",
            f'<p id="video-table">The first {len(data.table)} of {total} videos by video_id. '
            "To list them all:</p>",
            f"<pre>{esc(_list_query(cfg, space))}</pre>",
            "<table><tr><th>video_id</th><th>top label</th><th>ok frames</th></tr>" + body + "</table>",
        ]
        if result.is_current:
            view = esc(storage.qualified("current_video_labels"))
            sections.append(f"<p>This space is the current one: the <code>{view}</code> view (and the other "
                            "<code>current_*</code> views) select its rows.</p>")
    else:
        sections.append("<p>No videos in this space yet.</p>")

    page = ("<!doctype html><html><head><meta charset='utf-8'><title>catalogfs run report</title><style>"
            "body{font-family:sans-serif;margin:2em} td,th{padding:2px 12px;border-bottom:1px solid #ddd;"
            "text-align:left} img{max-width:100%;border:1px solid #ccc} pre{background:#f6f6f6;padding:8px}"
            "</style></head><body>" + "\n".join(sections) + "</body></html>")
    path = out / "report.html"
    path.write_text(page)
    return path


def _unchanged_report(out: Path, result: EmbedResult) -> Path:
    """The report of a run that found nothing to do: what it checked and how long it took; no
    Spark job (the space is what the report of its last publishing run shows)."""
    esc = html.escape
    rows = {"run id": result.run_id, "embedding space": result.space.id,
            "model": f"{result.space.model_name} v{result.space.model_version}",
            "frames in the frames table": result.frames_total, "frames embedded this run": 0,
            "plan": result.plan_scope or "—", "whole run (s)": f"{result.seconds:.1f}",
            "seconds per stage": result.stage_summary, "table versions": result.table_versions,
            "current space after the run": result.current_space or "none"}
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>catalogfs run report</title><style>"
            "body{font-family:sans-serif;margin:2em} td{padding:2px 12px;border-bottom:1px solid #ddd}</style>"
            f"</head><body><h1>catalogfs embed run {esc(result.run_id)}</h1>{_kv_table(rows)}"
            "<p>Nothing new to embed or refresh: the space did not change in this run, so no projection "
            "or contact sheet was drawn (the report of the space's last publishing run shows it).</p>"
            "</body></html>")
    path = out / "report.html"
    path.write_text(page)
    return path
