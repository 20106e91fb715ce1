"""``make chaos``: a seeded random-kill campaign over real ``catalogfs`` commands (issue 25, item 4).

A fixed scenario of real commands, each its own process as cron runs them, on tiny sample videos
and a tiny CLIP model made here (no download): extract A → embed → backfill a challenger → spaces
promote → relabel → index build → extract B → embed → maintain (``--scenario short``: extract,
embed). A clean **reference** run records a copy of the data root before and after every step and
each step's phases (``CATALOGFS_PHASE_LOG``, :func:`catalogfs.failpoints.phase`) with their durations.

A **trial** (``--kills`` of them, drawn from ``--seed``): restore the data root as it was before a
step (same path), start the step's command (through a ``catalogfs serve`` for a share of trials,
whose server is killed too in half of those), wait for the chosen phase's line in its phase log
and SIGKILL the whole process tree (SIGSTOP first, walked through ``/proc``) at a delay drawn
uniformly within that phase's reference duration; then rerun the command plainly (a fresh server
where the server was killed) and compare the data root with the reference after that step: every
table read with delta-rs (same keys, no duplicates, vectors bit-equal, labels, flags, statuses),
the lineage (what the reference recorded, plus only rows that say a killed run was recovered), the
``current_*`` views, the current ANN index (its keys and vectors equal the table's), no staging
folder, no process left and no metastore lock held.

    python scripts/chaos.py --seed 1 --kills 10 [--serve-share 0.3] [--out bench/results/chaos]

Evidence per trial under ``<out>/<seed>/trial-NN/``; ``summary.json`` and ``report.md`` beside them.
Exit status 1 when any trial fails.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
CATALOGFS = str(Path(sys.executable).parent / "catalogfs")
DB = "catalog_features"
MODEL = "chaos_clip"
KEYS = {"frames": ("video_id", "frame_ts_ms"), "frame_embeddings": ("video_id", "frame_ts_ms", "embedding_space"),
        "video_embeddings": ("video_id", "embedding_space"), "video_labels": ("video_id", "embedding_space", "label"),
        "video_flags": ("video_id", "embedding_space", "flag"), "taxonomies": ("embedding_space", "taxonomy_version")}
VOLATILE = {"run_id", "computed_at", "extracted_at", "recorded_at", "started_at", "finished_at", "built_at",
            "valid_from", "valid_to", "commit_version", "ended_version", "validation_report"}
VIEWS = ("current_frame_embeddings", "current_video_embeddings", "current_video_labels", "current_video_flags")
TAXONOMY_V1 = {"version": "chaos-v1", "labels": {"cat": ["a photo of a cat"], "coffee": ["a cup of coffee"],
                                                 "rocket": ["a rocket launch"], "astronaut": ["an astronaut"]}}
TAXONOMY_V2 = {"version": "chaos-v2", "labels": {"animal": ["a photo of an animal"], "drink": ["a hot drink"],
                                                 "vehicle": ["a vehicle", "a rocket"], "person": ["a person"]},
               "flags": {"animal": 0.0, "vehicle": 0.25}}


# --- the plan: pure, seeded -------------------------------------------------------------------

@dataclass
class Trial:
    """One kill: which step, through a server or not, and where in the step (drawn in two parts:
    the step and ``u`` before the reference run, the phase from the reference's phases)."""

    index: int
    step: str
    server: bool
    kill_server: bool
    u: float  # the delay is u × the phase's reference duration
    phase: str = ""
    occurrence: int = 1  # the phase's n-th line in the run's log
    delay: float = 0.0
    phase_seconds: float = 0.0


def trial_rng(seed: int, index: int) -> random.Random:
    """Each trial's own generator: a trial's draw never depends on how many draws another made."""
    return random.Random(seed * 100_003 + index)


def draw_plan(seed: int, kills: int, steps: list[str], *, serve_share: float) -> list[Trial]:
    """``kills`` trials: a step uniformly among ``steps``, a server for ``serve_share`` of them
    (half of those kill the server too), and ``u`` uniform in [0, 1)."""
    plan = []
    for i in range(kills):
        rng = trial_rng(seed, i)
        step = rng.choice(steps)
        server = rng.random() < serve_share
        kill_server = server and rng.random() < 0.5
        plan.append(Trial(i, step, server, kill_server, rng.random()))
    return plan


def choose_phase(seed: int, trial: Trial, windows: list[dict], patterns: list[str] | None = None) -> Trial:
    """Pick one of the step's reference phase ``windows`` (``name``, ``occurrence``, ``seconds``)
    uniformly (only those matching ``patterns``, globs, when given and any match) and set the delay
    uniformly within it: ``u × seconds``."""
    rng = trial_rng(seed, trial.index)
    for _ in range(4):  # the draws draw_plan made: the phase draw comes after them
        rng.random()
    chosen = [w for w in windows if not patterns or any(fnmatch.fnmatch(w["name"], p) for p in patterns)] or windows
    window = rng.choice(chosen)
    trial.phase, trial.occurrence, trial.phase_seconds = window["name"], window["occurrence"], window["seconds"]
    trial.delay = trial.u * window["seconds"]
    return trial


def read_phases(path: Path) -> list[tuple[float, int, str]]:
    """(time, pid, name) of each line of a phase log, in order of time."""
    if not path.exists():
        return []
    lines = []
    for line in path.read_text().splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3:
            lines.append((float(parts[0]), int(parts[1]), parts[2]))
    return sorted(lines)


def phase_windows(lines: list[tuple[float, int, str]], started: float, ended: float) -> list[dict]:
    """Each phase's window: from its line to the next line (the last: to the process's exit);
    ``process.start`` is the interpreter's start-up before the first line."""
    marks = [(started, "process.start"), *((t, name) for t, _, name in lines)]
    seen: Counter = Counter()
    windows = []
    for i, (t, name) in enumerate(marks):
        end = marks[i + 1][0] if i + 1 < len(marks) else ended
        seen[name] += 1
        windows.append({"name": name, "occurrence": seen[name], "start": t - started, "seconds": max(0.0, end - t)})
    return windows


def phase_at(lines: list[tuple[float, int, str]], instant: float) -> str:
    """The phase a run was in at ``instant``: its last line before it (``process.start`` if none)."""
    before = [name for t, _, name in lines if t <= instant]
    return before[-1] if before else "process.start"


# --- processes --------------------------------------------------------------------------------

def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, session id) of ``pid``, None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return int(fields[1]), int(fields[3])


def tree(leaders: set[int]) -> set[int]:
    """Every live process in the sessions of ``leaders`` or descending from them (Spark's Python
    daemon and workers, the JVM …)."""
    procs = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            procs[int(entry)] = st
    found = {pid for pid, (_, sid) in procs.items() if sid in leaders} | (leaders & set(procs))
    grew = True
    while grew:
        more = {pid for pid, (ppid, _) in procs.items() if ppid in found and pid not in found}
        found |= more
        grew = bool(more)
    return found


def kill_trees(leaders: set[int]) -> list[int]:
    """SIGSTOP every process of the trees (again until none is new), then SIGKILL them all."""
    stopped: set[int] = set()
    for _ in range(5):
        new = tree(leaders) - stopped
        if not new:
            break
        for pid in new:
            _signal(pid, signal.SIGSTOP)
        stopped |= new
    for pid in stopped:
        _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while tree(leaders) and time.monotonic() < deadline:
        time.sleep(0.1)
    return sorted(stopped)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def command_env(work: Path, phase_log: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYSPARK_GATEWAY", "CATALOGFS_FAILPOINT", "CATALOGFS_PHASE", "SPARK_CONNECT"))
           and k not in ("CATALOGFS_SERVE_TOKEN", "CATALOGFS_DATA_ROOT")}
    env.update(SPARK_LOCAL_IP="127.0.0.1", GX_ANALYTICS_ENABLED="false", PYTHONUNBUFFERED="1",
               MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false", SPARK_LOCAL_DIRS=str(work / "spark-local"))
    if phase_log is not None:
        env["CATALOGFS_PHASE_LOG"] = str(phase_log)
    return env


@dataclass
class Workspace:
    work: Path
    master: str = "local[1]"
    ports: tuple[int, int] = (0, 0)
    spaces: dict[str, str] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.work / "data"

    def sets(self, *, server: bool, use: str | None = "") -> list[str]:
        """The ``--set`` options of a command (``server``: through the catalogue server; ``use``:
        ``server.use``, by default ``always`` with a server and ``never`` without, None: unset)."""
        values = [f"storage.data_root={self.root}", f"model.name={MODEL}", f"spark.master={self.master}",
                  "inference.batch_size=8", "index.queries=20"]
        if use is not None:
            values.append("server.use=" + (use or ("always" if server else "never")))
        if server:
            values += [f"server.connect_port={self.ports[0]}", f"server.jdbc_port={self.ports[1]}"]
        return [a for v in values for a in ("--set", v)]

    def start(self, args: list[str], out: Path, *, server: bool, phase_log: Path | None = None) -> subprocess.Popen:
        (self.work / "spark-local").mkdir(exist_ok=True)
        with open(out, "wb") as sink:
            return subprocess.Popen([CATALOGFS, *args, *self.sets(server=server)], cwd=self.work, stdout=sink,
                                    stderr=subprocess.STDOUT, env=command_env(self.work, phase_log),
                                    start_new_session=True)

    def run(self, args: list[str], out: Path, *, server: bool = False, timeout: float = 900) -> int:
        proc = self.start(args, out, server=server)
        try:
            return proc.wait(timeout=timeout)
        finally:
            kill_trees({proc.pid})


class Server:
    """``catalogfs serve`` on the workspace's data root, in its own session."""

    def __init__(self, ws: Workspace, out: Path) -> None:
        from catalogfs.server_record import read_record

        ws.ports = tuple(_free_ports(2))  # type: ignore[assignment]
        self.ws, self.out = ws, out
        with open(out, "ab") as sink:
            self.proc = subprocess.Popen(
                [CATALOGFS, "serve", *ws.sets(server=True, use=None)],
                cwd=ws.work, stdout=sink, stderr=subprocess.STDOUT, env=command_env(ws.work, None),
                start_new_session=True)
        deadline = time.monotonic() + 400
        while (record := read_record(ws.root)) is None or record.pid != self.proc.pid:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"catalogfs serve did not start: see {out}")
            time.sleep(0.5)

    def stop(self) -> None:
        """SIGTERM (a clean shutdown), then whatever is left of its tree is killed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> list[int]:
        killed = kill_trees({self.proc.pid})
        self.proc.wait(timeout=30)
        return killed


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


# --- the scenario ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Step:
    name: str
    args: Callable[[Workspace], list[str]]


def scenario(name: str) -> list[Step]:
    """The fixed chain of commands; ``short`` is its first two steps (CI)."""
    steps = [
        Step("extract-a", lambda ws: ["extract-frames", "--input", str(ws.work / "videos_a")]),
        Step("embed", lambda ws: ["embed"]),
        Step("backfill", lambda ws: ["embed", "--model", f"{MODEL}@challenger"]),
        Step("promote", lambda ws: ["spaces", "promote", ws.spaces["challenger"]]),
        Step("relabel", lambda ws: ["relabel", "--taxonomy", str(ws.work / "taxonomy_v2.json")]),
        Step("index", lambda ws: ["index", "build"]),
        Step("extract-b", lambda ws: ["extract-frames", "--input", str(ws.work / "videos_b")]),
        Step("embed-b", lambda ws: ["embed"]),
        Step("maintain", lambda ws: ["maintain"]),
    ]
    return steps[:2] if name == "short" else steps


def prepare(ws: Workspace, log: Path) -> None:
    """Videos, the tiny CLIP model (random weights, made here: nothing is downloaded), the
    taxonomies and the registry: champion and challenger, two versions of one model."""
    sys.path.insert(0, str(ROOT))
    from catalogfs.jobs.samples import SAMPLE_PHOTOS, make_sample_videos
    from tests.test_transformers_models import _tiny_clip

    for folder, ids in (("videos_a", ("cat_chelsea", "coffee_cup", "rocket_launch")), ("videos_b", ("astronaut",))):
        make_sample_videos(ws.work / folder, seconds=2.0, fps=2, width=96, height=64,
                           photos=tuple(p for p in SAMPLE_PHOTOS if p.video_id in ids))
    _tiny_clip(ws.work / "clip_hf")
    for taxonomy in (TAXONOMY_V1, TAXONOMY_V2):
        (ws.work / f"taxonomy_{taxonomy['version'][-2:]}.json").write_text(json.dumps(taxonomy))
    for alias in ("champion", "challenger"):
        code = ws.run(["models", "register", "--from", str(ws.work / "clip_hf"), "--name", MODEL, "--alias", alias,
                       "--taxonomy", str(ws.work / "taxonomy_v1.json")], log.with_suffix(f".{alias}.out"))
        if code != 0:
            raise RuntimeError(f"models register exited {code}: see {log}")


def snapshot(source: Path, target: Path) -> None:
    """A copy of a data root (not its JVM logs), taken while nothing runs on it."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, symlinks=True, ignore=shutil.ignore_patterns("logs"))


def restore(ws: Workspace, source: Path) -> None:
    shutil.rmtree(ws.root, ignore_errors=True)
    shutil.copytree(source, ws.root, symlinks=True)
    shutil.rmtree(ws.work / "spark-local", ignore_errors=True)


def views_query() -> str:
    return " UNION ALL ".join(f"SELECT '{v}' AS view, embedding_space, COUNT(*) AS n FROM {DB}.{v} GROUP BY "
                              f"embedding_space" for v in VIEWS)


def read_views(ws: Workspace, out: Path, *, server: bool) -> list | None:
    """What the ``current_*`` views select (view, space, rows), sorted; None when they do not exist."""
    code = ws.run(["sql", "--json", "--limit", "1000", views_query()], out, server=server)
    if code != 0:
        return None
    rows = json.loads([line for line in out.read_text().splitlines() if line.startswith("[")][-1])
    return sorted([r["view"], r["embedding_space"], r["n"]] for r in rows)


# --- the comparison ---------------------------------------------------------------------------

def read_tables(root: Path) -> dict[str, list[dict] | None]:
    """Every table of a data root's database, with delta-rs (no Spark); absent ones: None."""
    from deltalake import DeltaTable

    folder = root / "warehouse" / f"{DB}.db"
    tables: dict[str, list[dict] | None] = {}
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if (path / "_delta_log").is_dir():
            tables[path.name] = DeltaTable(str(path)).to_pyarrow_table().to_pylist()
    return tables


def _stable(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in VOLATILE}


def compare_keyed(name: str, ref: list[dict], got: list[dict]) -> list[str]:
    """Problems of table ``name`` against the reference: duplicate keys, keys missing or extra,
    rows that differ in anything but run ids and times (vectors compared bit for bit)."""
    keys = KEYS[name]
    problems = []
    counts = Counter(tuple(r[k] for k in keys) for r in got)
    dupes = [k for k, n in counts.items() if n > 1]
    if dupes:
        problems.append(f"{name}: {len(dupes)} duplicate keys, e.g. {dupes[0]}")
    want = {tuple(r[k] for k in keys): _stable(r) for r in ref}
    have = {tuple(r[k] for k in keys): _stable(r) for r in got}
    if want.keys() != have.keys():
        problems.append(f"{name}: keys missing {sorted(want.keys() - have.keys())[:3]}, "
                        f"extra {sorted(have.keys() - want.keys())[:3]}")
    differ = [k for k in want.keys() & have.keys() if want[k] != have[k]]
    if differ:
        k = differ[0]
        columns = sorted(c for c in want[k] if want[k][c] != have[k].get(c))
        problems.append(f"{name}: {len(differ)} rows differ, e.g. {k} in {columns}")
    return problems


def compare_history(ref: list[dict], got: list[dict]) -> list[str]:
    """video_embeddings_history: the same values in the same order per (video, space), whatever
    commit versions they came from. A rerun that completes a killed publish may MERGE a video's row
    again with the very value the killed run had committed (another run id): the history then holds
    two adjacent spans of one value, which a point-in-time read cannot tell from one. Such spans are
    joined before comparing; a value that differs, is missing or is extra is still a problem."""
    def rows(table):
        spans: dict[tuple, list[dict]] = {}
        for r in sorted(table, key=lambda r: (r["commit_version"] is None, r["commit_version"] or 0)):
            spans.setdefault((r["video_id"], r["embedding_space"]), []).append(r)
        out: Counter = Counter()
        for key, values in spans.items():
            joined: list[tuple] = []
            for r in values:
                value = (tuple(r["embedding"] or ()), r["n_frames"], r["model_version"])
                if joined and joined[-1][0] == value:
                    joined[-1] = (value, r["ended_version"] is None)  # the same value, republished
                else:
                    joined.append((value, r["ended_version"] is None))
            out.update((*key, *value, is_open) for value, is_open in joined)
        return out
    want, have = rows(ref), rows(got)
    if want == have:
        return []
    return [f"video_embeddings_history: {sum((want - have).values())} rows missing, "
            f"{sum((have - want).values())} extra"]


def _commits(root: Path, table: str) -> dict[int, dict]:
    from deltalake import DeltaTable

    return {c["version"]: c for c in DeltaTable(str(root / "warehouse" / f"{DB}.db" / table)).history()}


def compare_lineage(step: str, ref_before: list[dict], ref: list[dict], got: list[dict], root: Path) -> tuple[list[str], list[str]]:
    """(problems, notes) of ``feature_versions``: the trial's new rows are the reference's new rows
    (space, status, relabel or not), plus only rows that say what a killed run did (``interrupted``,
    a second ``promoted`` of the same space by a promote rerun); every row's table versions are
    MERGE commits of its run in the tables' history."""
    old = {r["run_id"] for r in ref_before}

    def new(rows):
        return Counter((r["embedding_space"], r["status"], (r["note"] or "").startswith("relabel"))
                       for r in rows if r["run_id"] not in old)
    want, have = new(ref), new(got)
    problems, notes = [], []
    if want - have:
        problems.append(f"feature_versions: rows missing {sorted(want - have)}")
    for extra in (have - want):
        allowed = extra[1] == "interrupted" or (extra[1] == "promoted" and step == "promote")
        (notes if allowed else problems).append(f"feature_versions: extra row {extra} (x{(have - want)[extra]})")
    history: dict[str, dict[int, dict]] = {}
    for r in got:
        if r["run_id"] in old or r["status"] not in ("published", "interrupted"):
            continue
        for table, version in json.loads(r["table_versions"] or "{}").items():
            commit = history.setdefault(table, _commits(root, table)).get(int(version), {})
            meta = json.loads(commit.get("userMetadata") or "{}")
            if commit.get("operation") != "MERGE" or meta.get("run_id") != r["run_id"]:
                problems.append(f"feature_versions: run {r['run_id']} ({r['status']}) names {table} v{version}, "
                                f"which is {commit.get('operation')} of run {meta.get('run_id')}")
        if r["status"] == "interrupted" or (r["note"] or "").startswith("recovered"):
            notes.append(f"feature_versions: {r['status']} row for run {r['run_id']}: {r['note']}")
    return problems, notes


def current_indexes(root: Path) -> dict[tuple[str, str], dict]:
    """(space, level) → the current ANN index's keys → vector, from its own files (no Spark), and
    under the key ``"source_version"`` the version of the table it was built from."""
    import numpy as np
    import pyarrow.parquet as pq

    from catalogfs.features.ann import LEVELS, VectorIndex, current_id

    found: dict[tuple[str, str], dict] = {}
    indexes = root / "indexes"
    for level_dir in sorted(indexes.glob("*/*")) if indexes.is_dir() else []:
        space, level = level_dir.parent.name, level_dir.name
        if current_id(indexes, space, level) is None:
            continue
        index = VectorIndex.open_current(indexes, space, level, mmap=False)
        keys = pq.read_table(index.directory / "keys.parquet")
        for key in zip(*(keys.column(c).to_pylist() for c in LEVELS[level])):
            found.setdefault((space, level), {})[key] = np.asarray(index.vector(key), dtype=np.float32).tobytes()
        found.setdefault((space, level), {})["source_version"] = index.manifest.source_version
    return found


def compare_indexes(ref_root: Path, root: Path, tables: dict) -> list[str]:
    """The current index of each space and level: present in both or neither, the same keys and
    vectors as the reference's, and its vectors bit-equal to the table's rows at the version it was
    built from (an index lags the table until the next build)."""
    import numpy as np
    from deltalake import DeltaTable

    problems = []
    want, have = current_indexes(ref_root), current_indexes(root)
    if want.keys() != have.keys():
        return [f"indexes: current {sorted(have)} != reference {sorted(want)}"]
    for (space, level), vectors in have.items():
        version = vectors.pop("source_version")
        want[(space, level)].pop("source_version")
        if vectors.keys() != want[(space, level)].keys() or vectors != want[(space, level)]:
            problems.append(f"index {space}/{level}: keys or vectors differ from the reference's")
        table = "video_embeddings" if level == "video" else "frame_embeddings"
        source = DeltaTable(str(root / "warehouse" / f"{DB}.db" / table), version=version).to_pyarrow_table().to_pylist()
        rows = {(r["video_id"],) if level == "video" else (r["video_id"], r["frame_ts_ms"]):
                np.asarray(r["embedding"], dtype=np.float32).tobytes()
                for r in source if r["embedding_space"] == space and r["embedding"] is not None}
        if rows != vectors:
            problems.append(f"index {space}/{level}: not the keys and vectors of {table} v{version}")
    return problems


def leftovers(ws: Workspace, sessions: set[int]) -> list[str]:
    """Staging folders, held metastore locks and live processes a trial left behind."""
    from catalogfs.catalog_lock import metastore_holder

    problems = []
    staging = ws.root / "staging"
    if staging.is_dir() and any(staging.iterdir()):
        problems.append(f"staging left behind: {sorted(p.name for p in staging.iterdir())}")
    holder = metastore_holder(ws.root / "metastore_db")
    if holder is not None:
        problems.append(f"metastore lock held by pid {holder}")
    alive = tree(sessions)
    if alive:
        problems.append(f"processes left: {sorted(alive)}")
    return problems


def compare(step: str, ref_before: Path, ref_after: Path, ws: Workspace) -> tuple[list[str], list[str]]:
    """(problems, notes) of the trial's data root against the reference after ``step``."""
    want, have = read_tables(ref_after), read_tables(ws.root)
    before = read_tables(ref_before)
    problems, notes = [], []
    if want.keys() != have.keys():
        problems.append(f"tables {sorted(have)} != reference {sorted(want)}")
    for name in sorted(want.keys() & have.keys()):
        if name in KEYS:
            problems += compare_keyed(name, want[name] or [], have[name] or [])
        elif name == "video_embeddings_history":
            problems += compare_history(want[name] or [], have[name] or [])
    if "feature_versions" in have:
        lineage = compare_lineage(step, before.get("feature_versions") or [], want.get("feature_versions") or [],
                                  have["feature_versions"] or [], ws.root)
        problems, notes = problems + lineage[0], notes + lineage[1]
    if "vector_indexes" in have:
        validated = {(r["embedding_space"], r["level"]): r for r in have["vector_indexes"] or []
                     if r["status"] == "validated"}
        notes.append(f"vector_indexes: {len(have['vector_indexes'] or [])} rows "
                     f"(reference {len(want.get('vector_indexes') or [])}), validated {sorted(validated)}")
    problems += compare_indexes(ref_after, ws.root, have)
    return problems, notes


# --- reference and trials ---------------------------------------------------------------------

def reference(ws: Workspace, steps: list[Step], out: Path, *, views_for: set[str]) -> dict:
    """The clean run: a snapshot before and after each step, each step's phase windows and exit
    code, and (for ``views_for``) what the current views select after it."""
    ref_dir = out / "reference"
    ref_dir.mkdir(parents=True, exist_ok=True)
    snapshot(ws.root, ws.work / "snapshots" / "0-setup")
    record: dict = {"steps": {}}
    for n, step in enumerate(steps, 1):
        phase_log = ref_dir / f"{step.name}.phases"
        phase_log.unlink(missing_ok=True)
        started = time.time()
        proc = ws.start(step.args(ws), ref_dir / f"{step.name}.out", server=False, phase_log=phase_log)
        code = proc.wait(timeout=1200)
        ended = time.time()
        kill_trees({proc.pid})
        if code != 0:
            raise RuntimeError(f"reference step {step.name} exited {code}: see {ref_dir / (step.name + '.out')}")
        if step.name == "backfill":
            ws.spaces["challenger"] = newest_space(ws.root, model_version="2")
        views = read_views(ws, ref_dir / f"{step.name}.views.out", server=False) if step.name in views_for else None
        snapshot(ws.root, ws.work / "snapshots" / f"{n}-{step.name}")
        record["steps"][step.name] = {"seconds": round(ended - started, 1), "views": views,
                                      "views_recorded": step.name in views_for,
                                      "phases": phase_windows(read_phases(phase_log), started, ended)}
        print(f"reference: {step.name}: {ended - started:.0f} s, {len(record['steps'][step.name]['phases'])} phases",
              flush=True)
    record["spaces"] = ws.spaces
    return record


def newest_space(root: Path, *, model_version: str) -> str:
    rows = read_tables(root)["feature_versions"] or []
    return next(r["embedding_space"] for r in sorted(rows, key=lambda r: r["finished_at"], reverse=True)
                if r["model_version"] == model_version and r["status"] == "published")


def snapshots(ws: Workspace, steps: list[Step], step: str) -> tuple[Path, Path]:
    """(the data root before ``step``, after it) of the reference run."""
    n = [s.name for s in steps].index(step) + 1
    before = f"{n - 1}-{steps[n - 2].name}" if n > 1 else "0-setup"
    return ws.work / "snapshots" / before, ws.work / "snapshots" / f"{n}-{step}"


def kill_at_phase(proc: subprocess.Popen, phase_log: Path, trial: Trial, server: Server | None, *,
                  started: float, timeout: float = 1200) -> dict:
    """Wait for the trial's phase line (``process.start``: the command's start, ``started``), then
    kill the command's tree (and the server's, when the trial says so) ``trial.delay`` seconds
    after it; returns what happened."""
    deadline = time.monotonic() + timeout
    kill_at = started + trial.delay if trial.phase == "process.start" else None
    while proc.poll() is None and time.monotonic() < deadline:
        if kill_at is None:
            lines = [t for t, _, name in read_phases(phase_log) if name == trial.phase]
            if len(lines) >= trial.occurrence:
                kill_at = lines[trial.occurrence - 1] + trial.delay
        if kill_at is not None and time.time() >= kill_at:
            leaders = {proc.pid} | ({server.proc.pid} if server is not None and trial.kill_server else set())
            instant = time.time()
            killed = kill_trees(leaders)
            proc.wait(timeout=30)
            lines = read_phases(phase_log)
            return {"killed": True, "instant": instant, "late_seconds": round(instant - kill_at, 3),
                    "phase_hit": phase_at(lines, instant), "pids": killed, "exit": proc.returncode}
        time.sleep(0.02)
    kill_trees({proc.pid})
    reached = kill_at is not None or any(name == trial.phase for _, _, name in read_phases(phase_log))
    return {"killed": False, "exit": proc.poll(),
            "phase_hit": "after exit" if reached else f"{trial.phase} never reached"}


def run_trial(ws: Workspace, steps: list[Step], trial: Trial, ref: dict, folder: Path) -> dict:
    """Restore, start, kill, rerun, compare (see the module doc); the evidence goes to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    step = next(s for s in steps if s.name == trial.step)
    before, after = snapshots(ws, steps, trial.step)
    restore(ws, before)
    t0, server, sessions, views = time.monotonic(), None, set(), None
    result: dict = {"trial": asdict(trial), "command": ["catalogfs", *step.args(ws)]}
    try:
        if trial.server:
            server = Server(ws, folder / "serve.out")
            sessions.add(server.proc.pid)
        started = time.time()
        proc = ws.start(step.args(ws), folder / "killed.out", server=trial.server, phase_log=folder / "killed.phases")
        sessions.add(proc.pid)
        result["kill"] = kill_at_phase(proc, folder / "killed.phases", trial, server, started=started)
        if server is not None and trial.kill_server and result["kill"]["killed"]:
            server.proc.wait(timeout=30)
            server = Server(ws, folder / "serve-restarted.out")
            sessions.add(server.proc.pid)
        rerun = ws.start(step.args(ws), folder / "rerun.out", server=trial.server, phase_log=folder / "rerun.phases")
        sessions.add(rerun.pid)
        result["rerun_exit"] = rerun.wait(timeout=1200)
        kill_trees({rerun.pid})
        views = read_views(ws, folder / "views.out", server=trial.server)
    finally:
        if server is not None:
            server.stop()
    problems, notes = compare(trial.step, before, after, ws) if result.get("rerun_exit") == 0 else (
        [f"rerun exited {result.get('rerun_exit')}: see rerun.out"], [])
    expected = ref["steps"][trial.step]
    if not expected.get("views_recorded", expected["views"] is not None):
        notes.append(f"current views {views}: not recorded by the reference, not compared")
    elif views != expected["views"]:
        problems.append(f"current views {views} != reference {expected['views']}")
    problems += leftovers(ws, sessions)
    kill_trees(sessions)
    shutil.rmtree(ws.work / "spark-local", ignore_errors=True)
    result.update(passed=not problems, problems=problems, notes=notes, seconds=round(time.monotonic() - t0, 1))
    (folder / "result.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def report(seed: int, plan: list[Trial], results: list[dict], ref: dict, seconds: float) -> str:
    """The campaign in markdown: per phase hit, kills and passes; then each trial."""
    by_phase: dict[str, list[int]] = {}
    for r in results:
        phase = f"{r['trial']['step']}: {r['kill']['phase_hit']}"
        by_phase.setdefault(phase, [0, 0])
        by_phase[phase][0] += 1
        by_phase[phase][1] += bool(r["passed"])
    landed = sum(bool(r["kill"].get("killed")) for r in results)
    lines = [f"Seed {seed}, {len(results)} trials ({landed} killed while running, the others ended before their "
             f"instant), {sum(r['passed'] for r in results)} passed; "
             f"{seconds / 60:.1f} min in all (reference {sum(s['seconds'] for s in ref['steps'].values()):.0f} s).", "",
             "| step: phase hit | kills | passed |", "|---|---|---|"]
    lines += [f"| {phase} | {n} | {ok} |" for phase, (n, ok) in sorted(by_phase.items())]
    lines += ["", "| # | step | server | drawn phase | delay s | phase hit | passed | s | problems |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        t = r["trial"]
        server = ("killed too" if t["kill_server"] else "yes") if t["server"] else "no"
        lines.append(f"| {t['index']} | {t['step']} | {server} | {t['phase']}#{t['occurrence']} | {t['delay']:.2f} "
                     f"| {r['kill']['phase_hit']} | {'yes' if r['passed'] else 'NO'} | {r['seconds']:.0f} "
                     f"| {'; '.join(r['problems'])[:300]} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--serve-share", type=float, default=0.3, help="share of trials run through catalogfs serve")
    parser.add_argument("--scenario", choices=["full", "short"], default="full")
    parser.add_argument("--steps", default="", help="comma list: draw trials among these steps only")
    parser.add_argument("--phases", default="", help="comma list of globs: draw phases among these only")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "chaos")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: <out>/<seed>/work)")
    parser.add_argument("--plan-only", action="store_true", help="print the steps drawn and stop")
    parser.add_argument("--reference-from", type=Path, default=None, metavar="DIR",
                        help="reuse an earlier campaign's reference (its <out>/<seed> folder): no new reference run")
    args = parser.parse_args(argv)

    steps = scenario(args.scenario)
    names = [s.name for s in steps]
    wanted = [n for n in args.steps.split(",") if n] or names
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        parser.error(f"unknown steps {unknown}; the scenario has {names}")
    plan = draw_plan(args.seed, args.kills, wanted, serve_share=args.serve_share)
    print(f"chaos: seed {args.seed}, {args.kills} kills over {wanted}")
    for t in plan:
        print(f"  trial {t.index}: {t.step}, server {'killed too' if t.kill_server else t.server}, u={t.u:.4f}")
    if args.plan_only:
        return 0
    out = args.out.resolve() / str(args.seed)  # the commands run in the work folder: absolute paths
    t0 = time.monotonic()
    if args.reference_from is not None:  # its snapshots and phases; its views for the steps it recorded
        earlier = args.reference_from.resolve()
        ref = json.loads((earlier / "reference.json").read_text())
        ws = Workspace(earlier / "work", spaces=ref["spaces"])
        out.mkdir(parents=True, exist_ok=True)
    else:
        ws = Workspace((args.work or out / "work").resolve())
        shutil.rmtree(ws.work, ignore_errors=True)
        ws.work.mkdir(parents=True)
        prepare(ws, out / "setup")
        ref = reference(ws, steps, out, views_for={t.step for t in plan})
        (out / "reference.json").write_text(json.dumps(ref, indent=2, default=str))
    patterns = [p for p in args.phases.split(",") if p]
    for t in plan:
        choose_phase(args.seed, t, ref["steps"][t.step]["phases"], patterns)
        print(f"  trial {t.index}: {t.step} at {t.phase}#{t.occurrence} + {t.delay:.2f} s "
              f"(of {t.phase_seconds:.2f} s)", flush=True)
    results = []
    for t in plan:
        try:
            r = run_trial(ws, steps, t, ref, out / f"trial-{t.index:02d}")
        except Exception as exc:  # the harness failed, not the product: say so, go on
            r = {"trial": asdict(t), "kill": {"phase_hit": "?"}, "passed": False, "seconds": 0.0, "notes": [],
                 "problems": [f"harness error: {type(exc).__name__}: {exc}"]}
        results.append(r)
        print(f"trial {t.index}: {t.step} {t.phase}#{t.occurrence}+{t.delay:.2f}s hit {r['kill']['phase_hit']}: "
              f"{'pass' if r['passed'] else 'FAIL ' + '; '.join(r['problems'])} ({r['seconds']:.0f} s)", flush=True)
    summary = {"seed": args.seed, "kills": args.kills, "scenario": args.scenario, "passed": sum(r["passed"] for r in results),
               "failed": sum(not r["passed"] for r in results), "seconds": round(time.monotonic() - t0, 1),
               "trials": results}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "report.md").write_text(report(args.seed, plan, results, ref, summary["seconds"]))
    print((out / "report.md").read_text())
    return 0 if summary["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
