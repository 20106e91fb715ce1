"""What extraction takes as input (issue 12): video ids from paths relative to the input root,
files it skips (always counted, never silently), manifests of user-chosen ids, and the refusal of a
video id that the frames table already holds from another file.

The listing tests are plain Python; the last two go through the real extract job on Spark.
"""

from __future__ import annotations

import logging
import os
import shutil
import unicodedata

import pytest

import catalogfs.features.video_frames as vf
from catalogfs.config import DEFAULT_CONF_DIR, load_config
from catalogfs.errors import ConfigError
from catalogfs.jobs.samples import SAMPLE_PHOTOS, make_sample_videos

NFD_NAME = unicodedata.normalize("NFD", "café ünïcode name")  # how macOS writes accented names


def _touch(root, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def _ids(listing) -> list[str]:
    return [vid for vid, _ in listing]


# ---------------------------------------------------------------- ids

def test_ids_are_paths_relative_to_the_input_root(tmp_path):
    _touch(tmp_path, "a/clip.mp4", "b/clip.mp4", f"{NFD_NAME}.mp4", "cat_chelsea.mp4", "deep/er/x-1.v2.MOV")
    videos = vf.list_videos(str(tmp_path))
    assert videos == [
        ("a/clip", str((tmp_path / "a" / "clip.mp4").resolve())),
        ("b/clip", str((tmp_path / "b" / "clip.mp4").resolve())),
        ("caf\u00e9 \u00fcn\u00efcode name", str((tmp_path / f"{NFD_NAME}.mp4").resolve())),  # NFC, readable
        ("cat_chelsea", str((tmp_path / "cat_chelsea.mp4").resolve())),  # flat ASCII names: as before
        ("deep/er/x-1.v2", str((tmp_path / "deep" / "er" / "x-1.v2.MOV").resolve())),
    ]


def test_glob_root_is_the_folder_before_the_first_wildcard_and_a_file_is_its_stem(tmp_path):
    _touch(tmp_path, "2024/a/clip.mp4", "2024/b/clip.mp4", "2025/a/clip.mp4")
    assert _ids(vf.list_videos(str(tmp_path / "2024" / "*" / "*.mp4"))) == ["a/clip", "b/clip"]
    assert _ids(vf.list_videos(str(tmp_path / "*" / "a" / "clip.mp4"))) == ["2024/a/clip", "2025/a/clip"]
    assert _ids(vf.list_videos(str(tmp_path / "20*" / "**" / "*.mp4"))) == [
        "2024/a/clip", "2024/b/clip", "2025/a/clip"]
    single = tmp_path / "2024" / "a" / "clip.mp4"
    assert vf.list_videos(str(single)) == [("clip", str(single.resolve()))]


def test_two_files_with_one_id_are_an_error_naming_both(tmp_path):
    _touch(tmp_path, "a.mp4", "a.mov")
    with pytest.raises(ValueError, match=r"two inputs map to video id 'a': .*a\.mov and .*a\.mp4"):
        vf.list_videos(str(tmp_path))


def test_names_equal_after_unicode_normalisation_are_one_id(tmp_path):
    nfc = unicodedata.normalize("NFC", "café")
    _touch(tmp_path, f"{nfc}.mp4", f"{unicodedata.normalize('NFD', 'café')}.mp4")
    assert len(os.listdir(tmp_path)) == 2  # two files on disk
    with pytest.raises(ValueError, match=f"two inputs map to video id '{nfc}'"):
        vf.list_videos(str(tmp_path))


def test_control_characters_invalid_utf8_and_empty_ids_are_errors_naming_the_file(tmp_path):
    bell = tmp_path / "bell"
    _touch(bell, "ring\x07ring.mp4")
    with pytest.raises(ValueError, match=r"ring\\x07ring\.mp4.*control character U\+0007"):
        vf.list_videos(str(bell))
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / os.fsdecode(b"latin1 \xe9t\xe9.mp4")).write_bytes(b"x")  # a Latin-1 name, not UTF-8
    with pytest.raises(ValueError, match=r"latin1 .*\.mp4.*not valid UTF-8"):
        vf.list_videos(str(raw))
    blank = tmp_path / "blank"
    _touch(blank, "   .mp4")
    with pytest.raises(ValueError, match=r"   \.mp4.*empty video id"):
        vf.list_videos(str(blank))


# ---------------------------------------------------------------- skipped files

def test_every_skipped_file_is_counted_with_examples(tmp_path):
    _touch(tmp_path, "ok.mp4", "sub/ok2.webm", "a.gif", "b.txt", "c.m4a", "sub/d.gif", ".DS_Store",
           ".hidden.mp4", ".cache/e.mp4", "upload.part.mp4", "f.gif", "g.gif", "h.gif")
    listing = vf.scan_videos(str(tmp_path))
    assert _ids(listing.videos) == ["ok", "sub/ok2"]
    skipped = listing.skipped
    assert skipped.count == 11
    assert dict(skipped.reasons) == {vf.SKIP_EXTENSION: 7, vf.SKIP_HIDDEN: 3, vf.SKIP_PARTIAL: 1}
    assert len(skipped.examples) == 5 and {"a.gif", ".DS_Store", "upload.part.mp4"} <= set(skipped.examples)
    assert skipped.describe() == (
        f"skipped 11 files (7 not in extract.extensions, 3 hidden, 1 partial upload): "
        f"e.g. {', '.join(skipped.examples)}")


def test_skipped_summary_for_one_reason_and_a_glob(tmp_path):
    _touch(tmp_path, "v/ok.mp4", "v/a.gif", "v/b.txt")
    skipped = vf.scan_videos(str(tmp_path / "v" / "*")).skipped
    assert skipped.describe() == "skipped 2 files (not in extract.extensions): e.g. a.gif, b.txt"
    assert vf.scan_videos(str(tmp_path / "v" / "*.mp4")).skipped.describe() == ""  # nothing skipped


def test_extensions_widen_the_set(tmp_path):
    _touch(tmp_path, "ok.mp4", "anim.GIF", "b.txt")
    listing = vf.scan_videos(str(tmp_path), extensions=(".mp4", ".gif"))
    assert _ids(listing.videos) == ["anim", "ok"] and listing.skipped.examples == ("b.txt",)


def test_extensions_config_key(tmp_path):
    conf = DEFAULT_CONF_DIR / "local.yaml"
    assert load_config([conf]).extract.extensions == vf.VIDEO_EXTENSIONS
    cfg = load_config([conf], ["extract.extensions=[.MP4, gif]"])
    assert cfg.extract.extensions == (".mp4", ".gif")
    with pytest.raises(ConfigError, match=r"bad value for 'extract.extensions'.*one extension like \.mp4"):
        load_config([conf], ["extract.extensions=[.tar.gz]"])
    with pytest.raises(ConfigError, match="bad value for 'extract.extensions'"):
        load_config([conf], ["extract.extensions=[]"])


def test_summary_line_names_the_skipped_files(cfg, capsys):
    from catalogfs.features.frames import FramesPublish
    from catalogfs.jobs.extract_frames import ExtractResult, print_result

    skipped = vf.SkippedFiles(reasons=((vf.SKIP_EXTENSION, 2),), examples=("a.gif", "b.txt"))
    publish = FramesPublish(videos=1, frames=3, status_counts={"ok": 3}, changed_rows=3, table_version=1)
    print_result(ExtractResult(run_id="r", input="/v", publish=publish, skipped=skipped), cfg)
    out = capsys.readouterr().out.strip()
    assert out.startswith("extract_frames: 1 videos → 3 ok frames (ok=3)")
    assert out.endswith("; skipped 2 files (not in extract.extensions): e.g. a.gif, b.txt")


# ---------------------------------------------------------------- manifest

def test_manifest_gives_user_ids_and_resolves_relative_uris(tmp_path):
    _touch(tmp_path, "media/x.mp4", "elsewhere/y.mov")
    manifest = tmp_path / "media" / "ids.csv"
    manifest.write_text("video_id,uri\n"
                        f"cats/chelsea,x.mp4\n"
                        f" {unicodedata.normalize('NFD', 'café')} , {tmp_path / 'elsewhere' / 'y.mov'} \n"
                        "\n"
                        "remote,s3://bucket/z.mp4\n", encoding="utf-8")
    assert vf.read_manifest(manifest) == [
        ("cats/chelsea", str((tmp_path / "media" / "x.mp4").resolve())),
        ("café", str((tmp_path / "elsewhere" / "y.mov").resolve())),
        ("remote", "s3://bucket/z.mp4"),
    ]


@pytest.mark.parametrize("text, expected", [
    ("a.mp4\nb.mp4\n", r"header must name the columns video_id,uri \(got a\.mp4\)"),
    ("", r"is empty; expected a header row video_id,uri"),
    ("video_id,uri\na,a.mp4\nb,b.mp4\na,c.mp4\n", r"line 4: video id 'a' is also on line 2"),
    ("video_id,uri\na,\n", r"line 2: no uri for video id 'a'"),
    ("video_id,uri\nbad\x01id,a.mp4\n", r"line 2: .*control character U\+0001"),
    ("video_id,uri\n ,a.mp4\n", r"line 2: .*empty video id"),
])
def test_bad_manifests_are_one_line_errors(tmp_path, text, expected):
    manifest = tmp_path / "ids.csv"
    manifest.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=expected) as info:
        vf.read_manifest(manifest)
    assert str(manifest) in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------- across runs (Spark)

@pytest.fixture(scope="module")
def inputs_cfg(cfg):
    from tests.helpers import with_database

    return with_database(cfg, "extract_inputs_features")


def _frames(spark, cfg) -> dict[str, set[tuple[str, str]]]:
    """video id → {(source_uri, content_sha256)} of its ok frames."""
    from catalogfs.features.tables import FRAMES

    out: dict[str, set[tuple[str, str]]] = {}
    for r in spark.table(cfg.storage.qualified(FRAMES.name)).where("status = 'ok'").collect():
        out.setdefault(r.video_id, set()).add((r.source_uri, r.content_sha256))
    return out


def test_an_id_from_another_file_is_refused_until_replaced(spark, inputs_cfg, tmp_path, capsys):
    from catalogfs.jobs import cli
    from catalogfs.errors import InputError
    from catalogfs.features import delta_writer
    from catalogfs.jobs import extract_frames

    cfg = inputs_cfg
    first, second, moved = tmp_path / "first", tmp_path / "second", tmp_path / "moved"
    for folder, photo in ((first, "cat_chelsea"), (second, "coffee_cup")):  # two different clip.mp4
        video = make_sample_videos(folder, seconds=1.0, fps=4, width=160, height=96,
                                   photos=tuple(p for p in SAMPLE_PHOTOS if p.video_id == photo))[0]
        video.rename(folder / "clip.mp4")
    old_uri, new_uri = str((first / "clip.mp4").resolve()), str((second / "clip.mp4").resolve())

    extract_frames.run(spark, cfg, input=str(first))
    before = _frames(spark, cfg)
    assert {uri for uri, _ in before["clip"]} == {old_uri}
    version = delta_writer.table_version(spark, cfg.storage, "frames")

    # A second folder's clip.mp4 gets the same id: refused, one line naming id, both files and --replace.
    with pytest.raises(InputError) as info:
        extract_frames.run(spark, cfg, input=str(second))
    message = str(info.value)
    assert "'clip'" in message and old_uri in message and new_uri in message and "--replace" in message
    assert "\n" not in message
    overrides = ["--conf", str(DEFAULT_CONF_DIR / "local.yaml"),
                 "--set", f"storage.data_root={cfg.storage.data_root}",
                 "--set", f"storage.database={cfg.storage.database}", "--set", "spark.master=local[2]"]
    assert cli.main(["extract-frames", *overrides, "--input", str(second)]) == 4
    assert "already in extract_inputs_features.frames" in capsys.readouterr().err
    assert _frames(spark, cfg) == before  # nothing written
    assert delta_writer.table_version(spark, cfg.storage, "frames") == version

    # --replace takes the new file for the id: its frames and source_uri replace the old ones.
    replaced = extract_frames.run(spark, cfg, input=str(second), replace=True)
    after = _frames(spark, cfg)
    assert {uri for uri, _ in after["clip"]} == {new_uri}
    assert {sha for _, sha in after["clip"]}.isdisjoint({sha for _, sha in before["clip"]})
    assert replaced.publish.changed_rows > 0
    assert extract_frames.run(spark, cfg, input=str(second)).publish.changed_rows == 0  # now it is the file

    # A moved file (same bytes, new place): refused too, and --replace records the new source_uri.
    moved.mkdir()
    shutil.copy(second / "clip.mp4", moved / "clip.mp4")
    moved_uri = str((moved / "clip.mp4").resolve())
    with pytest.raises(InputError, match="'clip'"):
        extract_frames.run(spark, cfg, input=str(moved))
    extract_frames.run(spark, cfg, input=str(moved), replace=True)
    assert _frames(spark, cfg)["clip"] == {(moved_uri, sha) for _, sha in after["clip"]}

    # A manifest gives the first folder's file an id of its own, beside the current one.
    manifest = tmp_path / "ids.csv"
    manifest.write_text(f"video_id,uri\nclip,moved/clip.mp4\nclip v1 (first),{first / 'clip.mp4'}\n")
    extract_frames.run(spark, cfg, manifest=str(manifest))
    assert {vid: {uri for uri, _ in rows} for vid, rows in _frames(spark, cfg).items()} == {
        "clip": {moved_uri}, "clip v1 (first)": {old_uri}}


def test_skipped_files_are_in_the_result_and_the_log(spark, inputs_cfg, tmp_path, caplog):
    from catalogfs.jobs import extract_frames

    folder = tmp_path / "mixed"
    video = make_sample_videos(folder, seconds=1.0, fps=4, width=160, height=96,
                               photos=tuple(p for p in SAMPLE_PHOTOS if p.video_id == "flower"))[0]
    video.rename(folder / "skip_test_flower.mp4")
    _touch(folder, "poster.gif", "notes.txt", ".DS_Store")
    caplog.set_level(logging.WARNING, logger="catalogfs.jobs.extract_frames")
    result = extract_frames.run(spark, inputs_cfg, input=str(folder))
    assert result.publish.videos == 1 and result.publish.status_counts == {"ok": 1}
    assert dict(result.skipped.reasons) == {vf.SKIP_EXTENSION: 2, vf.SKIP_HIDDEN: 1}
    assert set(result.skipped.examples) == {"poster.gif", "notes.txt", ".DS_Store"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("skipped 3 files" in w and "poster.gif" in w for w in warnings), warnings


# ---------------------------------------------------------------- arguments (no Spark: they fail first)

def test_input_and_manifest_exclude_each_other(capsys):
    from catalogfs.jobs import cli

    assert cli.main(["extract-frames", "--input", "/v", "--manifest", "ids.csv"]) == 2
    err = capsys.readouterr().err
    assert "argument --manifest: not allowed with argument --input" in err and "Traceback" not in err


def test_only_skipped_files_is_no_videos_naming_them(cfg, tmp_path):
    from catalogfs.errors import InputError
    from catalogfs.jobs import extract_frames

    _touch(tmp_path, "poster.gif", "notes.txt")
    with pytest.raises(InputError) as info:
        extract_frames.run(None, cfg, input=str(tmp_path))  # fails before Spark is needed
    assert str(info.value) == (
        f"no videos found at {str(tmp_path)!r} (extract.input): skipped 2 files (not in extract.extensions): "
        f"e.g. notes.txt, poster.gif; widen extract.extensions or point --input at a folder of videos")
