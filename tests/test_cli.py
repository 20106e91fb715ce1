"""The CLI's contract: for user mistakes one clear line and a documented exit code, no traceback
(these fail before Spark starts, so they need no JVM); and a quiet terminal, the JVM's output going
to a log file under the data root (the last two tests, each a `catalogfs` process with its JVM)."""

import os
import subprocess
import sys

import pytest

from catalogfs.config import DEFAULT_CONF_DIR, load_config
from tests.helpers import PROJECT_ROOT
from catalogfs.jobs import cli
from catalogfs.jobs import embed_frames, make_sample_videos


def test_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("demo", "make-samples", "extract-frames", "embed", "sql"):
        assert command in out


def test_unknown_command(capsys):
    assert cli.main(["embedd"]) == 2
    assert "unknown command 'embedd'" in capsys.readouterr().err


def test_bad_config_key_exits_2_naming_the_key(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  nmae: x\n")
    assert embed_frames.main(["--conf", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: unknown key 'model.nmae'" in err and "Traceback" not in err


def test_bad_set_value_exits_2(capsys):
    assert cli.main(["embed", "--set", "inference.batch_size=lots"]) == 2
    assert "--set inference.batch_size: bad value for 'inference.batch_size'" in capsys.readouterr().err


def test_make_samples_writes_real_videos(tmp_path, capsys):
    import av

    code = make_sample_videos.main(["--set", "samples.seconds=1", "--set", "samples.width=160",
                                    "--set", "samples.height=96", "--output", str(tmp_path)])
    assert code == 0
    videos = sorted(p.name for p in tmp_path.glob("*.mp4"))
    assert "cat_chelsea.mp4" in videos and "corrupt_upload.mp4" in videos and len(videos) == 8
    with av.open(str(tmp_path / "flower.mp4")) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.width, stream.height) == ("h264", 160, 96)


def _one_clear_line(err: str, *expected: str) -> None:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for piece in expected:
        assert piece in lines[0], lines[0]


def test_missing_config_file_exits_2(capsys, tmp_path):
    missing = tmp_path / "nope.yaml"
    assert cli.main(["extract-frames", "--conf", str(missing)]) == 2
    _one_clear_line(capsys.readouterr().err, "extract_frames: config error:", str(missing),
                    "cannot read config file")


def test_bad_yaml_exits_2_with_line_and_column(capsys, tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("storage:\n  database: [unclosed\n")
    assert cli.main(["embed", "--conf", str(broken)]) == 2
    _one_clear_line(capsys.readouterr().err, f"{broken}: not valid YAML at line 3")


@pytest.mark.parametrize("text, expected", [
    ("inference:\n  batch_size: lots\n", "bad value for 'inference.batch_size'"),
    ("inference:\n  device: tpu\n", "bad value for 'inference.device'"),
    ("storage: 5\n", "bad value for 'storage'"),
    ("spark:\n  settings: [a, b]\n", "bad value for 'spark.settings'"),
    ("validation:\n  max_reject_rate: 1.5\n", "bad value for 'validation.max_reject_rate'"),
    ("extract:\n  sample_fps: fast\n", "bad value for 'extract.sample_fps'"),
    ("[1, 2]\n", "expected a mapping at the top level"),
    ("modell:\n  name: x\n", "unknown key 'modell'"),
    ("storage:\n  data_rot: /tmp/x\n", "unknown key 'storage.data_rot'"),
])
def test_wrong_types_and_unknown_keys_exit_2(capsys, tmp_path, text, expected):
    conf = tmp_path / "conf.yaml"
    conf.write_text(text)
    assert cli.main(["embed", "--conf", str(conf)]) == 2
    _one_clear_line(capsys.readouterr().err, "embed_frames: config error:", str(conf), expected)


@pytest.mark.parametrize("argv, expected", [
    (["embed", "--no-such-option"], "unrecognized arguments: --no-such-option"),
    (["similar"], "one of the arguments --video-id --image is required"),
    (["similar", "--video-id", "x", "-k", "three"], "invalid int value: 'three'"),
    (["spaces", "demote"], "invalid choice: 'demote'"),
    (["embed", "--set", "nonsense"], "expected key.path=value"),
    (["models", "rename"], "invalid choice: 'rename'"),
    (["make-samples", "--output"], "expected one argument"),
])
def test_bad_arguments_exit_2_without_traceback(capsys, argv, expected):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert expected in err.strip().splitlines()[-1], err


# ------------------------------------------------- a quiet CLI: the JVM's output goes to a log file
# Each test runs `catalogfs sql` as its own process (one JVM start each, ~15 s here): what a user
# sees on the terminal, file descriptors and all.

@pytest.fixture(scope="module")
def cli_data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("cli-data")


def _run_catalogfs(data_root, *args: str):
    """``catalogfs <args>`` in a new process over ``data_root`` → (completed process, log files it added)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK_GATEWAY_")}
    env.update(SPARK_LOCAL_IP="127.0.0.1", GX_ANALYTICS_ENABLED="false")
    logs = data_root / "logs"
    before = set(logs.glob("*.log")) if logs.exists() else set()
    done = subprocess.run([sys.executable, "-m", "catalogfs.jobs.cli", *args, "--set", f"storage.data_root={data_root}"],
                          cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
    return done, sorted(set(logs.glob("*.log")) - before)


def _local_delta_jars(data_root):
    """The jars set-up recorded (``python -m catalogfs.spark``, which `make test` runs first), or None."""
    from catalogfs.jars import local_delta_jars

    cfg = load_config([DEFAULT_CONF_DIR / "local.yaml"], [f"storage.data_root={data_root}"])
    return local_delta_jars(cfg.spark.ivy_cache)


@pytest.mark.spark
@pytest.mark.slow  # a JVM start (~15 s on the 2-core CI machine, more under load)
def test_sql_prints_the_result_and_nothing_else(cli_data_root):
    done, new_logs = _run_catalogfs(cli_data_root, "sql", "SELECT 1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["1", "-", "1", "(1 rows)"]
    jars = _local_delta_jars(cli_data_root)
    if jars is not None:  # set-up resolved the Delta jars: Spark gets them as files, Ivy never runs
        assert done.stderr == ""
    else:  # set-up never ran here: the one INFO line saying how to pre-resolve (package resolution)
        lines = done.stderr.splitlines()
        assert len(lines) == 1 and "Delta jars not resolved yet" in lines[0] and "catalogfs.spark" in lines[0], \
            done.stderr
    # the JVM's output (Spark's log, Ivy's report if it ran) is in the run's log file instead
    assert len(new_logs) == 1 and new_logs[0].name.startswith("spark-"), new_logs
    jvm_output = new_logs[0].read_text()
    assert "INFO SparkContext: Running Spark version" in jvm_output
    if jars is not None:
        assert ":: resolving dependencies ::" not in jvm_output
        assert f"Added JAR {jars[0]}" in jvm_output


@pytest.mark.spark
@pytest.mark.slow
def test_a_failing_command_names_its_jvm_log(cli_data_root):
    done, new_logs = _run_catalogfs(cli_data_root, "sql", "--quiet", "SELECT * FROM no_such_table")
    assert done.returncode == 4 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 2, done.stderr
    assert lines[0].startswith("catalogfs sql: [TABLE_OR_VIEW_NOT_FOUND]") and "no_such_table" in lines[0]
    assert lines[1] == f"JVM log: {new_logs[0]}" and len(new_logs) == 1
    assert "INFO SparkContext: Running Spark version" in new_logs[0].read_text()


def test_a_long_java_stack_is_cut_short_on_the_terminal_and_kept_in_the_jvm_log(monkeypatch, tmp_path, capsys):
    """A bug surfacing as a Py4JJavaError carries the whole Java stack (a catalogue lock once printed
    21,000 lines): the terminal gets its head and every ``Caused by:``, the JVM log all of it. No JVM:
    build_spark is replaced by one that only names a log file, as the real one does."""
    from catalogfs import spark as spark_module
    from catalogfs.jobs.job_main import TRACEBACK_LINES_SHOWN, run_main

    jvm_log = tmp_path / "spark-test.log"
    jvm_log.write_text("JVM output\n")

    def fake_build_spark(cfg):
        monkeypatch.setattr(spark_module, "_jvm_log", jvm_log)
        return object()

    stack = ["\tat org.apache.hadoop.hive.metastore.Frame.call(Frame.java:1)"] * 3000
    java_error = "\n".join(["An error occurred while calling o42.sql.",
                            ": java.sql.SQLException: lock held by pw=hunter2secret", *stack,
                            "Caused by: ERROR XSDB6: Another instance of Derby may have already booted", *stack[:50]])

    def job(spark, cfg):
        raise RuntimeError(java_error)

    monkeypatch.setattr(spark_module, "_jvm_log", None)
    monkeypatch.setattr(spark_module, "build_spark", fake_build_spark)
    code = run_main(job, ["--set", f"storage.data_root={tmp_path}",
                          "--set", "mlflow.tracking_uri=postgresql://u:hunter2secret@db/x"],
                    prog="catalogfs test", description="")
    err = capsys.readouterr().err.splitlines()
    assert code == 1 and err[0] == "catalogfs test: unexpected error (a bug), traceback:"
    # the message line, the first lines of the traceback, "... N more lines", the one cause, the log's path
    assert len(err) == 1 + TRACEBACK_LINES_SHOWN + 1 + 1 + 1, len(err)
    assert err[-2] == "Caused by: ERROR XSDB6: Another instance of Derby may have already booted"
    assert err[-1] == f"JVM log: {jvm_log}"
    kept = jvm_log.read_text()
    assert kept.startswith("JVM output\n") and kept.count("Frame.call") == 3050 and "XSDB6" in kept
    assert "hunter2secret" not in kept and "hunter2secret" not in "\n".join(err)
