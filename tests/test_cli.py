"""The CLI's contract for user mistakes: one clear line and a documented exit code, no traceback.
(These fail before Spark starts, so they need no JVM.)"""

from catalogfs import cli
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
