"""One catalogue shared through `catalogfs serve`: jobs run through it and write what they write on
their own, and readers over JDBC and Spark Connect see whole snapshots while jobs publish and promote.

One real server for the module (its own data root, free loopback ports, the real EfficientNet-Lite0
model). Jobs are `catalogfs` commands in separate processes, as a user runs them, with
``server.use=always`` (a command that did not reach the server fails). The same jobs on their own
driver are this test run's session (tests/conftest.py), in another database.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
import csv
from dataclasses import dataclass
import io
import json
from pathlib import Path
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from catalogfs.jobs import embed_frames, extract_frames
from catalogfs.jobs.samples import SAMPLE_PHOTOS, make_sample_videos
from tests.helpers import (
    beeline_csv_lines, beeline_script, free_ports, server_env, stop_process_group, wait_until_served, with_database,
)
from catalogfs.server_auth import default_reader
from catalogfs.server_record import read_record

pytestmark = [pytest.mark.spark, pytest.mark.slow]

CATALOGFS = str(Path(sys.executable).parent / "catalogfs")
FIRST = tuple(p for p in SAMPLE_PHOTOS if p.video_id in ("cat_chelsea", "coffee_cup"))
LATER = tuple(p for p in SAMPLE_PHOTOS if p.video_id == "astronaut")
MODEL = "efficientnet_lite0_imagenet"
DB = "catalog_features"
READS = {  # what the readers ask, by the header of its result
    "embedding_space,video_id,label,rank":
        f"SELECT embedding_space, video_id, label, rank FROM {DB}.current_video_labels ORDER BY video_id, rank",
    "embedding_space,video_id,n_frames":
        f"SELECT embedding_space, video_id, n_frames FROM {DB}.current_video_embeddings ORDER BY video_id",
}

CONNECT_READER = """
import csv, io, json, os, sys
from pyspark.sql import SparkSession

def line(values):  # as beeline's csv2 writes a row
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(values)
    return out.getvalue()

url, stop, out, queries = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
spark = SparkSession.builder.remote(url).create()
with open(out, "a") as sink:
    while not os.path.exists(stop):
        for header, query in queries.items():
            try:
                rows = [line(r) for r in spark.sql(query).collect()]
                sink.write(json.dumps({"header": header, "rows": rows}) + "\\n")
            except Exception as exc:
                sink.write(json.dumps({"header": header, "error": str(exc).splitlines()[0]}) + "\\n")
            sink.flush()
spark.stop()
"""


@dataclass
class Served:
    base: Path
    root: Path
    overrides: list[str]
    videos: Path

    def run(self, *args: str, spark: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        """``catalogfs ARGS`` on this data root; one that uses Spark must go through the server."""
        done = subprocess.run([CATALOGFS, *args, *self.overrides, "--set", "server.use=always"],
                              capture_output=True, text=True, timeout=timeout, env=server_env())
        assert done.returncode == 0, f"catalogfs {' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}"
        assert not spark or "using the catalogue server" in done.stderr
        return done

    def rows(self, query: str) -> list[dict]:
        return json.loads(self.run("sql", "--json", "--limit", "100000", query).stdout)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("shared")
    root, videos = base / "data", base / "videos"
    make_sample_videos(videos, seconds=2.0, fps=12, width=320, height=180, photos=FIRST)
    connect_port, jdbc_port = free_ports(2)
    settings = [f"storage.data_root={root}", "spark.master=local[2]", "inference.batch_size=8",
                f"server.connect_port={connect_port}", f"server.jdbc_port={jdbc_port}"]
    overrides = [a for s in settings for a in ("--set", s)]
    output = base / "serve.out"
    with open(output, "wb") as out:
        proc = subprocess.Popen([CATALOGFS, "serve", *overrides], stdout=out, stderr=subprocess.STDOUT,
                                env=server_env(), start_new_session=True)
    try:
        wait_until_served(root, proc, output, timeout=240)
        yield Served(base, root, overrides, videos)
    finally:
        stop_process_group(proc)


def _table(spark, served: Served, table: str):
    """A table of the served catalogue, read by path in this test's own session."""
    location = served.rows(f"DESCRIBE DETAIL {DB}.{table}")[0]["location"]
    return spark.read.format("delta").load(location)


def _by_key(rows, key, value):
    return {tuple(r[k] for k in key): value(r) for r in rows}


def test_jobs_through_the_server_write_what_they_write_on_their_own(spark, cfg, served):
    served.run("extract-frames", "--input", str(served.videos))
    embedded = served.run("embed")
    assert "published" in embedded.stdout

    own = with_database(cfg, "unserved_features")  # the same jobs on this test run's own driver
    extract_frames.run(spark, own, input=str(served.videos))
    embed_frames.run(spark, own)

    def both(table: str):
        return _table(spark, served, table).collect(), spark.table(own.storage.qualified(table)).collect()

    served_frames, own_frames = both("frames")
    frame = ("video_id", "frame_ts_ms")
    assert _by_key(served_frames, frame, lambda r: (r.status, r.content_sha256)) == \
        _by_key(own_frames, frame, lambda r: (r.status, r.content_sha256))
    assert len(served_frames) == 4

    served_fe, own_fe = (_by_key(rows, frame, lambda r: r) for rows in both("frame_embeddings"))
    assert served_fe.keys() == own_fe.keys()
    for key, row in served_fe.items():
        other = own_fe[key]
        assert (row.status, row.labels, row.model_name) == (other.status, other.labels, other.model_name)
        np.testing.assert_allclose(row.embedding, other.embedding, atol=1e-6)
        np.testing.assert_allclose(row.label_scores, other.label_scores, atol=1e-6)

    served_ve, own_ve = (_by_key(rows, ("video_id",), lambda r: r) for rows in both("video_embeddings"))
    assert served_ve.keys() == own_ve.keys() == {("cat_chelsea",), ("coffee_cup",)}
    for key, row in served_ve.items():
        np.testing.assert_allclose(row.embedding, own_ve[key].embedding, atol=1e-6)
        assert row.n_frames == own_ve[key].n_frames

    served_labels, own_labels = both("video_labels")
    label = lambda r: (r.label, round(r.score, 5), r.n_frames_supporting)  # noqa: E731
    assert _by_key(served_labels, ("video_id", "rank"), label) == _by_key(own_labels, ("video_id", "rank"), label)


class _JdbcReader(threading.Thread):
    """beeline runs (one JVM, one connection, a few statements each) until ``stop`` is set."""

    def __init__(self, url: str, folder: Path, stop: threading.Event, login: tuple[str, str] | None) -> None:
        super().__init__(daemon=True)
        self.url, self.folder, self.stop, self.reads, self.errors = url, folder, stop, [], []
        self.login = login  # the reader the server made at its first start
        folder.mkdir(parents=True, exist_ok=True)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                done = beeline_script(self.url, self.folder, [q for q in READS.values() for _ in range(2)],
                                      login=self.login)
            except subprocess.TimeoutExpired as exc:
                self.errors.append(f"beeline timed out: {exc}")
                continue
            self.errors += [line for line in done.stderr.splitlines() if line.startswith("Error:")]
            if done.returncode != 0:
                self.errors.append(f"beeline exited {done.returncode}")
            current = None
            # csv2 quotes a value that holds a comma with NUL characters: quote it as csv does
            for line in filter(None, (line.replace("\x00", '"') for line in beeline_csv_lines(done))):
                if line in READS:
                    current = {"header": line, "rows": []}
                    self.reads.append(current)
                elif current is not None:
                    current["rows"].append(line)


def _connect_reads(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _wait_for(what: str, condition, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _csv_line(values) -> str:
    """One row as beeline's csv2 output writes it (quoted where a value holds a comma)."""
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(values)
    return out.getvalue()


def _expected(served: Served, space: str) -> dict[str, list[str]]:
    """The rows each read returns while ``space`` is current (the readers' format)."""
    out = {}
    for header, query in READS.items():
        table = query.split(" FROM ")[1].split()[0].replace(".current_", ".")
        columns = header.split(",")
        rows = served.rows(f"SELECT {header} FROM {table} WHERE embedding_space = '{space}' "
                           f"ORDER BY {query.split('ORDER BY ')[1]}")
        out[header] = [_csv_line([r[c] for c in columns]) for r in rows]
    return out


def test_readers_see_whole_snapshots_while_jobs_publish_and_promote(served, default_bundle):
    """A JDBC and a Spark Connect reader query the current_* views in a loop while one job
    publishes a new space (which is then promoted) and another extracts new videos: no read fails
    and every read returns exactly the rows of one space (the one before or the one after). (One
    reader of each kind: with two of each, the 2-core machine spent most of the test starting
    beeline JVMs.)"""
    first = served.rows(f"SELECT DISTINCT embedding_space FROM {DB}.current_video_labels")
    assert len(first) == 1, "the first test publishes the first space"
    space_a = first[0]["embedding_space"]
    expected = {space_a: _expected(served, space_a)}
    served.run("models", "register", "--from", str(default_bundle), "--name", MODEL, "--alias", "challenger",
               spark=False)
    later = served.base / "later_videos"
    make_sample_videos(later, seconds=2.0, fps=12, width=320, height=180, photos=LATER)

    record = read_record(served.root)
    stop_file, stop = served.base / "readers.stop", threading.Event()
    connect_outputs = [served.base / "connect.jsonl"]
    connect = [subprocess.Popen([sys.executable, "-c", CONNECT_READER, record.connect_url, str(stop_file), str(out),
                                 json.dumps(READS)], env=server_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True) for out in connect_outputs]
    jdbc = [_JdbcReader(record.jdbc_url, served.base / "jdbc", stop, default_reader(served.root))]
    try:
        for reader in jdbc:
            reader.start()
        _wait_for("a first read of each reader",
                  lambda: all(_connect_reads(o) for o in connect_outputs) and all(r.reads for r in jdbc))
        with ThreadPoolExecutor(1) as pool:  # a second job on the same catalogue, at the same time
            extract = pool.submit(served.run, "extract-frames", "--input", str(later))
            served.run("embed", "--model", f"{MODEL}@challenger")
            extract.result(timeout=600)
        spaces = {r["embedding_space"] for r in served.rows(f"SELECT DISTINCT embedding_space FROM {DB}.video_labels")}
        (space_b,) = spaces - {space_a}
        served.run("spaces", "promote", space_b)
        promoted_at = [len(_connect_reads(o)) for o in connect_outputs], [len(r.reads) for r in jdbc]
        _wait_for("a read of each reader after the promote",
                  lambda: all(len(_connect_reads(o)) > n for o, n in zip(connect_outputs, promoted_at[0]))
                  and all(len(r.reads) > n for r, n in zip(jdbc, promoted_at[1])))
    finally:
        stop_file.touch()
        stop.set()
        for proc in connect:
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for reader in jdbc:
            reader.join(timeout=240)

    expected[space_b] = _expected(served, space_b)
    assert expected[space_b] != expected[space_a]
    frames = {r["video_id"] for r in served.rows(f"SELECT DISTINCT video_id FROM {DB}.frames")}
    assert frames == {"cat_chelsea", "coffee_cup", "astronaut"}  # the concurrent extract published
    readers = [("connect", _connect_reads(o)) for o in connect_outputs] + [("jdbc", r.reads) for r in jdbc]
    assert [proc.returncode for proc in connect] == [0], [proc.stderr.read()[-2000:] for proc in connect]
    assert [r.errors for r in jdbc] == [[]]
    for kind, reads in readers:
        assert [r for r in reads if "error" in r] == [], kind
        for header in READS:  # per view: the old space's rows, then the new space's, each whole
            seen = []
            for read in (r for r in reads if r["header"] == header):
                matches = [space for space, rows in expected.items() if rows[header] == read["rows"]]
                assert matches, f"a {kind} read returned rows of no single space and version: {read}"
                seen.append(matches[0])
            assert seen[0] == space_a and seen[-1] == space_b, (kind, header, seen)
            assert set(seen[seen.index(space_b):]) == {space_b}, f"a {kind} reader went back: {seen}"
