"""``make chaos`` (scripts/chaos.py): the seeded plan and the phase windows (no JVM), and a small
campaign of real commands killed within a phase of an embed run and rerun (slow: real jobs)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from catalogfs import failpoints

ROOT = Path(__file__).resolve().parent.parent


def _chaos():
    spec = importlib.util.spec_from_file_location("chaos", ROOT / "scripts" / "chaos.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("chaos", module)
    spec.loader.exec_module(module)
    return module


chaos = _chaos()
STEPS = ["extract-a", "embed", "backfill", "promote", "relabel", "index", "extract-b", "embed-b", "maintain"]


def test_the_same_seed_draws_the_same_plan_and_another_seed_another():
    plan = chaos.draw_plan(7, 12, STEPS, serve_share=0.3)
    assert plan == chaos.draw_plan(7, 12, STEPS, serve_share=0.3)
    assert [t.step for t in plan] != [t.step for t in chaos.draw_plan(8, 12, STEPS, serve_share=0.3)]
    # a trial's draw does not depend on how many trials there are
    assert chaos.draw_plan(7, 3, STEPS, serve_share=0.3) == plan[:3]
    assert not any(t.server for t in chaos.draw_plan(7, 12, STEPS, serve_share=0.0))
    assert all(t.server for t in chaos.draw_plan(7, 12, STEPS, serve_share=1.0))
    assert all(t.server for t in plan if t.kill_server)


def test_every_phase_and_every_instant_within_it_can_be_drawn():
    windows = [{"name": "embed.plan", "occurrence": 1, "seconds": 8.0},
               {"name": "publish.merge.frame_embeddings", "occurrence": 1, "seconds": 2.0},
               {"name": "publish.merge.video_embeddings", "occurrence": 1, "seconds": 0.5},
               {"name": "lineage.record", "occurrence": 2, "seconds": 1.0}]
    drawn = [chaos.choose_phase(3, t, windows) for t in chaos.draw_plan(3, 2000, ["embed"], serve_share=0.0)]
    by_phase: dict[str, list[float]] = {}
    for t in drawn:
        window = next(w for w in windows if w["name"] == t.phase)
        assert 0.0 <= t.delay < window["seconds"] and t.delay == pytest.approx(t.u * window["seconds"])
        assert t.occurrence == window["occurrence"]
        by_phase.setdefault(t.phase, []).append(t.delay / window["seconds"])
    assert set(by_phase) == {w["name"] for w in windows}  # short windows are drawn as often as long ones
    assert min(len(v) for v in by_phase.values()) > 400
    for fractions in by_phase.values():  # uniform within the phase: every tenth of it is hit
        assert {int(f * 10) for f in fractions} == set(range(10))
    only = chaos.choose_phase(3, chaos.draw_plan(3, 1, ["embed"], serve_share=0.0)[0], windows, ["publish.merge.*"])
    assert only.phase.startswith("publish.merge.")


def test_phase_windows_come_from_the_phase_log(tmp_path, monkeypatch):
    log = tmp_path / "phases.log"
    failpoints.phase("job.start")  # the variable unset: nothing written anywhere
    monkeypatch.setenv(failpoints.PHASE_LOG_ENV, str(log))
    failpoints.phase("job.start")
    failpoints.phase("embed.plan")
    lines = chaos.read_phases(log)
    assert [name for _, _, name in lines] == ["job.start", "embed.plan"]
    started = lines[0][0] - 1.0
    lines = [(lines[0][0], 1, "job.start"), (lines[0][0] + 2, 1, "embed.plan"), (lines[0][0] + 3, 1, "lineage.record"),
             (lines[0][0] + 5, 1, "lineage.record")]
    windows = chaos.phase_windows(lines, started, lines[0][0] + 6)
    assert [(w["name"], w["occurrence"], round(w["seconds"], 3)) for w in windows] == [
        ("process.start", 1, 1.0), ("job.start", 1, 2.0), ("embed.plan", 1, 1.0), ("lineage.record", 1, 2.0),
        ("lineage.record", 2, 1.0)]
    assert chaos.phase_at(lines, lines[2][0] + 0.5) == "lineage.record"
    assert chaos.phase_at(lines, started) == "process.start"


def test_every_phase_a_job_announces_is_documented():
    import re

    announced = set()
    for folder in ("jobs", "features"):
        for path in (ROOT / folder).glob("*.py"):
            announced |= {name.rstrip(".") for name in re.findall(r'phase\(f?"([a-z_.]+)', path.read_text())}
    documented = {name.replace("<table>", "").rstrip(".") for name in failpoints.PHASES}
    assert announced == documented, (sorted(announced - documented), sorted(documented - announced))


@pytest.mark.spark
@pytest.mark.slow  # real commands, each with its own JVM: a reference run, a kill and its rerun
def test_a_kill_between_the_last_merge_and_the_lineage_row_ends_like_a_clean_run(tmp_path):
    """Seed 9 draws one kill within the embed run's publish windows: just after its last MERGE,
    before the lineage row (the window where a killed run once left video_embeddings_history
    behind): the rerun ends with the clean run's tables, lineage, history, views, and no staging
    left. `make chaos` draws among all the windows; tests/test_crash_safety.py kills at fixed ones."""
    out = tmp_path / "chaos"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "chaos.py"), "--scenario", "short", "--steps", "embed",
                           "--kills", "1", "--seed", "9", "--serve-share", "0", "--out", str(out),
                           "--phases", "publish.merge.*,lineage.record,history.sync,embed.views"],
                          cwd=ROOT, capture_output=True, text=True, timeout=1500)
    summary = json.loads((out / "9" / "summary.json").read_text())
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert summary["passed"] == 1 and summary["failed"] == 0
    assert [t["trial"]["phase"] for t in summary["trials"]] == ["lineage.record"]
    for trial in summary["trials"]:
        assert trial["kill"]["killed"], trial  # the kill landed while the command ran
        assert trial["rerun_exit"] == 0 and not trial["problems"], trial
