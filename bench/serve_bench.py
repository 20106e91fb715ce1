"""Shared catalogue benchmark (``make bench-serve``): commands on their own driver vs through a
running ``catalogfs serve``, measured in one run on the same inputs.

Two data roots get the same sample videos (the eight shipped ones, copied under ``--copies``
names each) and the same full extract + embed. Then, per mode:

* ``sql``: ``catalogfs sql "SELECT count(*) …"`` ``--repeat`` times (p50, min, max);
* ``noop_embed``: ``catalogfs embed`` with nothing new to embed;
* ``incremental``: ``catalogfs extract-frames`` of 10% more videos, then ``catalogfs embed`` of
  their frames (both timed, separately and together).

"own driver" runs every command with ``server.use=never`` (each starts its own Spark JVM, as
before ``catalogfs serve``); "server" starts ``catalogfs serve --detach`` on the second data root
(its start time is reported) and runs the same commands with ``server.use=always``. Each
command is a separate process, timed from fork to exit, as a user or a scheduler runs it.

    python bench/serve_bench.py --copies 2 --out bench/results   # 8.5 minutes on 2 cores (make bench-serve)
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
    from jobs.samples import make_sample_videos

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
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"serve-{datetime.now():%Y%m%d-%H%M%S}.json"
        path.write_text(json.dumps(results, indent=2))
        print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
