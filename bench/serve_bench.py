"""Shared catalogue benchmark (``make bench-serve``): commands on their own driver vs through a
running ``catalogfs serve``, measured in one run on the same inputs.

Two data roots get the same sample videos (the eight shipped ones, copied under ``--copies``
names each) and the same full extract + embed. Then, per mode:

* ``sql``: ``catalogfs sql "SELECT count(*) …"`` ``--repeat`` times (p50, min, max);
* ``noop_embed``: ``catalogfs embed`` with nothing new to embed;
* ``incremental``: ``catalogfs extract-frames`` of 10% more videos, then ``catalogfs embed`` of
  their frames (both timed, separately and together).

Then, on the server only (``consumers``), what a JDBC consumer sees: the latency of
``SELECT count(*) …`` on one beeline connection (as the reader the server made; the statement's
own time as beeline reports it), ``--repeat`` times while the server is idle and again while an
embed of as many new videos as the catalogue has runs through the same server (jobs and
consumers are in separate FAIR pools); and after the server's JVM is SIGKILLed, how long until
the supervisor of ``serve --detach`` has it answering again, and the first query's latency.

"own driver" runs every command with ``server.use=never`` (each starts its own Spark JVM, as
before ``catalogfs serve``); "server" starts ``catalogfs serve --detach`` on the second data root
(its start time is reported) and runs the same commands with ``server.use=always``. Each
command is a separate process, timed from fork to exit, as a user or a scheduler runs it.

    python bench/serve_bench.py --copies 2 --out bench/results   # ~12 minutes on 2 cores (make bench-serve)
    python bench/serve_bench.py --copies 1 --repeat 3          # quicker
"""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
import json
import os
from pathlib import Path
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = Path(__file__).resolve().parents[1]
CATALOGFS = str(Path(sys.executable).parent / "catalogfs")
QUERY = "SELECT count(*) AS n FROM catalog_features.current_video_labels WHERE rank = 1"


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class Mode:
    def __init__(self, name: str, root: Path, settings: list[str], use: str) -> None:
        self.name, self.root, self.use = name, root, use
        self.overrides = [a for s in [f"storage.data_root={root}", *settings] for a in ("--set", s)]

    def run(self, *args: str, use: str | None = None) -> float:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_GATEWAY", "SPARK_CONNECT"))}
        started = time.perf_counter()
        done = subprocess.run([CATALOGFS, *args, *self.overrides, "--set", f"server.use={use or self.use}",
                               "--quiet"], capture_output=True, text=True, env=env, timeout=1800)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"[{self.name}] catalogfs {' '.join(args)} exited {done.returncode}:\n"
                             f"{done.stderr[-4000:]}")
        return seconds


def _wait_until_free(root: Path, timeout: float = 120) -> None:
    from catalogfs.catalog_lock import metastore_holder

    deadline = time.monotonic() + timeout
    while metastore_holder(root / "metastore_db") is not None and time.monotonic() < deadline:
        time.sleep(0.5)


def _videos(folder: Path, copies: int, start: int = 0) -> list[Path]:
    """The eight sample videos, ``copies`` times under new names (``<id>_c<n>.mp4``)."""
    from catalogfs.jobs.samples import make_sample_videos

    originals = folder.parent / "originals"
    if not originals.exists():
        make_sample_videos(originals, seconds=2.0, fps=12, width=320, height=180)
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for n in range(start, start + copies):
        for video in sorted(originals.glob("*.mp4")):
            target = folder / f"{video.stem}_c{n}.mp4"
            shutil.copyfile(video, target)
            made.append(target)
    return made


def measure(mode: Mode, base: Path, *, copies: int, repeat: int) -> dict:
    figures: dict = {}
    sql = [mode.run("sql", QUERY) for _ in range(repeat)]
    figures["sql_p50_s"], figures["sql_min_s"], figures["sql_max_s"] = statistics.median(sql), min(sql), max(sql)
    figures["noop_embed_s"] = mode.run("embed")
    extra = max(1, round(8 * copies * 0.10))  # 10% more videos
    new = base / f"new-{mode.name.replace(' ', '_')}"
    _videos(new, 1, start=copies)  # names the catalogue has not seen
    for video in sorted(new.glob("*.mp4"))[extra:]:
        video.unlink()
    figures["incremental_videos"] = extra
    figures["incremental_extract_s"] = mode.run("extract-frames", "--input", str(new))
    figures["incremental_embed_s"] = mode.run("embed")
    figures["incremental_total_s"] = figures["incremental_extract_s"] + figures["incremental_embed_s"]
    return figures


def _beeline_latencies(mode: Mode, statements: list[str], folder: Path) -> list[float]:
    """Each statement's own time on one beeline connection (beeline prints "(0.123 seconds)")."""
    import re

    import pyspark

    from catalogfs.server_auth import default_reader
    from catalogfs.server_record import read_record

    user, password = default_reader(mode.root)
    secret = folder / ".pw"
    secret.touch(mode=0o600)
    secret.write_text(password)
    script = folder / "consumer.sql"
    script.write_text("".join(f"{statement};\n" for statement in statements))
    jars = Path(pyspark.__file__).parent / "jars"
    done = subprocess.run(["java", "-cp", f"{jars}/*", "org.apache.hive.beeline.BeeLine", "-u",
                           read_record(mode.root).jdbc_url, "-n", user, "-w", str(secret), "--outputformat=csv2",
                           "-f", str(script)], capture_output=True, text=True, timeout=1800)
    times = [float(t) for t in re.findall(r"\(([0-9.]+) seconds\)", done.stdout + done.stderr)]
    if done.returncode != 0 or len(times) != len(statements):
        raise SystemExit(f"beeline: exit {done.returncode}, {len(times)} timings:\n{done.stderr[-3000:]}")
    return times


def consumers(mode: Mode, base: Path, *, copies: int, repeat: int) -> dict:
    """Consumer latency idle, during an embed through the same server, and after a killed JVM."""
    from catalogfs.catalog_lock import find_server
    from catalogfs.config import load_config
    from catalogfs.server_record import pid_alive, read_record

    folder = base / "consumer"
    folder.mkdir(exist_ok=True)
    statements = [QUERY] * repeat
    figures: dict = {}
    idle = _beeline_latencies(mode, statements, folder)
    figures["consumer_idle_p50_s"], figures["consumer_idle_max_s"] = statistics.median(idle), max(idle)
    new = base / "new-consumers"
    _videos(new, copies, start=copies + 1)
    mode.run("extract-frames", "--input", str(new))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_GATEWAY", "SPARK_CONNECT"))}
    started = time.perf_counter()
    job = subprocess.Popen([CATALOGFS, "embed", *mode.overrides, "--set", "server.use=always", "--quiet"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(15)  # past planning: the embed stage's tasks hold the slots
    busy = _beeline_latencies(mode, statements, folder)
    finished_during = job.poll() is not None
    job.communicate(timeout=1800)
    figures["embed_during_s"] = time.perf_counter() - started
    figures["consumer_during_embed_p50_s"], figures["consumer_during_embed_max_s"] = statistics.median(busy), max(busy)
    figures["embed_finished_before_the_queries_did"] = finished_during
    storage = load_config([], [f"storage.data_root={mode.root}"]).storage
    record = read_record(mode.root)
    os.kill(record.jvm_pid, 9)
    killed = time.perf_counter()
    while True:
        server = find_server(storage)
        if server is not None and server.pid != record.pid and pid_alive(server.jvm_pid):
            try:
                first = _beeline_latencies(mode, [QUERY], folder)[0]
                break
            except SystemExit:
                pass
        if time.perf_counter() - killed > 600:
            raise SystemExit("the server did not come back within 600 s of its JVM being killed")
        time.sleep(1)
    figures["killed_to_answering_s"] = time.perf_counter() - killed
    figures["first_query_after_restart_s"] = first
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=3, help="copies of the 8 sample videos (default 3: 24 videos)")
    parser.add_argument("--repeat", type=int, default=10, help="catalogfs sql runs per mode (default 10)")
    parser.add_argument("--out", type=Path, default=None, help="folder for serve-<timestamp>.json")
    args = parser.parse_args(argv)

    base = Path(tempfile.mkdtemp(prefix="catalogfs-serve-bench-"))
    connect_port, jdbc_port = _free_ports(2)
    settings = ["spark.master=local[2]", f"server.connect_port={connect_port}", f"server.jdbc_port={jdbc_port}"]
    own = Mode("own driver", base / "own", settings, "never")
    served = Mode("server", base / "served", settings, "always")
    results: dict = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                     "videos": 8 * args.copies, "repeat": args.repeat, "modes": {}}
    try:
        inputs = base / "videos"
        _videos(inputs, args.copies)
        for mode in (own, served):  # the same catalogue in both: full extract + embed
            print(f"[{mode.name}] full run on {8 * args.copies} videos …", file=sys.stderr, flush=True)
            mode.run("extract-frames", "--input", str(inputs), use="never")
            mode.run("embed", use="never")
        _wait_until_free(served.root)  # the last command's JVM may still be exiting
        start = time.perf_counter()
        subprocess.run([CATALOGFS, "serve", "--detach", *served.overrides], check=True, capture_output=True,
                       timeout=600)
        results["server_start_s"] = time.perf_counter() - start
        for mode in (own, served):
            print(f"[{mode.name}] measuring …", file=sys.stderr, flush=True)
            results["modes"][mode.name] = measure(mode, base, copies=args.copies, repeat=args.repeat)
        print("[server] consumers: idle, during an embed, after a killed JVM …", file=sys.stderr, flush=True)
        results["consumers"] = consumers(served, base, copies=args.copies, repeat=args.repeat)
    finally:
        subprocess.run([CATALOGFS, "serve", "--stop", *served.overrides], capture_output=True, timeout=300)
        shutil.rmtree(base, ignore_errors=True)

    a, b = results["modes"]["own driver"], results["modes"]["server"]
    print(f"\n{results['videos']} videos, {os.cpu_count()} cores; server start {results['server_start_s']:.1f} s\n")
    print("| what | own driver (s) | through catalogfs serve (s) | ratio |")
    print("|---|---|---|---|")
    for key, label in (("sql_p50_s", f"`catalogfs sql` count(*), p50 of {args.repeat}"),
                       ("noop_embed_s", "`catalogfs embed`, nothing new"),
                       ("incremental_extract_s", f"extract-frames of {a['incremental_videos']} new videos (+10%)"),
                       ("incremental_embed_s", "embed of their frames"),
                       ("incremental_total_s", "+10% run (extract + embed)")):
        print(f"| {label} | {a[key]:.2f} | {b[key]:.2f} | {a[key] / b[key]:.1f}x |")
    c = results["consumers"]
    print(f"\nJDBC consumer, `{QUERY}` on one connection, p50 (max) of {args.repeat}:")
    print(f"  idle server: {c['consumer_idle_p50_s']:.2f} s ({c['consumer_idle_max_s']:.2f} s)")
    print(f"  while an embed of {8 * args.copies} new videos runs through it ({c['embed_during_s']:.0f} s): "
          f"{c['consumer_during_embed_p50_s']:.2f} s ({c['consumer_during_embed_max_s']:.2f} s) = "
          f"{c['consumer_during_embed_p50_s'] / c['consumer_idle_p50_s']:.2f}x idle"
          + (" (the embed ended before the queries did)" if c["embed_finished_before_the_queries_did"] else ""))
    print(f"  Spark JVM killed: answering again after {c['killed_to_answering_s']:.1f} s (supervised restart), "
          f"first query {c['first_query_after_restart_s']:.2f} s")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"serve-{datetime.now():%Y%m%d-%H%M%S}.json"
        path.write_text(json.dumps(results, indent=2))
        print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
