"""A real Spark standalone cluster on loopback: a master and one worker started from the pip
package's scripts, the jobs submitted with a bare `spark-submit` from the installed wheel (its job
files and its packaged `local` profile, in a virtualenv outside the checkout: tests/wheel_env.py),
the published rows checked with an independent reader, both daemons stopped."""

import os
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

import pyspark
from catalogfs.jobs.samples import SAMPLE_PHOTOS, make_sample_videos

SPARK_HOME = Path(pyspark.__file__).parent
MASTER = "org.apache.spark.deploy.master.Master"
WORKER = "org.apache.spark.deploy.worker.Worker"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, wheel_venv):
    state = tmp_path_factory.mktemp("standalone")
    env = wheel_venv.env(SPARK_HOME=str(SPARK_HOME), SPARK_CONF_DIR=str(state / "spark-conf"),
                         SPARK_PID_DIR=str(state / "pids"), SPARK_LOG_DIR=str(state / "logs"),
                         SPARK_IDENT_STRING=f"catalogfs-test-{os.getpid()}", SPARK_WORKER_DIR=str(state / "work"))
    # The installed product's set-up: spark-defaults.conf with the Delta jars and the venv's Python
    set_up = subprocess.run([str(wheel_venv.python), "-m", "catalogfs.spark"], cwd=state, env=env,
                            capture_output=True, text=True, timeout=300)
    assert set_up.returncode == 0, set_up.stderr
    defaults = (state / "spark-conf" / "spark-defaults.conf").read_text()
    assert f"spark.pyspark.python {wheel_venv.python}\n" in defaults and "delta-spark" in defaults
    port = _free_port()
    url = f"spark://127.0.0.1:{port}"
    daemon = str(SPARK_HOME / "sbin" / "spark-daemon.sh")
    subprocess.run([daemon, "start", MASTER, "1", "--host", "127.0.0.1", "--port", str(port),
                    "--webui-port", str(_free_port())], env=env, check=True, capture_output=True)
    subprocess.run([daemon, "start", WORKER, "1", "--host", "127.0.0.1", "--cores", "1", "--memory", "3g",
                    "--webui-port", str(_free_port()), url], env=env, check=True, capture_output=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:  # the worker says so in its log once registered
            logs = "".join(p.read_text() for p in (state / "logs").glob("*Worker*.out"))
            if "Successfully registered with master" in logs:
                break
            time.sleep(1)
        else:
            pytest.fail(f"worker did not register with {url}:\n{logs[-2000:]}")
        yield url, env, state, wheel_venv
    finally:
        subprocess.run([daemon, "stop", WORKER, "1"], env=env, capture_output=True)
        subprocess.run([daemon, "stop", MASTER, "1"], env=env, capture_output=True)


def _submit(cluster, job, data_root, *extra):
    """spark-submit of the job file installed from the wheel, with the packaged `local` profile,
    from a folder outside the checkout."""
    url, env, state, venv = cluster
    job_file = venv.site_packages / "catalogfs" / "jobs" / f"{job}.py"
    assert job_file.is_file()
    cmd = [str(SPARK_HOME / "bin" / "spark-submit"), "--master", url, "--conf", "spark.driver.host=127.0.0.1",
           "--conf", "spark.cores.max=1", "--conf", "spark.executor.memory=2g",
           str(job_file), "--conf", "local",
           "--set", f"storage.data_root={data_root}", "--set", "inference.batch_size=8", *extra]
    done = subprocess.run(cmd, cwd=state, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


def test_embed_job_on_a_standalone_cluster(cluster):
    from deltalake import DeltaTable

    state = cluster[2]
    data_root = state / "data"
    videos = state / "videos"
    make_sample_videos(videos, seconds=2.0, fps=8, width=224, height=128,
                       photos=tuple(p for p in SAMPLE_PHOTOS if p.video_id == "coffee_cup"))
    out = _submit(cluster, "extract_frames", data_root, "--input", str(videos))
    assert "1 videos → 2 ok frames" in out
    out = _submit(cluster, "embed_frames", data_root)
    assert "2 frames embedded" in out and "published" in out

    table = data_root / "warehouse" / "catalog_features.db"
    fe = DeltaTable(str(table / "frame_embeddings")).to_pandas().sort_values("frame_ts_ms")
    assert list(fe.frame_ts_ms) == [0, 1000] and set(fe.status) == {"ok"}
    for vec in fe.embedding:
        assert abs(np.linalg.norm(np.asarray(vec, dtype=np.float64)) - 1) < 1e-4
    labels = DeltaTable(str(table / "video_labels")).to_pandas()
    assert labels[labels["rank"] == 1].label.tolist() == ["espresso"]
    # Both applications ran executors on the cluster's worker.
    assert len(list((state / "work").glob("app-*/*/stderr"))) == 2
