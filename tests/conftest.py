"""Shared fixtures and hooks: one local Spark session (Delta, Derby catalog) and one MLflow sqlite
registry per test run, both under a temporary data root; the test tiers (markers ``spark`` and
``slow``, see ``pytest_collection_modifyitems``). Helpers that test modules import are in helpers.py."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
# ONNX exports of the test models go to a folder of this test run (Spark's workers inherit it)
_ONNX_CACHE = tempfile.mkdtemp(prefix="catalogfs-test-onnx-")
os.environ["CATALOGFS_ONNX_CACHE"] = _ONNX_CACHE
atexit.register(shutil.rmtree, _ONNX_CACHE, True)

from catalogfs.config import DEFAULT_CONF_DIR, Config, load_config  # noqa: E402

pytest_plugins = ["pytester"]  # tests/test_markers.py collects the tiers in this process


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("catalogfs-data")


@pytest.fixture(scope="session")
def cfg(data_root: Path) -> Config:
    """Test config: the local config over a temporary data root, short sample videos."""
    return load_config([DEFAULT_CONF_DIR / "local.yaml"], [
        f"storage.data_root={data_root}",
        "spark.master=local[2]",
        "samples.seconds=2.0",
        "samples.width=320",
        "samples.height=180",
        "inference.batch_size=8",
        # the point-in-time history sync after each publish (a CDF read and a MERGE per run) is
        # tested where it matters (tests/test_training_set.py turns it on; the jobs run as
        # processes keep the default, on); elsewhere it only lengthens every embed run
        "publish.sync_history=false",
    ])


@pytest.fixture(scope="session")
def spark(cfg: Config):
    from catalogfs.spark import build_spark

    session = build_spark(cfg)
    yield session
    session.stop()


@pytest.fixture(scope="session")
def default_bundle(tmp_path_factory) -> Path:
    """The real EfficientNet-Lite0 ImageNet bundle, written once per test run."""
    from catalogfs.udfs.model_registry import write_default_bundle

    return write_default_bundle(tmp_path_factory.mktemp("bundle") / "efficientnet_lite0")


@pytest.fixture(scope="session")
def built_wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of this checkout, once per test run (tests/wheel_env.py)."""
    from tests.wheel_env import build_wheel

    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="session")
def wheel_venv(built_wheel: Path, tmp_path_factory):
    """A fresh virtualenv outside the checkout with the wheel installed, once per test run."""
    from tests.wheel_env import install_in_fresh_venv

    return install_in_fresh_venv(built_wheel, tmp_path_factory.mktemp("wheel-venv") / "venv")


# --- Test tiers -------------------------------------------------------------------------------------
# `spark`: the test starts a JVM. Marked here when it uses the `spark` fixture (directly or through
# another fixture) or lives in a module that runs jobs as separate processes; a test can also mark
# itself (`@pytest.mark.spark`). `make test-fast` runs `-m "not spark and not slow"`.
SUBPROCESS_SPARK_MODULES = frozenset({
    "test_crash_safety.py",  # the real jobs, each in its own process (python -m jobs.…)
    "test_standalone_cluster.py",  # a standalone master and worker, jobs sent with spark-submit
    "test_wheel.py",  # `catalogfs demo` from the installed wheel, in its own process
})

# `slow`: over ~20 s on the 2-core machine. How this was measured: `make test-fast` with
# --durations=25 (the non-Spark tests; 2 cores, load 6-9 from other jobs): only the pipeline bench
# test went over (28 s; the next was 11 s). The Spark modules were not timed one by one (a full run
# takes 30-60 min): they are the ones docs/development.md's measured round names as the slow part
# (crash_safety, operations) and those that start more JVMs or run the whole pipeline in their
# module fixture. `make test` prints --durations=25: keep these lists in step with what CI shows.
SLOW_MODULES = frozenset({
    "test_crash_safety.py",  # eight job processes killed and rerun
    "test_standalone_cluster.py",  # master + worker daemons, two spark-submit applications
    "test_concurrency.py",  # racing publishers with retries
    "test_operations.py",  # about ten embed runs on one catalogue
    "test_pipeline.py",  # the whole pipeline end to end in its module fixture
    "test_wheel.py",  # builds and installs the wheel, then a whole demo run from it
})
SLOW_TESTS = frozenset({  # <module>::<test function>
    "test_bench.py::test_pipeline_bench_rows_in_their_own_processes",  # 28 s
    "test_bench.py::test_scale_bench_reruns_cost_what_changed",  # two Spark processes, seven small runs
    "test_integrity.py::test_what_a_job_creates_under_the_data_root_is_private",  # a job in its own JVM, 80-105 s
})


# The longest modules first (seconds on the 2-core machine, one process, from `make test`'s slowest
# tests): the parallel stages hand modules to their workers in collection order, so a long module
# that came last would run alone at the end while the other worker idles. Within a module, and for
# the modules not named here, the order stays as written.
LONGEST_FIRST = (
    "test_chaos.py",  # a reference run, a kill and its rerun (one test: it cannot be split)
    "test_crash_safety.py",  # ~480
    "test_shared_catalog.py",  # ~370
    "test_bench.py",  # ~250
    "test_operations.py",  # ~200
    "test_relocate.py",  # ~190
    "test_training_set.py",  # ~150
    "test_standalone_cluster.py",  # ~150
    "test_spaces.py",  # ~150
    "test_integrity.py",  # ~150
    "test_relabel.py",  # ~140
    "test_security.py",  # ~120
    "test_transformers_models.py",  # ~100
    "test_wheel.py",  # ~100
    "test_concurrency.py",  # ~95
    "test_serve_supervisor.py",  # ~90
    "test_validation.py",  # ~90
    "test_incremental_plan.py",  # ~90
    "test_bad_frames.py",  # ~80
    "test_pipeline.py",  # ~80
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.path.name
        if "spark" in item.fixturenames or module in SUBPROCESS_SPARK_MODULES:
            item.add_marker(pytest.mark.spark)
        if module in SLOW_MODULES or f"{module}::{getattr(item, 'originalname', item.name)}" in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
    rank = {module: i for i, module in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each module keeps its order


def _jvm_started() -> bool:
    pyspark = sys.modules.get("pyspark")
    return pyspark is not None and pyspark.SparkContext._gateway is not None


@pytest.fixture(autouse=True)
def _jvm_only_in_spark_tests(request):
    """A test not marked `spark` that starts the JVM in this process fails: the fast tier must not
    need Java (and would stop being fast). Seen only while no JVM runs yet (the fast tier; in a
    full run, once the session fixture has started Spark, there is nothing left to see)."""
    if request.node.get_closest_marker("spark") or _jvm_started():
        yield
        return
    yield
    if _jvm_started():
        pytest.fail(f"{request.node.nodeid} started a JVM but is not marked `spark`: use the `spark` "
                    "fixture or mark it (@pytest.mark.spark)", pytrace=False)


_LOCK_HOLDER = """
import fcntl, sys, time
fh = open(sys.argv[1], "a+")
fcntl.lockf(fh, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(120)
"""


@pytest.fixture
def held(tmp_path):
    """(data root, process): a stand-in for another process's Spark JVM holding a fresh data root's
    embedded metastore (a POSIX lock on ``metastore_db/dbex.lck``, like Derby's); no JVM needed."""
    import subprocess
    import sys

    root = tmp_path / "data"
    (root / "metastore_db").mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, "-c", _LOCK_HOLDER, str(root / "metastore_db" / "dbex.lck")],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield root, proc
    finally:
        proc.kill()
        proc.wait()
