import json
import runpy
import sys

from catalogfs.config import PROJECT_ROOT


def test_engine_bench_runs_and_reports_both_rates(tmp_path, monkeypatch, capsys):
    out = tmp_path / "bench.json"
    monkeypatch.setattr(sys, "argv", ["engine_bench.py", "--device", "cpu", "--quick", "--frames", "8",
                                      "--models", "efficientnet_lite0", "--batch-sizes", "4",
                                      "--json", str(out)])
    try:
        runpy.run_path(str(PROJECT_ROOT / "bench" / "engine_bench.py"), run_name="__main__")
    except SystemExit as exit_:
        assert exit_.code == 0
    data = json.loads(out.read_text())
    row = data["rows"][0]
    assert (row["model"], row["batch"], row["frames"]) == ("efficientnet_lite0", 4, 8)
    assert row["pipeline_fps"] > 0 and row["model_only_fps"] > 0
    assert data["meta"]["device"] == "cpu"
    assert "| efficientnet_lite0 | 4 |" in capsys.readouterr().out
