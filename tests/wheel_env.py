"""The product as a user gets it: the wheel built from this checkout, installed into a fresh
virtualenv outside it, run from a folder that has nothing to do with it.

The virtualenv reuses the dependencies already installed (torch, pyspark … are GBs) the way
``scripts/ensure_env.sh`` layers ``.venv`` on the shared environment: a ``.pth`` path line naming
the site-packages folder that holds them (a path line only: that folder's own ``.pth`` files, such
as an editable install of the checkout, are not run). The wheel is installed with
``pip install --no-deps --no-index``: nothing is downloaded.

Used by tests/test_wheel.py, tests/test_standalone_cluster.py and tests/test_databricks_bundle.py
through the session fixtures ``built_wheel`` and ``wheel_venv`` (tests/conftest.py).
"""

from __future__ import annotations

from dataclasses import dataclass
import os
from pathlib import Path
import subprocess
import sys
import sysconfig
import zipfile

from tests.helpers import PROJECT_ROOT

# What the checkout's own environment puts into every process it starts and an installed product
# must not lean on: .venv's Spark conf folder (its .pth sets it), a path to the checkout, a
# spark-submit gateway of the test process.
_CHECKOUT_ENV = ("SPARK_CONF_DIR", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "SPARK_HOME", "PYSPARK_PYTHON",
                 "PYSPARK_DRIVER_PYTHON", "PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET", "CATALOGFS_CONF_DIR",
                 "CATALOGFS_DATA_ROOT")


@dataclass(frozen=True)
class WheelVenv:
    """A virtualenv with the wheel installed (and nothing of the checkout)."""

    root: Path
    wheel: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def site_packages(self) -> Path:
        """Its own site-packages (where the wheel went): this interpreter's scheme under its root."""
        return Path(sysconfig.get_path("purelib", vars={"base": str(self.root), "platbase": str(self.root)}))

    def env(self, **extra: str | None) -> dict[str, str]:
        """The environment of a user's shell in this virtualenv: its bin first on PATH, nothing
        that points at the checkout or its .venv; then ``extra`` (a ``None`` value unsets)."""
        env = {k: v for k, v in os.environ.items() if k not in _CHECKOUT_ENV}
        path = [p for p in env.get("PATH", "").split(os.pathsep) if p and not p.startswith(str(PROJECT_ROOT))]
        env.update(PATH=os.pathsep.join([str(self.root / "bin"), *path]), SPARK_LOCAL_IP="127.0.0.1",
                   GX_ANALYTICS_ENABLED="false")
        env.update(extra)
        return {k: v for k, v in env.items() if v is not None}


def source_tree(dest: Path) -> Path:
    """A copy of the checkout as a fresh clone would have it (tracked files, and new files git does
    not ignore): no build/, .venv or data/ of this checkout goes into the wheel."""
    listed = _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=PROJECT_ROOT).stdout
    for name in filter(None, listed.split("\0")):
        source = PROJECT_ROOT / name
        if source.is_file():  # (a tracked file deleted in the working tree is not part of it)
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    return dest


def build_wheel(work: Path) -> Path:
    """``pip wheel --no-deps --no-build-isolation`` of a copy of the checkout; the wheel's path."""
    source = source_tree(work / "src")
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
          "-w", str(work / "dist"), str(source)], cwd=work)
    (wheel,) = (work / "dist").glob("catalogfs-*.whl")
    return wheel


def wheel_entry_points(wheel: Path) -> dict[str, str]:
    """The wheel's console scripts: name → ``module:function``."""
    with zipfile.ZipFile(wheel) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt")]
        text = zf.read(name).decode()
    section, scripts = "", {}
    for line in map(str.strip, text.splitlines()):
        if line.startswith("["):
            section = line.strip("[]")
        elif "=" in line and section == "console_scripts":
            key, value = (part.strip() for part in line.split("=", 1))
            scripts[key] = value
    return scripts


def dependency_site_packages() -> Path:
    """The site-packages folder that holds the installed dependencies (pyspark's)."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent.parent


def install_in_fresh_venv(wheel: Path, root: Path) -> WheelVenv:
    """A new virtualenv at ``root`` layered on the dependencies, with ``wheel`` installed into it."""
    _run([sys.executable, "-m", "venv", "--without-pip", str(root)], cwd=root.parent)
    venv = WheelVenv(root=root, wheel=wheel)
    purelib = venv.site_packages
    Path(purelib, "_dependencies.pth").write_text(f"{dependency_site_packages()}\n")
    _run([str(venv.python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
         cwd=root, env=venv.env())
    return venv


def _run(cmd: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(cmd)} → {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done
