"""The documented surface: ``import catalogfs`` (version, __all__, lazy and cheap), ``catalogfs --version``
and ``catalogfs config show`` (each key's value and where it came from). No JVM."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys

import catalogfs
import catalogfs.errors
from catalogfs.jobs import cli


def test_version_is_the_installed_distributions():
    assert catalogfs.__version__ == importlib.metadata.version("catalogfs")


def test_import_is_cheap_and_every_public_name_resolves():
    code = ("import sys, catalogfs; heavy = [m for m in ('pyspark', 'pandas', 'torch', 'mlflow', "
            "'great_expectations') if m in sys.modules]; print(heavy)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr
    for name in catalogfs.__all__:
        assert getattr(catalogfs, name) is not None, name
    assert catalogfs.VectorIndex.__module__ == "catalogfs.features.ann"


def test_errors_are_one_set_of_classes():
    for name in catalogfs.__all__:
        value = getattr(catalogfs, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert getattr(catalogfs.errors, name) is value
            assert issubclass(value, catalogfs.errors.CatalogfsError) and isinstance(value.exit_code, int)


def test_cli_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"catalogfs {catalogfs.__version__}"


def _show(*args: str, env: dict[str, str] | None = None) -> dict[str, dict]:
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("CATALOGFS_")} | (env or {})
    done = subprocess.run([sys.executable, "-m", "catalogfs.jobs.cli", "config", "show", "--json", *args],
                          capture_output=True, text=True, env=run_env, timeout=120)
    assert done.returncode == 0, done.stderr
    return {row["key"]: row for row in json.loads(done.stdout)}


def test_config_show_names_each_keys_origin(tmp_path):
    extra = tmp_path / "team.yaml"
    extra.write_text("inference:\n  batch_size: 7\n")
    rows = _show("--conf", "local", "--conf", str(extra), "--set", "index.k=9", "--set", "server.token=s3cr3t-token",
                 env={"CATALOGFS_DATA_ROOT": str(tmp_path / "root")})
    assert rows["storage.data_root"]["value"] == str(tmp_path / "root")
    assert rows["storage.data_root"]["origin"].startswith("environment CATALOGFS_DATA_ROOT (in ")
    assert rows["spark.master"]["origin"].endswith("local.yaml")        # the profile
    assert rows["spark.app_name"]["origin"].endswith("base.yaml")       # the packaged defaults
    assert (rows["inference.batch_size"]["value"], rows["inference.batch_size"]["origin"]) == (7, str(extra))
    assert (rows["index.k"]["value"], rows["index.k"]["origin"]) == (9, "--set index.k")
    assert rows["server.token"]["value"] == "***"                       # a secret is never printed
    assert rows["spark.settings.spark.driver.memory"]["origin"].endswith("local.yaml")


def test_config_show_default_data_root_and_bad_key(tmp_path):
    rows = _show()
    assert rows["storage.data_root"]["origin"].startswith("default")
    done = subprocess.run([sys.executable, "-m", "catalogfs.jobs.cli", "config", "show", "--set", "inference.nope=1"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "unknown key 'inference.nope'" in done.stderr


def test_profiles_by_name_and_the_per_user_default_outside_a_checkout(tmp_path, monkeypatch):
    import pytest

    from catalogfs import packaged
    from catalogfs.config import load_config

    assert load_config(["databricks"]).storage.catalog == "main"      # a packaged profile by name
    with pytest.raises(catalogfs.ConfigError, match=r"--conf nosuch: no such file.*profiles: cluster, databricks"):
        load_config(["nosuch"])
    assert packaged.checkout_root() is not None                       # the tests run from a checkout
    monkeypatch.setattr(packaged, "checkout_root", lambda: None)      # as installed from the wheel
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert packaged.default_data_root() == tmp_path / "xdg" / "catalogfs"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert packaged.default_data_root() == tmp_path / "home" / ".local" / "share" / "catalogfs"
