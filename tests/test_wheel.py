"""The product from its own wheel, as a new user gets it: built from a copy of this checkout,
installed into a fresh virtualenv outside it (tests/wheel_env.py), run from an unrelated folder with
no path to the checkout. Its file list, ``catalogfs --version``, the data root it picks, and a whole
``catalogfs demo`` whose published rows are read back with delta-rs (no Spark)."""

from __future__ import annotations

import json
import re
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from catalogfs.jobs.samples import SAMPLE_PHOTOS
from tests.helpers import PROJECT_ROOT

# repository folder → where its files go in the wheel (setup.cfg package_dir)
MAPPED = {"catalogfs": "catalogfs", "jobs": "catalogfs/jobs", "features": "catalogfs/features",
          "udfs": "catalogfs/udfs", "expectations": "catalogfs/expectations", "conf": "catalogfs/conf"}
PROFILES = ("local", "cluster", "gpu_cluster", "databricks")
DEMO_SETTINGS = ("samples.seconds=2.0", "samples.width=320", "samples.height=180", "inference.batch_size=8")


def _run(venv, args: list[str], cwd: Path, timeout: float = 60, **env: str | None) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=venv.env(**env), capture_output=True, text=True, timeout=timeout)


def test_the_wheel_holds_one_package_and_its_resources(built_wheel):
    with zipfile.ZipFile(built_wheel) as zf:
        names = set(zf.namelist())
        (dist_info,) = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
        assert zf.read(f"{dist_info}/top_level.txt").decode().split() == ["catalogfs"]
    assert {n.split("/")[0] for n in names} == {"catalogfs", dist_info}  # no jobs/, features/ … of their own
    assert re.fullmatch(r"catalogfs-\d+\.\d+\.\d+\.dist-info", dist_info)
    required = {"catalogfs/conf/base.yaml", "catalogfs/conf/log4j2.properties", "catalogfs/py.typed",
                *(f"catalogfs/conf/{p}.yaml" for p in PROFILES)}
    taxonomies = sorted((PROJECT_ROOT / "conf" / "taxonomies").glob("*.yaml"))
    guard = sorted((PROJECT_ROOT / "catalogfs" / "java").glob("*.java"))
    assert taxonomies and guard
    required |= {f"catalogfs/conf/taxonomies/{p.name}" for p in taxonomies}
    required |= {f"catalogfs/java/{p.name}" for p in guard}
    for folder, package in MAPPED.items():  # every module of the mapped folders, none left behind
        required |= {f"{package}/{p.name}" for p in (PROJECT_ROOT / folder).glob("*.py")}
    assert required - names == set()


def test_the_installed_package_is_the_wheels_not_the_checkout(wheel_venv, tmp_path):
    probe = ("import json, catalogfs, catalogfs.jobs.cli as cli, catalogfs.packaged as p, importlib.util as u\n"
             "print(json.dumps({'file': catalogfs.__file__, 'cli': cli.__file__, 'conf': str(p.conf_dir()),\n"
             "  'checkout': p.checkout_root() and str(p.checkout_root()),\n"
             "  'tops': [m for m in ('jobs', 'features', 'udfs', 'expectations', 'conf') if u.find_spec(m)]}))")
    done = _run(wheel_venv, [str(wheel_venv.python), "-c", probe], tmp_path)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    site = wheel_venv.site_packages
    for key in ("file", "cli", "conf"):
        assert Path(seen[key]).is_relative_to(site), seen
    assert seen["checkout"] is None and seen["tops"] == []
    assert (Path(seen["conf"]) / "base.yaml").is_file()


def test_catalogfs_version_from_the_console_script(wheel_venv, tmp_path):
    version = re.fullmatch(r"catalogfs-([^-]+)-.*\.whl", wheel_venv.wheel.name).group(1)
    done = _run(wheel_venv, ["catalogfs", "--version"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"catalogfs {version}"
    assert (wheel_venv.root / "bin" / "catalogfs").read_text().startswith(f"#!{wheel_venv.python}")


def test_the_default_data_root_is_the_per_user_folder(wheel_venv, tmp_path):
    """No data root configured: $XDG_DATA_HOME/catalogfs, else ~/.local/share/catalogfs — not the
    working directory, not site-packages; and a dry run (--check) creates nothing."""
    home, cwd = tmp_path / "home", tmp_path / "work"
    cwd.mkdir()
    cases = {"": home / ".local" / "share" / "catalogfs", str(tmp_path / "xdg"): tmp_path / "xdg" / "catalogfs"}
    for xdg, expected in cases.items():
        env = {"HOME": str(home), "XDG_DATA_HOME": xdg or None}
        shown = _run(wheel_venv, ["catalogfs", "config", "show", "--json"], cwd, **env)
        assert shown.returncode == 0, shown.stderr
        entry = {e["key"]: e for e in json.loads(shown.stdout)}["storage.data_root"]
        assert Path(entry["value"]) == expected, entry
        assert "per-user" in entry["origin"], entry
    checked = _run(wheel_venv, ["catalogfs", "demo", "--check"], cwd, HOME=str(home), XDG_DATA_HOME=None)
    assert checked.returncode == 0, checked.stderr
    assert "arguments and config ok" in checked.stdout
    assert list(cwd.iterdir()) == [] and not (tmp_path / "xdg").exists()
    assert not list(home.rglob("catalogfs"))


@pytest.fixture(scope="module")
def demo(wheel_venv, tmp_path_factory):
    """One ``catalogfs demo`` from the wheel's console script, in an empty unrelated folder, with a
    temporary data root: (data root, its stdout, the working directory, site-packages files before)."""
    work = tmp_path_factory.mktemp("demo")
    cwd, data_root = work / "cwd", work / "data"
    cwd.mkdir()
    site = wheel_venv.site_packages / "catalogfs"
    before = {p for p in site.rglob("*") if "__pycache__" not in p.parts}
    sets = [arg for setting in (f"storage.data_root={data_root}", *DEMO_SETTINGS) for arg in ("--set", setting)]
    done = _run(wheel_venv, ["catalogfs", "demo", *sets], cwd, timeout=900)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    after = {p for p in site.rglob("*") if "__pycache__" not in p.parts}
    return data_root, done.stdout, cwd, after - before


def _table(data_root: Path, name: str):
    from deltalake import DeltaTable

    return DeltaTable(str(data_root / "warehouse" / "catalog_features.db" / name)).to_pandas()


def test_the_demo_runs_from_the_wheel_and_writes_only_under_its_data_root(demo):
    data_root, stdout, cwd, new_in_site_packages = demo
    assert "catalogfs demo: done" in stdout
    assert f"tables live in   {data_root / 'warehouse' / 'catalog_features.db'}" in stdout
    assert list(cwd.iterdir()) == [] and new_in_site_packages == set()


def test_the_demo_published_embeddings_of_every_sample_video(demo):
    data_root, stdout, _, _ = demo
    space, dim = re.search(r"embedding space\s+(\S+)\s+\((\d+)-d, cosine\)", stdout).groups()
    assert int(dim) == 1280  # EfficientNet-Lite0's head
    videos = _table(data_root, "video_embeddings")
    assert sorted(videos.video_id) == sorted(p.video_id for p in SAMPLE_PHOTOS)
    assert set(videos.embedding_space) == {space} and videos.model_version.str.len().min() > 0
    frames = _table(data_root, "frame_embeddings")
    ok = frames[frames.status == "ok"]
    assert set(ok.video_id) == set(videos.video_id)  # and the truncated upload the demo adds: a status row
    assert frames[frames.status != "ok"].set_index("video_id").status.to_dict() == {"corrupt_upload": "video_truncated"}
    assert len(ok) == int(re.search(r"frames \(ok\)\s+(\d+)", stdout).group(1))
    for vec in [*videos.embedding, *ok.embedding]:
        vec = np.asarray(vec, dtype=np.float64)
        assert vec.shape == (1280,) and np.isfinite(vec).all()
        assert abs(np.linalg.norm(vec) - 1) < 1e-4
    labels = _table(data_root, "video_labels")
    top = labels[labels["rank"] == 1].set_index("video_id").label
    assert top["coffee_cup"] == "espresso"
    assert set(top.index) == set(videos.video_id)
