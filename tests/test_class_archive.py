"""The JVM class-data archive (catalogfs.class_archive): which archive a launch maps or writes,
who may write it, when it is not used; and that the test session's own JVM maps it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from catalogfs import class_archive
from catalogfs.class_archive import archive_key, current_archive, finish_launch, plan_launch


@pytest.fixture
def install(tmp_path, monkeypatch):
    """A fake JDK and Spark installation, an empty conf folder and an ivy cache."""
    java_home = tmp_path / "jdk"
    (java_home / "bin").mkdir(parents=True)
    (java_home / "bin" / "java").write_text("#!/bin/sh\n")
    (java_home / "lib" / "server").mkdir(parents=True)
    (java_home / "lib" / "server" / "libjvm.so").write_bytes(b"jvm")
    spark_home = tmp_path / "spark"
    (spark_home / "jars").mkdir(parents=True)
    for name in ("spark-core.jar", "spark-sql.jar"):
        (spark_home / "jars" / name).write_bytes(name.encode())
    conf = tmp_path / "conf"
    conf.mkdir()
    monkeypatch.setenv("JAVA_HOME", str(java_home))
    monkeypatch.setenv("SPARK_CONF_DIR", str(conf))
    monkeypatch.delenv("PYSPARK_SUBMIT_ARGS", raising=False)
    return {"ivy": tmp_path / "ivy", "spark_home": spark_home, "conf": conf, "java_home": java_home}


def test_the_first_launch_writes_the_archive_and_the_next_maps_it(install):
    ivy, spark_home = install["ivy"], install["spark_home"]
    first = plan_launch(ivy, spark_home)
    key = archive_key(spark_home)
    assert first.dump == ivy / "class-archives" / f"{key}.{os.getpid()}.tmp"
    assert first.java_options[0] == f"-XX:ArchiveClassesAtExit={first.dump}"
    assert current_archive(ivy, spark_home) is None
    first.dump.write_bytes(b"classes")  # what the JVM writes at exit
    first.dump.chmod(0o400)
    finish_launch(first, exited_cleanly=True)
    archive = current_archive(ivy, spark_home)
    assert archive == ivy / "class-archives" / f"{key}.jsa" and archive.read_bytes() == b"classes"
    assert not first.claim.exists() and not first.dump.exists()
    second = plan_launch(ivy, spark_home)
    assert second.java_options == [f"-XX:SharedArchiveFile={archive}"] and second.dump is None


def test_a_killed_jvm_leaves_no_archive_and_a_later_launch_writes_it(install):
    ivy, spark_home = install["ivy"], install["spark_home"]
    first = plan_launch(ivy, spark_home)
    first.dump.write_bytes(b"half")
    finish_launch(first, exited_cleanly=False)
    assert current_archive(ivy, spark_home) is None and not first.dump.exists()
    assert plan_launch(ivy, spark_home).dump is not None


def test_one_writer_at_a_time_and_a_dead_writers_claim_is_taken_over(install):
    ivy, spark_home = install["ivy"], install["spark_home"]
    key = archive_key(spark_home)
    claim = ivy / "class-archives" / f"{key}.claim"
    claim.parent.mkdir(parents=True)
    claim.write_text(str(os.getppid()))  # a live process is writing it
    busy = plan_launch(ivy, spark_home)
    assert busy.dump is None and busy.java_options == []
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    claim.write_text(str(dead.pid))
    (claim.parent / f"{key}.{dead.pid}.tmp").write_bytes(b"partial")  # what it left
    taken = plan_launch(ivy, spark_home)
    assert taken.dump is not None and claim.read_text() == str(os.getpid())
    assert not (claim.parent / f"{key}.{dead.pid}.tmp").exists()


def test_another_jdk_or_spark_gets_another_archive(install):
    spark_home = install["spark_home"]
    before = archive_key(spark_home)
    (spark_home / "jars" / "spark-sql.jar").write_bytes(b"a newer build")
    after_spark = archive_key(spark_home)
    (install["java_home"] / "lib" / "server" / "libjvm.so").write_bytes(b"another jvm")
    after_jdk = archive_key(spark_home)
    assert len({before, after_spark, after_jdk}) == 3
    assert archive_key(spark_home, "/opt/extra.jar") != after_jdk


@pytest.mark.parametrize("tamper", ["group-writable", "link"])
def test_an_archive_others_could_have_written_is_not_mapped(install, tamper, tmp_path):
    ivy, spark_home = install["ivy"], install["spark_home"]
    archive = ivy / "class-archives" / f"{archive_key(spark_home)}.jsa"
    archive.parent.mkdir(parents=True)
    if tamper == "link":
        (tmp_path / "elsewhere.jsa").write_bytes(b"x")
        archive.symlink_to(tmp_path / "elsewhere.jsa")
    else:
        archive.write_bytes(b"x")
        archive.chmod(0o664)
    plan = plan_launch(ivy, spark_home)
    assert plan.java_options == [] and plan.dump is None


def test_a_folder_others_can_write_is_not_used(install):
    ivy, spark_home = install["ivy"], install["spark_home"]
    (ivy / "class-archives").mkdir(parents=True)
    (ivy / "class-archives").chmod(0o777)
    assert plan_launch(ivy, spark_home).java_options == []


def test_spark_defaults_reach_the_jvm_through_properties_file(install):
    ivy, spark_home, conf = install["ivy"], install["spark_home"], install["conf"]
    (conf / "spark-defaults.conf").write_text("spark.jars /x.jar\n")
    plan = plan_launch(ivy, spark_home)
    empty = ivy / "class-archives" / "empty-conf"
    assert plan.env == {"SPARK_CONF_DIR": str(empty),
                        "PYSPARK_SUBMIT_ARGS": f"--properties-file {conf / 'spark-defaults.conf'} pyspark-shell"}
    assert empty.is_dir() and not any(empty.iterdir())


def test_a_conf_folder_with_more_than_the_defaults_keeps_the_jvm_on_its_jars(install):
    ivy, spark_home, conf = install["ivy"], install["spark_home"], install["conf"]
    (conf / "spark-defaults.conf").write_text("")
    (conf / "hive-site.xml").write_text("<configuration/>")
    plan = plan_launch(ivy, spark_home)
    assert plan == class_archive.LaunchPlan()


def test_old_installations_archives_are_deleted(install):
    ivy, spark_home = install["ivy"], install["spark_home"]
    folder = ivy / "class-archives"
    folder.mkdir(parents=True)
    for age, name in enumerate(["a", "b", "c", "d"]):
        (folder / f"{name}.jsa").write_bytes(b"x")
        os.utime(folder / f"{name}.jsa", (1_000_000 + age, 1_000_000 + age))
    plan_launch(ivy, spark_home)  # writes this installation's: keeps the two newest others
    assert sorted(path.name for path in folder.glob("*.jsa")) == ["c.jsa", "d.jsa"]


def test_the_session_jvm_maps_the_archive(spark, cfg):
    from pyspark import SparkContext
    from pyspark.find_spark_home import _find_spark_home

    archive = current_archive(cfg.spark.ivy_cache, Path(_find_spark_home()))
    assert archive is not None, "set-up (python -m catalogfs.spark) wrote no class archive"
    maps = Path(f"/proc/{SparkContext._gateway.proc.pid}/maps").read_text()
    assert str(archive) in maps
