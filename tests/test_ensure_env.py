"""scripts/ensure_env.sh: this clone's .venv runs this clone's code, keeps Spark's conf under the
clone, and leaves the shared environment it is layered on as it was."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
LAYER = VENV / ".catalogfs-layer"  # written by ensure_env.sh: shared=<environment>, root=<clone>

pytestmark = pytest.mark.skipif(
    not LAYER.is_file() or Path(sys.prefix).resolve() != VENV.resolve(),
    reason="not run by this clone's layered .venv (a user-made .venv, or another interpreter)")


def _shared_env() -> Path:
    fields = dict(line.split("=", 1) for line in LAYER.read_text().splitlines())
    assert fields["root"] == str(ROOT), fields
    return Path(fields["shared"])


def _newer_than(folder: Path, since_ns: int) -> list[str]:
    """Files, links and folders under ``folder`` modified after ``since_ns`` (a folder's time
    changes when an entry is added or removed in it)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in [".", *dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            if os.lstat(path).st_mtime_ns > since_ns:
                found.append(os.path.normpath(path))
    return found


def test_this_clones_python_imports_this_clones_code_and_spark_conf():
    env = {k: v for k, v in os.environ.items() if k not in ("SPARK_CONF_DIR", "PYTHONPATH")}
    code = ("import os, catalogfs, catalogfs.jobs as jobs; print(catalogfs.__file__); print(jobs.__file__); "
            "print(os.environ['SPARK_CONF_DIR'])")
    done = subprocess.run([str(VENV / "bin" / "python"), "-c", code], cwd="/", env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [str(ROOT / "catalogfs" / "__init__.py"), str(ROOT / "jobs" / "__init__.py"),
                                        str(VENV / "spark-conf")]
    assert (VENV / "spark-conf" / "spark-defaults.conf").is_file()
    submit = (VENV / "bin" / "spark-submit").read_text()
    assert str(VENV / "spark-conf") in submit and f'exec "{_shared_env()}/bin/spark-submit"' in submit


def test_a_rerun_changes_nothing_in_the_shared_environment(tmp_path):
    shared = _shared_env()
    before = tmp_path / "before"
    before.touch()
    since_ns = before.stat().st_mtime_ns
    layer_ns = LAYER.stat().st_mtime_ns
    done = subprocess.run(["bash", str(ROOT / "scripts" / "ensure_env.sh")], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "creating .venv" not in done.stderr and LAYER.stat().st_mtime_ns == layer_ns  # not rebuilt
    assert _newer_than(shared, since_ns) == []
    assert (VENV / "spark-conf" / "spark-defaults.conf").stat().st_mtime_ns > since_ns  # it did write, here
