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

Data and layout are apart: :func:`collect_report_data` reads the space, :func:`report_values` turns
it and the run into the values the page shows, and :func:`render_report` lays them out with the
templates of :mod:`catalogfs.jobs.run_report_template`.
"""

from __future__ import annotations

import html
import io
import os
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from pyspark.sql import DataFrame, Row, SparkSession, Window
from pyspark.sql import functions as F

from catalogfs.config import Config
from catalogfs.statuses import Status
from catalogfs.features.delta_writer import sql_literal
from catalogfs.features.embedding_run import EmbedResult
from catalogfs.features.tables import FRAME_EMBEDDINGS, FRAMES, VIDEO_EMBEDDINGS, VIDEO_LABELS
from catalogfs.jobs import run_report_template as template

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


class _Collector:
    """``DataFrame.collect`` that counts what each collect brought to the driver (``collected_by``)."""

    def __init__(self) -> None:
        self.collected: list[tuple[str, int]] = []

    def __call__(self, what: str, df: DataFrame) -> list[Row]:
        rows = df.collect()
        self.collected.append((what, len(rows)))
        return rows


def collect_report_data(spark: SparkSession, cfg: Config, space: str, *, max_points: int = MAX_POINTS,
                        top_labels: int = TOP_LABELS, frames_per_label: int = FRAMES_PER_LABEL,
                        table_rows: int = TABLE_ROWS) -> ReportData:
    """Aggregates and bounded samples of ``space`` (see module doc); nothing in proportion to the
    catalogue reaches the driver."""
    q = cfg.storage.qualified
    top_labels = max(0, min(top_labels, MAX_SHEET_ROWS))
    collect = _Collector()
    in_space = F.col("embedding_space") == space
    videos = spark.table(q(VIDEO_EMBEDDINGS.name)).where(in_space)
    top1 = (spark.table(q(VIDEO_LABELS.name)).where(in_space & (F.col("rank") == 1))
            .select("video_id", "label"))
    frame_embeddings = spark.table(q(FRAME_EMBEDDINGS.name)).where(in_space)

    top, labelled, distinct = _top_labels(collect, top1, top_labels)
    total_videos = videos.count()
    statuses = {r["status"]: int(r["count"]) for r in collect(
        "statuses", frame_embeddings.groupBy("status").count())}
    sample_rows, vectors = _projection_sample(collect, videos, top1, max_points)
    ok_frames = frame_embeddings.where(F.col("status") == Status.OK).select("video_id", "frame_ts_ms")
    sheet = _contact_sheet(collect, spark.table(q(FRAMES.name)), ok_frames, top1, [label for label, _ in top],
                           frames_per_label)
    table = [(r["video_id"], r["label"], int(r["n_frames"])) for r in collect(
        "video table", videos.select("video_id", "n_frames").orderBy("video_id").limit(table_rows)
        .join(top1, "video_id", "left").orderBy("video_id"))] if table_rows > 0 else []

    return ReportData(space=space, total_videos=int(total_videos), labelled_videos=labelled,
                      distinct_labels=distinct, top_labels=top,
                      sample_ids=[r["video_id"] for r in sample_rows],
                      sample_labels=[r["label"] for r in sample_rows], sample_vectors=vectors,
                      sheet=sheet, table=table, statuses=statuses,
                      rows_collected=sum(n for _, n in collect.collected), max_points=max_points,
                      frames_per_label=frames_per_label, collected_by=collect.collected)


def _top_labels(collect: _Collector, top1: DataFrame, top_labels: int) -> tuple[list[tuple[str, int]], int, int]:
    """(the ``top_labels`` labels with the most videos, ties by label; labelled videos; distinct
    labels), counted by Spark: a handful of rows back."""
    label_counts = top1.groupBy("label").agg(F.count(F.lit(1)).alias("videos"))
    top = [(r["label"], int(r["videos"])) for r in collect(
        "top labels", label_counts.orderBy(F.desc("videos"), F.asc("label")).limit(top_labels))] \
        if top_labels else []
    totals = collect("label totals", label_counts.agg(F.count(F.lit(1)).alias("labels"),
                                                      F.sum("videos").alias("labelled")))[0]
    return top, int(totals["labelled"] or 0), int(totals["labels"])


def _projection_sample(collect: _Collector, videos: DataFrame, top1: DataFrame,
                       max_points: int) -> tuple[list[Row], np.ndarray]:
    """The ``max_points`` videos with the smallest hashes (a top-k, no sort of the whole table),
    sorted by video_id, with their labels; and their vectors."""
    sample_rows = collect("projection sample", videos
                          .select("video_id", "embedding", F.xxhash64("video_id").alias("_h"))
                          .orderBy("_h", "video_id").limit(max_points)
                          .join(top1, "video_id", "left").select("video_id", "embedding", "label")) \
        if max_points > 0 else []
    sample_rows.sort(key=lambda r: r["video_id"])
    vectors = (np.stack([np.asarray(r["embedding"], np.float64) for r in sample_rows]) if sample_rows
               else np.zeros((0, 2)))
    return sample_rows, vectors


def _contact_sheet(collect: _Collector, frames: DataFrame, ok_frames: DataFrame, top1: DataFrame,
                   labels: list[str], frames_per_label: int) -> dict[str, list[tuple[str, int, bytes]]]:
    """A few videos per top label, their first ok frames round-robin, then exactly those JPEGs:
    label → [(video_id, frame_ts_ms, jpeg)], labels in ``labels`` order."""
    sheet: dict[str, list[tuple[str, int, bytes]]] = {label: [] for label in labels}
    if not labels or frames_per_label <= 0:
        return sheet
    chosen = (top1.where(F.col("label").isin(labels))
              .withColumn("v_rank", F.row_number().over(
                  Window.partitionBy("label").orderBy(F.xxhash64("video_id"), "video_id")))
              .where(F.col("v_rank") <= frames_per_label))
    keys = collect("contact sheet keys", ok_frames.join(F.broadcast(chosen), "video_id")
                   .withColumn("f_rank", F.row_number().over(Window.partitionBy("video_id").orderBy("frame_ts_ms")))
                   .withColumn("pick", F.row_number().over(Window.partitionBy("label").orderBy("f_rank", "v_rank")))
                   .where(F.col("pick") <= frames_per_label)
                   .select("label", "pick", "video_id", "frame_ts_ms"))
    if not keys:
        return sheet
    wanted = {(r["video_id"], int(r["frame_ts_ms"])): (r["label"], int(r["pick"])) for r in keys}
    exact = reduce(lambda a, b: a | b, [(F.col("video_id") == v) & (F.col("frame_ts_ms") == t) for v, t in wanted])
    images = collect("contact sheet frames", frames
                     .where(F.col("video_id").isin(sorted({v for v, _ in wanted})) & exact
                            & (F.col("status") == Status.OK))
                     .select("video_id", "frame_ts_ms", "image"))
    picked = sorted(((*wanted[(r["video_id"], int(r["frame_ts_ms"]))], r["video_id"], int(r["frame_ts_ms"]),
                      bytes(r["image"])) for r in images if r["image"] is not None), key=lambda t: (t[0], t[1]))
    for label, _, vid, ts, jpeg in picked:
        sheet[label].append((vid, ts, jpeg))
    return sheet


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


def _list_query(cfg: Config, space: str) -> str:
    q = cfg.storage.qualified
    return (f"SELECT v.video_id, l.label AS top_label, v.n_frames\n"
            f"FROM {q(VIDEO_EMBEDDINGS.name)} v\n"
            f"LEFT JOIN {q(VIDEO_LABELS.name)} l\n"
            f"  ON l.video_id = v.video_id AND l.embedding_space = v.embedding_space AND l.rank = 1\n"
            f"WHERE v.embedding_space = {sql_literal(space)}\n"
            f"ORDER BY v.video_id")


@dataclass(frozen=True)
class ReportValues:
    """What the report of a run that changed its space shows, as plain (unescaped) values;
    :func:`render_report` lays them out with :mod:`catalogfs.jobs.run_report_template`."""

    run_id: str
    run: dict[str, Any]  # the run's facts, in display order
    space_statuses: dict[str, int]  # frame_embeddings rows of the space by status
    run_statuses: dict[str, int]  # this run's frames by status
    validation: str  # the validation summary
    data_docs: str | None  # the Data Docs page, relative to the report's folder
    total: int  # videos of the space
    labelled: int  # videos with a top label
    distinct: int  # distinct top labels
    top_labels: list[tuple[str, int]]  # (label, videos), most videos first
    rest: int  # videos of the other labels or of none
    sample: int  # videos in the projection
    frames_per_label: int
    sheet: list[tuple[str, int]]  # (top label, frames on its contact-sheet row)
    table: list[tuple[str, str | None, int]]  # (video_id, top label, ok frames)
    list_query: str  # the SQL that lists every video
    current_view: str | None  # the current_video_labels view when the run's space is the current one


def report_values(cfg: Config, result: EmbedResult, data: ReportData, out: Path) -> ReportValues:
    """The values of ``result``'s report in folder ``out`` (``data``: what :func:`collect_report_data`
    found in the space)."""
    validation = result.validation
    docs = validation.data_docs if validation is not None else None
    run = {
        "run id": result.run_id, "embedding space": result.space.id,
        "model": f"{result.space.model_name} v{result.space.model_version}",
        "frames in the frames table": result.frames_total, "frames embedded this run": result.frames_embedded,
        "model forward passes": result.forward_passes, "embed stage (s)": f"{result.embed_seconds:.1f}",
        "frames/s (embed stage)": f"{result.frames_per_second:.1f}", "whole run (s)": f"{result.seconds:.1f}",
        "published": result.published, "table versions": result.table_versions,
        "model loads (Python workers that loaded it)": result.model_loads,
        "seconds per stage": result.stage_summary, "plan": result.plan_scope or "—",
    }
    return ReportValues(
        run_id=result.run_id, run=run, space_statuses=dict(sorted(data.statuses.items())),
        run_statuses=dict(sorted(result.status_counts.items())) or {"—": 0},
        validation=validation.summary if validation else "nothing new to validate",
        data_docs=os.path.relpath(docs, out) if docs else None,
        total=data.total_videos, labelled=data.labelled_videos, distinct=data.distinct_labels,
        top_labels=data.top_labels, rest=data.total_videos - sum(n for _, n in data.top_labels),
        sample=len(data.sample_ids), frames_per_label=data.frames_per_label,
        sheet=[(label, len(frames)) for label, frames in data.sheet.items()], table=data.table,
        list_query=_list_query(cfg, result.space.id),
        current_view=cfg.storage.qualified("current_video_labels") if result.is_current else None)


def _esc(value: object) -> str:
    return html.escape(str(value))


def _kv_table(rows: dict[str, Any]) -> str:
    return template.KV_TABLE.substitute(rows_html="".join(template.KV_ROW.substitute(key=_esc(k), value=_esc(v))
                                                          for k, v in rows.items()))


def render_report(values: ReportValues) -> str:
    """The report's HTML page: the templates of :mod:`catalogfs.jobs.run_report_template` filled
    with ``values``, each one HTML-escaped."""
    v = values
    body = template.RUN.substitute(
        run_id=_esc(v.run_id), run_table_html=_kv_table(v.run), space_statuses_html=_kv_table(v.space_statuses),
        run_statuses_html=_kv_table(v.run_statuses), validation=_esc(v.validation),
        data_docs_html=template.DATA_DOCS.substitute(href=_esc(v.data_docs)) if v.data_docs else "",
        total=v.total, labelled=v.labelled, distinct=v.distinct, n_top=len(v.top_labels),
        top_label_rows_html="".join(template.TOP_LABEL_ROW.substitute(label=_esc(label), videos=n)
                                    for label, n in v.top_labels),
        other=_esc(OTHER), rest=v.rest)
    body += "\n" + (_space_html(v) if v.total else template.NO_VIDEOS)
    return template.PAGE.substitute(style_html=template.STYLE, body_html=body)


def _space_html(v: ReportValues) -> str:
    """The sections of a space with videos: projection, contact sheet, the first videos."""
    if v.sample >= v.total:
        sampled = template.SAMPLED_ALL.substitute(total=v.total)
    else:
        sampled = template.SAMPLED_SOME.substitute(sample=v.sample, total=v.total)
    return template.SPACE.substitute(
        sampled=_esc(sampled), n_top=len(v.top_labels), frames_per_label=v.frames_per_label,
        sheet_labels=len(v.sheet), distinct=v.distinct,
        sheet_counts=", ".join(template.SHEET_COUNT.substitute(label=_esc(label), frames=n) for label, n in v.sheet),
        table_rows=len(v.table), total=v.total, list_query=_esc(v.list_query),
        video_rows_html="".join(template.VIDEO_ROW.substitute(video_id=_esc(vid), label=_esc(label or "—"), frames=n)
                                for vid, label, n in v.table),
        current_html=template.CURRENT.substitute(view=_esc(v.current_view)) if v.current_view else "")


def write_run_report(spark: SparkSession, cfg: Config, result: EmbedResult, *, max_points: int = MAX_POINTS,
                     top_labels: int = TOP_LABELS, frames_per_label: int = FRAMES_PER_LABEL,
                     table_rows: int = TABLE_ROWS) -> Path:
    """Write the report of ``result`` (the whole space as it stands after the run; bounded samples of
    it, see module doc)."""
    out = cfg.storage.reports_dir / result.run_id
    out.mkdir(parents=True, exist_ok=True)
    if not result.published and result.validation is None:  # nothing new: the space is as it was
        return _unchanged_report(out, result)
    data = collect_report_data(spark, cfg, result.space.id, max_points=max_points, top_labels=top_labels,
                               frames_per_label=frames_per_label, table_rows=table_rows)
    if data.total_videos:
        _projection_png(out / "projection.png", data)
        _contact_sheet_png(out / "contact_sheet.png", data.sheet, data.frames_per_label)
    path = out / "report.html"
    path.write_text(render_report(report_values(cfg, result, data, out)))
    return path


def _unchanged_report(out: Path, result: EmbedResult) -> Path:
    """The report of a run that found nothing to do: what it checked and how long it took; no
    Spark job (the space is what the report of its last publishing run shows)."""
    rows = {"run id": result.run_id, "embedding space": result.space.id,
            "model": f"{result.space.model_name} v{result.space.model_version}",
            "frames in the frames table": result.frames_total, "frames embedded this run": 0,
            "plan": result.plan_scope or "—", "whole run (s)": f"{result.seconds:.1f}",
            "seconds per stage": result.stage_summary, "table versions": result.table_versions,
            "current space after the run": result.current_space or "none"}
    body = template.UNCHANGED.substitute(run_id=_esc(result.run_id), run_table_html=_kv_table(rows))
    path = out / "report.html"
    path.write_text(template.PAGE.substitute(style_html=template.STYLE_UNCHANGED, body_html=body))
    return path
