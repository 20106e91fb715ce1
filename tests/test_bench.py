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
