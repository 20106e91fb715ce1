"""The CLI's contract for user mistakes: one clear line and a documented exit code, no traceback.
(These fail before Spark starts, so they need no JVM.)"""

import pytest

from jobs import cli
from jobs import embed_frames, make_sample_videos


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
    (["similar"], "the following arguments are required: --video-id"),
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
