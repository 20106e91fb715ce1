"""The run report stays bounded: a hash-chosen projection sample of at most ``max_points`` videos,
the top-N labels by Spark aggregation, a contact sheet of at most N rows, a bounded video table, and
a driver that never collects in proportion to the catalogue. Fixture tables built here (61 videos,
15 top labels, a decoy rank-2 label, a second space sharing video ids), dropped at the end."""

from __future__ import annotations

import dataclasses
import io
import re
from collections import Counter
from datetime import datetime, timezone

import numpy as np
import pytest
from PIL import Image

from catalogfs.features import delta_writer
from catalogfs.features.embedding_run import EmbedResult
from catalogfs.features.spaces import EmbeddingSpace
from catalogfs.features.tables import FRAME_EMBEDDINGS, FRAMES, VIDEO_EMBEDDINGS, VIDEO_LABELS
from catalogfs.jobs import run_report
from tests.helpers import with_database

DATABASE = "run_report_features"
SPACE = EmbeddingSpace("report_model", "1", "abc123", 8)
OTHER_SPACE = EmbeddingSpace("report_model", "2", "abc123", 8)
# 15 labels, 60 videos; the 10th and 11th labels tie at 3 videos (ties go by label name).
COUNTS = [8, 7, 6, 6, 5, 5, 4, 4, 3, 3, 3, 2, 2, 1, 1]
LABELS = [f"label_{(i * 7) % 15:02d}" for i in range(len(COUNTS))]  # names not in count order
UNLABELLED = "v_unlabelled"  # embedded, no label rows
MAX_POINTS, TOP, PER_LABEL, TABLE_ROWS = 20, 10, 4, 25
FRAME_TS = (0, 1000)


def _jpeg(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 36), colour).save(buf, format="JPEG")
    return buf.getvalue()


def _rows(schema, dicts):
    return [tuple(d.get(f.name) for f in schema.fields) for d in dicts]


@pytest.fixture(scope="module")
def catalogue(spark, cfg):
    """(cfg, {video_id: top label}) for SPACE; tables in their own database, dropped afterwards."""
    cfg = with_database(cfg, DATABASE)
    delta_writer.ensure_catalog(spark, cfg.storage, (FRAMES, FRAME_EMBEDDINGS, VIDEO_EMBEDDINGS, VIDEO_LABELS))
    rng = np.random.default_rng(3)
    assigned = [label for label, n in zip(LABELS, COUNTS) for _ in range(n)]
    top = {f"v{i:03d}": label for i, label in zip(rng.permutation(len(assigned)), assigned)}
    colours = {label: tuple(int(c) for c in rng.integers(30, 230, 3)) for label in LABELS}
    now = datetime.now(timezone.utc)
    frames, frame_emb, video_emb, labels = [], [], [], []
    common = {"model_name": SPACE.model_name, "model_version": SPACE.model_version, "computed_at": now}
    for space, vids in ((SPACE, sorted(top) + [UNLABELLED]), (OTHER_SPACE, sorted(top)[:10])):
        for vid in vids:
            vec = rng.normal(size=SPACE.dim)
            vec = [float(x) for x in vec / np.linalg.norm(vec)]
            ids = {"video_id": vid, "embedding_space": space.id, **common, "run_id": "fixture"}
            video_emb.append({**ids, "embedding": vec, "n_frames": len(FRAME_TS)})
            frame_emb += [{**ids, "frame_ts_ms": ts, "embedding": vec, "status": "ok"} for ts in FRAME_TS]
            if space == OTHER_SPACE:  # a label that would win if the space filter were missing
                labels.append({**ids, "label": "other_space_label", "score": 0.9, "rank": 1,
                               "n_frames_supporting": 2, "taxonomy_version": "t"})
            elif vid in top:  # rank 2: a decoy that would win if rank were ignored
                labels += [{**ids, "label": top[vid], "score": 0.8, "rank": 1, "n_frames_supporting": 2,
                            "taxonomy_version": "t"},
                           {**ids, "label": "decoy_rank_two", "score": 0.1, "rank": 2, "n_frames_supporting": 1,
                            "taxonomy_version": "t"}]
    jpegs = {label: _jpeg(colour) for label, colour in colours.items()}
    for vid in sorted(top) + [UNLABELLED]:
        image = jpegs.get(top.get(vid), _jpeg((0, 0, 0)))
        frames += [{"video_id": vid, "frame_ts_ms": ts, "frame_index": i, "image": image, "width": 64, "height": 36,
                    "source_uri": f"fixture://{vid}", "status": "ok", "extracted_at": now}
                   for i, ts in enumerate(FRAME_TS)]
    # An unreadable upload: a status row in frames and frame_embeddings, no video row.
    frames.append({"video_id": "v_broken", "frame_ts_ms": -1, "frame_index": -1, "source_uri": "fixture://b",
                   "status": "video_truncated", "error": "truncated", "extracted_at": now})
    frame_emb.append({"video_id": "v_broken", "frame_ts_ms": -1, "embedding_space": SPACE.id,
                      "status": "video_truncated", "error": "truncated", **common, "run_id": "fixture"})
    for table, dicts in ((FRAMES, frames), (FRAME_EMBEDDINGS, frame_emb), (VIDEO_EMBEDDINGS, video_emb),
                         (VIDEO_LABELS, labels)):
        (spark.createDataFrame(_rows(table.schema, dicts), table.schema).coalesce(1)
         .write.format("delta").mode("append").saveAsTable(cfg.storage.qualified(table.name)))
    yield cfg, top
    spark.sql(f"DROP SCHEMA IF EXISTS {cfg.storage.schema_name} CASCADE")


def _expected_top(top: dict[str, str]) -> list[tuple[str, int]]:
    return sorted(Counter(top.values()).items(), key=lambda kv: (-kv[1], kv[0]))[:TOP]


@pytest.fixture(scope="module")
def report(spark, catalogue):
    """The report written once, recording the rows every DataFrame.collect brought to the driver and
    what the projection drew (legend entries, per-point annotations)."""
    import matplotlib.axes

    cfg, _ = catalogue
    collected, legends, annotations, data = [], [], [], []
    frame_class = type(spark.range(1))
    original_collect = frame_class.collect
    original_legend, original_annotate = matplotlib.axes.Axes.legend, matplotlib.axes.Axes.annotate
    original_data = run_report.collect_report_data

    def counting_collect(self):
        rows = original_collect(self)
        collected.append(len(rows))
        return rows

    def recording_legend(self, *args, **kwargs):
        legends.append([handle.get_label() for handle in kwargs["handles"]])
        return original_legend(self, *args, **kwargs)

    def recording_data(*args, **kwargs):
        data.append(original_data(*args, **kwargs))
        return data[-1]

    def recording_annotate(self, *args, **kwargs):
        annotations.append(args[0])
        return original_annotate(self, *args, **kwargs)

    result = EmbedResult(run_id="report-test", space=SPACE, current_space=SPACE.id, published=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(frame_class, "collect", counting_collect)
        mp.setattr(frame_class, "toPandas", lambda self: pytest.fail("toPandas in the report"))
        mp.setattr(matplotlib.axes.Axes, "legend", recording_legend)
        mp.setattr(matplotlib.axes.Axes, "annotate", recording_annotate)
        mp.setattr(run_report, "collect_report_data", recording_data)
        path = run_report.write_run_report(spark, cfg, result, max_points=MAX_POINTS, top_labels=TOP,
                                           frames_per_label=PER_LABEL, table_rows=TABLE_ROWS)
    (report_data,) = data
    return path, path.read_text(), collected, legends, annotations, report_data


def test_top_labels_by_video_count_in_legend_table_and_contact_sheet(catalogue, report):
    cfg, top = catalogue
    path, page, _, legends, _, _ = report
    expected = _expected_top(top)
    rest = len(top) + 1 - sum(n for _, n in expected)  # the other labels' videos and the unlabelled one
    ranked = sorted(Counter(top.values()).items(), key=lambda kv: (-kv[1], kv[0]))
    assert ranked[TOP - 1][1] == ranked[TOP][1] == 3  # a tie at the cut: it goes by label name
    table = re.search(r'<table id="top-labels">(.*?)</table>', page).group(1)
    rows = re.findall(r"<tr><td>([^<]*)</td><td>(\d+)</td></tr>", table)
    assert rows == [(label, str(n)) for label, n in expected] + [("other (other labels, no label)", str(rest))]
    assert "61 videos in this space, 60 with a top label, 15 distinct top labels" in page
    # The legend: exactly the top labels with their number of videos, then "other" (the rest).
    (legend,) = legends
    assert legend == [f"{label} ({n} videos)" for label, n in expected] + [f"other ({rest} videos)"]
    assert "decoy_rank_two" not in page and "other_space_label" not in page
    # Contact sheet: exactly the top labels, in order, 4 frames each (every top label has >= 3 videos).
    sheet = re.search(r'<p id="contact-sheet">.*?: (.*)\.</p>', page).group(1)
    assert sheet == ", ".join(f"{label} ({PER_LABEL})" for label, _ in expected)
    with Image.open(path.parent / "contact_sheet.png") as img:
        assert img.height == TOP * (run_report.THUMB[1] + 10) + 10 <= run_report.MAX_SHEET_ROWS * 100 + 10
        assert img.width == 220 + PER_LABEL * (run_report.THUMB[0] + 6)


def test_contact_sheet_frames_are_ok_frames_of_each_labels_videos(spark, catalogue):
    cfg, top = catalogue
    data = run_report.collect_report_data(spark, cfg, SPACE.id, max_points=1000, top_labels=TOP,
                                          frames_per_label=PER_LABEL, table_rows=0)
    assert data.sample_ids == sorted(top) + [UNLABELLED]  # all of them; the other space's never join in
    assert list(data.sheet) == [label for label, _ in _expected_top(top)]
    for label, frames in data.sheet.items():
        assert len(frames) == PER_LABEL
        assert all(top[vid] == label and ts in FRAME_TS for vid, ts, _ in frames)
        videos = [vid for vid, _, _ in frames]
        assert len(set(videos)) == min(PER_LABEL, Counter(top.values())[label])  # distinct videos first
        assert len(set(zip(videos, [ts for _, ts, _ in frames]))) == PER_LABEL
    assert data.rows_collected == TOP + 1 + 2 + 2 * TOP * PER_LABEL + 61  # top labels, totals, statuses,
    # sheet keys and frames, projection (max_points > videos)


def test_projection_sample_bounded_deterministic_and_chosen_by_hash(spark, catalogue, report):
    from pyspark.sql import functions as F

    cfg, top = catalogue
    _, page, _, _, annotations, first = report
    second = run_report.collect_report_data(spark, cfg, SPACE.id, max_points=MAX_POINTS, top_labels=TOP,
                                            frames_per_label=0, table_rows=0)
    assert len(first.sample_ids) == MAX_POINTS and first.sample_ids == second.sample_ids
    np.testing.assert_array_equal(first.sample_vectors, second.sample_vectors)
    ids = sorted(top) + [UNLABELLED]
    hashes = {r["id"]: r["h"] for r in spark.createDataFrame([(v,) for v in ids], "id string")
              .select("id", F.xxhash64("id").alias("h")).collect()}
    assert first.sample_ids == sorted(sorted(ids, key=lambda v: (hashes[v], v))[:MAX_POINTS])
    assert first.sample_labels == [top.get(v) for v in first.sample_ids]
    assert first.total_videos == 61 and first.sample_vectors.shape == (MAX_POINTS, SPACE.dim)
    assert f"Projection of {MAX_POINTS} of 61 videos, chosen by hash of video_id" in page
    assert len(annotations) == MAX_POINTS  # <= 25 points: each named


def test_driver_collects_a_bounded_number_of_rows(report):
    _, _, collected, _, _, data = report
    # top labels, label totals, statuses (<= 3), projection, sheet keys and frames, video table
    bound = TOP + 1 + 3 + MAX_POINTS + 2 * TOP * PER_LABEL + TABLE_ROWS
    assert sum(collected) <= bound
    assert max(collected) <= max(MAX_POINTS, TOP * PER_LABEL, TABLE_ROWS)
    assert sum(collected) == data.rows_collected  # every collect of the report went through its counter


def test_video_table_is_bounded_with_a_query_for_all(spark, catalogue, report):
    import html

    cfg, top = catalogue
    _, page, _, _, _, _ = report
    assert f"The first {TABLE_ROWS} of 61 videos by video_id" in page
    table = re.search(r"<th>ok frames</th></tr>(.*?)</table>", page).group(1)
    rows = re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td><td>(\d+)</td></tr>", table)
    ids = sorted(top) + [UNLABELLED]
    assert rows == [(v, top.get(v, "—"), "2") for v in sorted(ids)[:TABLE_ROWS]]
    query = html.unescape(re.search(r"<pre>(.*?)</pre>", page, re.S).group(1))
    assert cfg.storage.qualified("video_embeddings") in query and f"'{SPACE.id}'" in query
    listed = spark.sql(query).collect()
    assert [(r.video_id, r.top_label, r.n_frames) for r in listed] == [(v, top.get(v), 2) for v in sorted(ids)]
    assert "current_video_labels" in page  # the run's space is the current one


def test_many_points_are_drawn_without_names(tmp_path, monkeypatch):
    """Past 25 points: no per-point text, small markers, legend of the top labels and "other"."""
    import matplotlib.axes

    calls, sizes = [], []
    original = matplotlib.axes.Axes.scatter
    monkeypatch.setattr(matplotlib.axes.Axes, "annotate", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(matplotlib.axes.Axes, "scatter",
                        lambda self, *a, **k: sizes.append(k["s"]) or original(self, *a, **k))
    rng = np.random.default_rng(0)
    n = 300
    labels = [f"l{i % 14}" for i in range(n)]
    data = run_report.ReportData(
        space="s", total_videos=5000, labelled_videos=5000, distinct_labels=14,
        top_labels=[(f"l{i}", 400 - i) for i in range(10)], sample_ids=[f"v{i:04d}" for i in range(n)],
        sample_labels=labels, sample_vectors=rng.normal(size=(n, 16)), sheet={}, table=[], statuses={})
    run_report._projection_png(tmp_path / "p.png", data)
    assert calls == [] and sizes and max(sizes) < 80
    with Image.open(tmp_path / "p.png") as img:
        assert img.format == "PNG" and len(img.convert("RGB").getcolors(maxcolors=1_000_000) or range(99)) > 10


def test_space_without_videos_writes_a_report_without_images(spark, catalogue):
    cfg, _ = catalogue
    empty = EmbeddingSpace("nothing_here", "1", "000", 8)
    path = run_report.write_run_report(spark, cfg, EmbedResult(run_id="report-test-empty", space=empty, published=True))
    page = path.read_text()
    assert "No videos in this space yet." in page and "<img" not in page
    assert not (path.parent / "projection.png").exists()


def test_a_run_with_nothing_to_do_writes_a_short_page_without_a_spark_job(spark, catalogue, monkeypatch):
    """An unchanged catalogue's run draws nothing: the space is what its last publishing run's
    report shows, and the report must not cost a Spark job on every scheduled no-op run."""
    cfg, _ = catalogue
    monkeypatch.setattr(type(spark.range(1)), "collect", lambda self: pytest.fail("a Spark job in a no-op run's report"))
    monkeypatch.setattr(run_report, "collect_report_data", lambda *a, **k: pytest.fail("report data collected"))
    result = EmbedResult(run_id="report-test-noop", space=SPACE, current_space=SPACE.id,
                         plan_scope="incremental plan: frames v3 → v3, 0 videos changed, 0 with frames to retry")
    path = run_report.write_run_report(spark, cfg, result)
    page = path.read_text()
    assert "Nothing new to embed or refresh" in page and "0 videos changed" in page and "<img" not in page
    assert not (path.parent / "projection.png").exists()


def test_the_page_escapes_every_value_and_fills_every_field():
    """The layout alone (no Spark): every template field is filled, and what comes from the
    catalogue (labels, video ids, the validation summary) is escaped, so a label cannot add markup."""
    label = "<script>x</script>"
    values = run_report.ReportValues(
        run_id="run<1>", run={"run id": "run<1>"}, space_statuses={"ok": 3}, run_statuses={"—": 0},
        validation="2 suites & 1 <b>warning</b>", data_docs='gx/index.html?a=1&b="2"', total=3, labelled=2,
        distinct=2, top_labels=[(label, 2)], rest=1, sample=2, frames_per_label=4, sheet=[(label, 1)],
        table=[("v&1", None, 2)], list_query="SELECT 'a' < 'b'", current_view="db.current_video_labels")
    page = run_report.render_report(values)
    assert "<script>" not in page and "<b>" not in page and "$" not in page
    assert page.count("&lt;script&gt;x&lt;/script&gt;") == 2  # the top-labels table and the contact sheet
    assert "<h1>catalogfs embed run run&lt;1&gt;</h1>" in page
    assert 'href="gx/index.html?a=1&amp;b=&quot;2&quot;"' in page
    assert "<tr><td>v&amp;1</td><td>—</td><td>2</td></tr>" in page and "SELECT &#x27;a&#x27; &lt; &#x27;b&#x27;" in page
    assert "Projection of 2 of 3 videos, chosen by hash of video_id" in page and "db.current_video_labels" in page
    empty = run_report.render_report(dataclasses.replace(values, total=0, current_view=None))
    assert "No videos in this space yet." in empty and "<img" not in empty and "current_video_labels" not in empty
