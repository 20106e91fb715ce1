"""JDBC logins survive garbage collection (issue 25: a beeline reader of a served catalogue got
"Could not open client transport … Socket is closed by peer (08S01)" while jobs published).

libthrift 0.16's SASL transport factory keeps the transport of a login only in a WeakReference
between creating it and handing it to the worker; a collection in between loses it and the
connection is closed without a reply. The driver of ``catalogfs serve`` runs jobs, so collections
are frequent. ``HeldSaslTransportFactory`` (catalogfs/java) holds it. tests/java/SaslLogins.java
logs in many times through Hive's PLAIN transport on a real ``TThreadPoolServer`` while two threads
allocate without pause (a 1 MB young generation, interpreted code: many collections, wide windows).
With libthrift's factory, 7–8 of 800 connections never reached the server's processor here; with
the held one, every login does.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from catalogfs.jdbc_guard import guard_jar

pytestmark = pytest.mark.spark  # a JVM (no Spark session)

HARNESS = Path(__file__).parent / "java" / "SaslLogins.java"
LOGINS = 300


@pytest.fixture(scope="module")
def classpath(tmp_path_factory, cfg) -> str:
    import pyspark

    jars = Path(pyspark.__file__).parent / "jars"
    classes = tmp_path_factory.mktemp("sasl-harness")
    path = f"{jars}/*:{guard_jar(cfg.spark.ivy_cache)}"
    subprocess.run(["javac", "-nowarn", "-cp", path, "-d", str(classes), str(HARNESS)], check=True,
                   capture_output=True, text=True, timeout=300)
    return f"{classes}:{path}"


def _logins(classpath: str, factory: str) -> tuple[int, int, int]:
    done = subprocess.run(["java", "-Xint", "-Xmn1m", "-XX:+UseSerialGC", "-cp", classpath, "SaslLogins",
                           str(LOGINS), factory], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    found = re.search(r"^logins (\d+), handshakes failed (\d+), reached (\d+)$", done.stdout, re.M)
    assert found, done.stdout[-2000:]
    logins, failed, reached = map(int, found.groups())
    return logins, failed, reached


def test_every_login_reaches_the_server_while_it_collects_garbage(classpath):
    logins, failed, reached = _logins(classpath, "held")
    assert (logins, failed, reached) == (LOGINS, 0, LOGINS)
