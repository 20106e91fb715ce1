"""The scale harness (``make bench-scale``): does a run cost what changed, not the catalogue's size?

For each catalogue size (default 1 000 and 10 000 videos of 3 frames each) a child process with
its own Spark session (the warm driver a ``catalogfs serve`` would be) and its own data root:

1. writes a ``frames`` table of synthetic frame rows (320x180 JPEG crops of real photos, distinct
   per frame: the real model sees real pixels), 90% of the videos first;
2. warms the session with a small run on another database (Python workers, model load, JIT), as a
   long-lived server would be;
3. times the real ``embed`` command in-process (``jobs.embed_frames.run``: MLflow run, registry
   resolution, plan, embed UDF, staging, Great Expectations, Delta MERGEs, lineage, run report):
   ``full`` (the 90%);
4. then, in a second child process (a fresh driver, warmed the same way, as the long-lived server
   that runs the daily incremental runs): ``noop`` (nothing changed) and ``ten_percent`` (the last
   10% of the videos' frames appended to ``frames``, then a run);
5. reads the peak RSS (VmHWM) of the driver JVM, the Python driver and the Python workers of each
   process. In ``local[N]`` the driver JVM also runs the tasks, so the full run's peak includes the
   executor's share of 10x the frames; the incremental process's peak is the driver a server keeps.

Figures go to ``<out>/scale-<timestamp>.json`` and are printed as a markdown table: per size the
three runs (seconds, share of the full run, frames embedded, per-stage clock) and peak memory,
then the ratios the issue asks for: noop ≤ 10% and +10% ≤ 25% of full at each size, driver peak
RSS at the largest size ≤ 1.2x that at the smallest.

    python bench/scale_bench.py                       # 1 000 and 10 000 videos (~20 min on 2 cores)
    python bench/scale_bench.py --videos 200 --frames-per-video 2   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

POOL = 997  # distinct JPEGs; frame i of the catalogue shows crop i mod POOL (prime: neighbours differ)
SIZE = (320, 180)


def jpeg_pool(n: int = POOL) -> list[bytes]:
    """``n`` distinct 320x180 JPEGs cut from real photos (scikit-image's sample photos)."""
    from engine_bench import sample_jpegs

    return sample_jpegs(n, size=SIZE, quality=85)


def write_frames_parquet(path: Path, videos: int, per_video: int) -> None:
    """The synthetic frames of ``videos`` videos as Parquet (``frames`` columns, status ok)."""
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    pool = jpeg_pool()
    shas = [hashlib.sha256(j).hexdigest() for j in pool]
    n = videos * per_video
    idx = [(i * 7) % POOL for i in range(n)]
    now = datetime.now(timezone.utc)
    table = pa.table({
        "video_id": [f"v{i // per_video:07d}" for i in range(n)],
        "frame_ts_ms": pa.array([(i % per_video) * 1000 for i in range(n)], pa.int64()),
        "frame_index": pa.array([i % per_video for i in range(n)], pa.int32()),
        "image": pa.array([pool[k] for k in idx], pa.binary()),
        "width": pa.array([SIZE[0]] * n, pa.int32()),
        "height": pa.array([SIZE[1]] * n, pa.int32()),
        "content_sha256": [shas[k] for k in idx],
        "source_uri": [f"bench://v{i // per_video:07d}.mp4" for i in range(n)],
        "status": ["ok"] * n,
        "error": pa.array([None] * n, pa.string()),
        "extracted_at": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
    })
    pq.write_table(table, path, row_group_size=4096)


def _hwm_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _driver_jvm_pid() -> int | None:
    """The Spark driver JVM this process started (its java child)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(next(line for line in status.splitlines() if line.startswith("PPid:")).split()[1])
        if ppid == os.getpid() and b"java" in cmdline.split(b"\0")[0]:
            return int(entry.name)
    return None


def bench_config(workdir: Path, cores: int, batch: int, database: str = "catalogfs"):
    from catalogfs.config import DEFAULT_CONF_DIR, load_config

    return load_config([DEFAULT_CONF_DIR / "local.yaml"], [
        f"storage.data_root={workdir / 'data'}", f"storage.database={database}", f"spark.master=local[{cores}]",
        f"inference.batch_size={batch}", "spark.app_name=catalogfs-scale-bench", "server.use=never",
    ])


def _peaks() -> dict:
    from pipeline_bench import python_workers

    jvm = _driver_jvm_pid()
    workers = python_workers()
    return {"driver_jvm": _hwm_mb(jvm) if jvm else 0.0,
            "driver_python": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "python_workers_max": max((w["peak_rss_mb"] for w in workers), default=0.0),
            "python_workers": len(workers)}


def _timed_run(spark, cfg, label: str, videos: int) -> dict:
    import shutil

    from catalogfs.jobs import embed_frames

    start = time.perf_counter()
    result = embed_frames.run(spark, cfg)
    seconds = time.perf_counter() - start
    keep = os.environ.get("SCALE_BENCH_REPORTS")  # --reports: keep each run's HTML report to look at
    if keep and result.report_html:
        shutil.copytree(Path(result.report_html).parent, Path(keep) / f"{videos}-{label}", dirs_exist_ok=True)
    print(f"[{videos} videos] {label}: {seconds:.1f} s, {result.frames_embedded} frames embedded, "
          f"stages {result.stage_summary}; {result.plan_scope}", flush=True)
    return {"seconds": seconds, "run_embedding_seconds": result.seconds, "frames_total": result.frames_total,
            "frames_embedded": result.frames_embedded, "forward_passes": result.forward_passes,
            "published": result.published, "plan_scope": result.plan_scope,
            "stage_seconds": {k: round(v, 2) for k, v in result.stage_seconds.items()},
            "outside_run_seconds": seconds - result.seconds}


def run_phase(workdir: Path, phase: str, videos: int, per_video: int, cores: int, batch: int) -> dict:
    """One process of one catalogue size: ``full`` (frames, warm-up, the full run) or
    ``incremental`` (warm-up, then the no-op and the +10% runs) with the process's peak RSS."""
    from pyspark.sql import functions as F

    from catalogfs.spark import build_spark
    from catalogfs.tracking import configure_mlflow
    from catalogfs.features import delta_writer
    from catalogfs.features.tables import FRAMES
    from catalogfs.jobs import embed_frames

    parquet = workdir / "frames.parquet"
    t0 = time.perf_counter()
    if phase == "full":
        write_frames_parquet(parquet, videos, per_video)
    cfg = bench_config(workdir, cores, batch)
    spark = build_spark(cfg)
    try:
        configure_mlflow(cfg)
        raw = spark.read.parquet(str(parquet)).select(*[f.name for f in FRAMES.schema.fields])
        cut = f"v{int(videos * 0.9):07d}"  # the last 10% of the videos arrive later
        first, later = raw.where(F.col("video_id") < cut), raw.where(F.col("video_id") >= cut)

        # warm-up on another database: what a long-lived server has already paid (new frames each
        # time, so the model runs in this process's Python workers)
        warm_cfg = bench_config(workdir, cores, batch, database="warmup")
        delta_writer.ensure_catalog(spark, warm_cfg.storage)
        (raw.limit(cores * batch).withColumn("video_id", F.concat(F.lit(f"{phase}_"), "video_id"))
         .write.format("delta").mode("append").saveAsTable(warm_cfg.storage.qualified(FRAMES.name)))
        embed_frames.run(spark, warm_cfg)
        embed_frames.run(spark, warm_cfg)  # and a no-op run
        setup_seconds = time.perf_counter() - t0

        table = cfg.storage.qualified(FRAMES.name)
        runs = {}
        if phase == "full":
            delta_writer.ensure_catalog(spark, cfg.storage)
            first.write.format("delta").mode("append").saveAsTable(table)
            runs["full"] = _timed_run(spark, cfg, "full", videos)
        else:
            runs["noop"] = _timed_run(spark, cfg, "noop", videos)
            later.write.format("delta").mode("append").saveAsTable(table)
            runs["ten_percent"] = _timed_run(spark, cfg, "ten_percent", videos)
        return {"setup_seconds": setup_seconds, "runs": runs, "peak_rss_mb": _peaks()}
    finally:
        spark.stop()


def run_size(workdir: Path, videos: int, per_video: int, cores: int, batch: int) -> dict:
    """Both processes of one catalogue size; the figures of the size."""
    phases = {}
    for phase in ("full", "incremental"):
        cmd = [sys.executable, __file__, "--child", str(videos), "--phase", phase, "--workdir", str(workdir),
               "--frames-per-video", str(per_video), "--cores", str(cores), "--batch", str(batch)]
        subprocess.run(cmd, check=True, cwd=ROOT)
        phases[phase] = json.loads((workdir / f"{phase}.json").read_text())
    runs = {**phases["full"]["runs"], **phases["incremental"]["runs"]}
    full = runs["full"]["seconds"]
    return {"videos": videos, "frames_per_video": per_video, "frames": videos * per_video,
            "setup_seconds": {p: f["setup_seconds"] for p, f in phases.items()}, "runs": runs,
            "noop_share_of_full": runs["noop"]["seconds"] / full,
            "ten_percent_share_of_full": runs["ten_percent"]["seconds"] / full,
            "peak_rss_mb": phases["incremental"]["peak_rss_mb"],
            "full_run_peak_rss_mb": phases["full"]["peak_rss_mb"]}


def markdown(report: dict) -> str:
    sizes = report["sizes"]
    lines = [f"Scale benchmark {report['started']} ({report['machine']}, local[{report['cores']}], "
             f"batch {report['batch']})", "",
             "| videos (frames) | full run s | no-op s (share) | +10% s (share) | frames embedded full / +10% "
             "| driver JVM peak MB: incremental (full) | driver Python peak MB: incremental (full) "
             "| worker peak MB |",
             "|---|---|---|---|---|---|---|---|"]
    for s in sizes:
        r = s["runs"]
        rss, full_rss = s["peak_rss_mb"], s["full_run_peak_rss_mb"]
        lines.append(
            f"| {s['videos']:,} ({s['frames']:,}) | {r['full']['seconds']:.1f} | {r['noop']['seconds']:.1f} "
            f"({s['noop_share_of_full']:.3f}) | {r['ten_percent']['seconds']:.1f} "
            f"({s['ten_percent_share_of_full']:.3f}) | {r['full']['frames_embedded']:,} / "
            f"{r['ten_percent']['frames_embedded']:,} | {rss['driver_jvm']:.0f} ({full_rss['driver_jvm']:.0f}) "
            f"| {rss['driver_python']:.0f} ({full_rss['driver_python']:.0f}) "
            f"| {max(rss['python_workers_max'], full_rss['python_workers_max']):.0f} |")
    lines += ["", "Per-stage clock (s; `outside` = MLflow run, registry, report, around `run_embedding`):", "",
              "| videos | run | " + " | ".join(STAGES) + " | outside |", "|---|---|" + "---|" * (len(STAGES) + 1)]
    for s in sizes:
        for label, r in s["runs"].items():
            cells = " | ".join(f"{r['stage_seconds'].get(k, 0.0):.1f}" for k in STAGES)
            lines.append(f"| {s['videos']:,} | {label} | {cells} | {r['outside_run_seconds']:.1f} |")
    lines += ["", "| check | figure | target |", "|---|---|---|"]
    for s in sizes:
        lines.append(f"| no-op / full at {s['videos']:,} | {s['noop_share_of_full']:.3f} | ≤ 0.10 "
                     f"{'✓' if s['noop_share_of_full'] <= 0.10 else '✗'} |")
        lines.append(f"| +10% / full at {s['videos']:,} | {s['ten_percent_share_of_full']:.3f} | ≤ 0.25 "
                     f"{'✓' if s['ten_percent_share_of_full'] <= 0.25 else '✗'} |")
    if len(sizes) > 1:
        for kind in ("driver_jvm", "driver_python"):
            ratio = sizes[-1]["peak_rss_mb"][kind] / max(sizes[0]["peak_rss_mb"][kind], 1e-9)
            lines.append(f"| {kind} peak RSS, incremental runs, {sizes[-1]['videos']:,} / {sizes[0]['videos']:,} "
                         f"| {ratio:.2f} | ≤ 1.2 {'✓' if ratio <= 1.2 else '✗'} |")
            full = sizes[-1]["full_run_peak_rss_mb"][kind] / max(sizes[0]["full_run_peak_rss_mb"][kind], 1e-9)
            lines.append(f"| {kind} peak RSS, full runs (10x the frames), {sizes[-1]['videos']:,} / "
                         f"{sizes[0]['videos']:,} | {full:.2f} | report |")
    return "\n".join(lines)


STAGES = ("plan", "embed", "stage", "validate", "publish", "lineage")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", default="1000,10000", help="comma list of catalogue sizes (videos)")
    parser.add_argument("--frames-per-video", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--reports", type=Path, default=None,
                        help="copy each run's HTML report (with its pictures) under this folder")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--phase", default="full", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child is not None:
        figures = run_phase(args.workdir, args.phase, args.child, args.frames_per_video, args.cores, args.batch)
        (args.workdir / f"{args.phase}.json").write_text(json.dumps(figures))
        return 0

    if args.reports:
        os.environ["SCALE_BENCH_REPORTS"] = str(args.reports.resolve())
    started = datetime.now(timezone.utc)
    report = {"started": started.isoformat(timespec="seconds"), "cores": args.cores, "batch": args.batch,
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
              "sizes": []}
    with tempfile.TemporaryDirectory(prefix="catalogfs-scale-") as tmp:
        for videos in (int(v) for v in args.videos.split(",")):
            workdir = Path(tmp) / f"v{videos}"
            workdir.mkdir()
            report["sizes"].append(run_size(workdir, videos, args.frames_per_video, args.cores, args.batch))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"scale-{started.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2))
    print(markdown(report))
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
