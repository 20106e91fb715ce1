import json
import runpy
import sys

import pytest

from tests.helpers import PROJECT_ROOT


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
    assert row["runtime"] == "onnxruntime"  # the CPU runtime the pipeline uses for this model
    assert "| efficientnet_lite0 | onnxruntime | 4 |" in capsys.readouterr().out


def test_pipeline_bench_rows_in_their_own_processes(tmp_path, capsys):
    """The harness's in-process rows (model-only, plain loop) on a few frames: figures, table, JSON.
    (The Spark rows run in `make bench`; they need minutes.)"""
    out = tmp_path / "results"
    argv = ["pipeline_bench.py", "--quick", "--frames", "8", "--batch", "4", "--rows", "model_only,plain_loop",
            "--out", str(out)]
    old = sys.argv
    sys.argv = argv
    try:
        runpy.run_path(str(PROJECT_ROOT / "bench" / "pipeline_bench.py"), run_name="__main__")
    except SystemExit as exit_:
        assert exit_.code == 0
    finally:
        sys.argv = old
    data = json.loads((out / "pipeline_quick.json").read_text())
    assert set(data["rows"]) == {"model_only", "plain_loop"}
    for row in data["rows"].values():
        assert row["frames"] == 8 and row["fps"] > 0 and row["model_loads"] == 1 and row["peak_rss_mb"] > 100
    table = (out / "pipeline_quick.md").read_text()
    assert "| model_only |" in table and "| plain_loop |" in table


def test_pipeline_bench_ratios_against_peers_of_the_same_runtime():
    """The peer ratios: the best peer over all predict_batch_udf variants and plain loops, the best
    tuned predict_batch_udf of our stage's runtime, and the model-only target only on that runtime."""
    bench = runpy.run_path(str(PROJECT_ROOT / "bench" / "pipeline_bench.py"))
    rows = {"catalogfs": {"fps": 60.0, "runtime": "onnxruntime"},
            "model_only": {"fps": 100.0, "runtime": "onnxruntime"},
            "plain_loop": {"fps": 40.0, "runtime": "torch"}, "predict_batch_udf": {"fps": 30.0, "runtime": "torch"},
            "predict_batch_udf_tuned": {"fps": 55.0, "runtime": "torch"},
            "predict_batch_udf_onnx": {"fps": 48.0, "runtime": "onnxruntime"}}
    ratios, peers, met = bench["compute_ratios"](rows)
    assert peers == {"best_peer": "predict_batch_udf_tuned", "tuned_peer_same_runtime": "predict_batch_udf_onnx"}
    assert ratios["spark_vs_predict_batch_udf"] == 2.0 and ratios["spark_vs_best_peer"] == 60 / 55
    assert ratios["spark_vs_tuned_peer_same_runtime"] == 1.25
    assert met == {"spark_vs_plain": True, "spark_vs_tuned_peer_same_runtime": True, "spark_vs_model_only": False}
    rows["model_only"]["runtime"] = "torch"  # model-only on another runtime than ours: no verdict
    assert bench["compute_ratios"](rows)[2]["spark_vs_model_only"] is None


@pytest.mark.spark  # the harness's children start Spark (one JVM per phase), not this process
def test_scale_bench_reruns_cost_what_changed(tmp_path, capsys):
    """The scale harness on 10 videos of 2 frames: the full run embeds the first 9 videos, the
    rerun embeds nothing and plans incrementally, the +10% run embeds exactly the new video's
    frames; figures, peak memory and the table are reported."""
    out = tmp_path / "results"
    sys.path.insert(0, str(PROJECT_ROOT / "bench"))
    try:
        import scale_bench
    finally:
        sys.path.remove(str(PROJECT_ROOT / "bench"))
    assert scale_bench.main(["--videos", "10", "--frames-per-video", "2", "--batch", "4", "--out", str(out)]) == 0
    (path,) = out.glob("scale-*.json")
    (size,) = json.loads(path.read_text())["sizes"]
    runs = size["runs"]
    assert (runs["full"]["frames_embedded"], runs["noop"]["frames_embedded"],
            runs["ten_percent"]["frames_embedded"]) == (18, 0, 2)
    assert runs["full"]["published"] and not runs["noop"]["published"] and runs["ten_percent"]["published"]
    assert runs["noop"]["forward_passes"] == 0
    assert runs["noop"]["plan_scope"].startswith("incremental plan") and "0 videos changed" in runs["noop"]["plan_scope"]
    assert "1 videos changed" in runs["ten_percent"]["plan_scope"]
    assert size["peak_rss_mb"]["driver_jvm"] > 100 and size["full_run_peak_rss_mb"]["driver_python"] > 100
    assert "| 10 (20) |" in capsys.readouterr().out
