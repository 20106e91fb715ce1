"""`catalogfs serve`: one driver serves the data root's catalogue over Spark Connect and JDBC.

One real server for the module (a start costs 15–25 s here), run as `catalogfs serve` in the
foreground in its own session, on free loopback ports and a data root under tmp_path. It is stopped
with `--stop`, started again with `--detach` (one more start: the first read of a restarted server
comes over JDBC) and stopped again; whatever happens, the fixtures' finalisers kill what is left
(SIGTERM, then SIGKILL to the process group). Clients are separate processes: a Spark Connect client
in Python, beeline from pyspark's jars. The tests at the end need no server (stand-in lock holders,
no JVM).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import re
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest

from catalogfs.catalog_lock import find_server, metastore_holder
from catalogfs.config import DEFAULT_CONF_DIR, load_config
from catalogfs.redaction import redact
from catalogfs.server_auth import default_reader
from catalogfs.server_record import ServerRecord, descends_from, pid_alive, read_record, record_path, write_record
from tests.helpers import beeline_argv, beeline_csv_lines as _csv_lines, beeline_script as _beeline_script
from tests.helpers import free_ports as _free_ports
from tests.helpers import server_env as _env, stop_process_group as _stop_for_good, wait_until_served as _wait_until_ready

pytestmark = [pytest.mark.spark, pytest.mark.slow]

CATALOGFS = str(Path(sys.executable).parent / "catalogfs")
ROWS = [(1, "one"), (2, "two"), (3, "three")]

CLIENT = """
import json, sys
from pyspark.sql import SparkSession

url = sys.argv[1]
refused = False
wrong = SparkSession.builder.remote(url.rsplit("=", 1)[0] + "=not-the-token").create()
try:
    wrong.sql("SELECT 1").collect()
except Exception as exc:
    refused = "UNAUTHENTICATED" in str(exc) or "authentication" in str(exc).lower()
finally:
    try:
        wrong.stop()
    except Exception:
        pass
spark = SparkSession.builder.remote(url).create()
spark.sql("CREATE DATABASE IF NOT EXISTS served")
spark.sql("CREATE TABLE served.items (k INT, v STRING) USING delta")
spark.sql("INSERT INTO served.items VALUES (1, 'one'), (2, 'two'), (3, 'three')")
rows = [[r.k, r.v] for r in spark.table("served.items").orderBy("k").collect()]
provider = spark.sql("DESCRIBE DETAIL served.items").collect()[0]["format"]
print(json.dumps({"rows": rows, "format": provider, "wrong_token_refused": refused}))
"""


def _catalogfs(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([CATALOGFS, *args], capture_output=True, text=True, timeout=timeout, env=_env())


class Server:
    def __init__(self, root: Path, overrides: list[str], proc: subprocess.Popen, output: Path) -> None:
        self.root, self.overrides, self.proc, self.output = root, overrides, proc, output

    @property
    def storage(self):
        return load_config([DEFAULT_CONF_DIR / "local.yaml"], self.overrides[1::2]).storage

    def record(self) -> ServerRecord:
        record = read_record(self.root)
        assert record is not None
        return record


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("serve")
    root = base / "data"
    connect_port, jdbc_port = _free_ports(2)
    overrides = [f"storage.data_root={root}", "spark.master=local[2]", "spark.settings.spark.driver.memory=1g",
                 f"server.connect_port={connect_port}", f"server.jdbc_port={jdbc_port}"]
    output = base / "serve.out"
    with open(output, "wb") as out:
        proc = subprocess.Popen([CATALOGFS, "serve", *(a for o in overrides for a in ("--set", o))],
                                stdout=out, stderr=subprocess.STDOUT, env=_env(), start_new_session=True)
    try:
        _wait_until_ready(root, proc, output, timeout=240)
        yield Server(root, [a for o in overrides for a in ("--set", o)], proc, output)
    finally:
        _stop_for_good(proc)


def _beeline(server: "Server", query: str) -> subprocess.CompletedProcess:
    """beeline (tests/helpers.py), logged in as the reader the server made at its first start."""
    user, password = default_reader(server.root)
    return subprocess.run(beeline_argv("-u", server.record().jdbc_url, "-n", user, "-p", password,
                                       "--silent=true", "--outputformat=csv2", "-e", query),
                          capture_output=True, text=True, timeout=180, env=_env())


def _refusals(done: subprocess.CompletedProcess) -> list[str]:
    """What the guard said, one entry per refused statement, in order."""
    return [re.search(r"catalogfs: (the JDBC endpoint|session setting) (.*)", line)[2].split(" (write through")[0]
            .split(" for consumers")[0]
            for line in done.stderr.splitlines() if line.startswith("Error:") and "catalogfs: " in line]


# --- one server, its clients, and its stop (in this order) --------------------------------------

def test_the_server_is_ready_and_writes_its_record_0600(server):
    record = server.record()
    path = record_path(server.root)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert record.pid == server.proc.pid and pid_alive(record.jvm_pid)
    assert descends_from(record.jvm_pid, record.pid)  # the JVM is the server's child …
    assert metastore_holder(server.root / "metastore_db") == record.jvm_pid  # … and holds the catalogue
    assert re.fullmatch(r"[0-9a-f]{48}", record.token)
    assert record.connect_url == f"sc://localhost:{_setting(server, 'server.connect_port')}/;token={record.token}"
    assert record.jdbc_url == f"jdbc:hive2://127.0.0.1:{_setting(server, 'server.jdbc_port')}/default"
    assert record.data_root == str(server.root) and Path(record.log_file).is_file()
    assert find_server(server.storage) == record
    line = server.output.read_text()
    assert "Spark Connect sc://localhost:" in line and ";token=***" in line and record.jdbc_url in line
    assert record.token not in line  # the token is only in the 0600 record
    assert record.token not in Path(f"/proc/{record.jvm_pid}/cmdline").read_text()  # not in `ps` either


def _setting(server: Server, key: str) -> str:
    return next(o.split("=", 1)[1] for o in server.overrides if o.startswith(f"{key}="))


def test_a_connect_client_creates_a_delta_table_and_reads_it_back(server):
    done = subprocess.run([sys.executable, "-c", CLIENT, server.record().connect_url], capture_output=True,
                          text=True, timeout=300, env=_env())
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["wrong_token_refused"] is True
    assert [tuple(r) for r in result["rows"]] == ROWS
    assert result["format"] == "delta"
    assert (server.root / "warehouse" / "served.db" / "items" / "_delta_log").is_dir()


def test_beeline_reads_the_same_rows_over_jdbc(server):
    done = _beeline(server, "SELECT k, v FROM served.items ORDER BY k")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in _csv_lines(done) if re.fullmatch(r"k,v|\d+,\w+", line)]
    assert lines[0] == "k,v"
    assert [(int(k), v) for k, v in (line.split(",") for line in lines[1:])] == ROWS


def test_the_jdbc_endpoint_is_read_only(server, tmp_path):
    done = _beeline_script(server.record().jdbc_url, tmp_path, login=default_reader(server.root), statements=[
        "DROP TABLE served.items", "INSERT INTO served.items VALUES (9, 'nine')",
        "CREATE TABLE served.other (k INT) USING delta", "CACHE TABLE served.items",
        "SELECT count(*) AS n FROM served.items", "SHOW TABLES IN served", "SET spark.sql.shuffle.partitions=3"])
    refused_plans = ["DropTable", "AppendData", "CreateTable", "CacheTable"]
    assert _refusals(done) == [f"is read-only; refused {plan}" for plan in refused_plans], done.stderr[-3000:]
    lines = _csv_lines(done)
    assert lines[lines.index("n") + 1] == "3"  # the table is still there, unchanged
    assert "served,items,false" in lines and not any("other" in line for line in lines)  # SHOW TABLES passes
    assert "spark.sql.shuffle.partitions,3" in lines  # so does SET (the JDBC session's own state)
    assert (server.root / "warehouse" / "served.db" / "items" / "_delta_log").is_dir()
    assert not (server.root / "warehouse" / "served.db" / "other").exists()


def test_the_jdbc_endpoint_refuses_what_reaches_beyond_the_catalogue(server, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not-for-jdbc-clients\n")
    items = server.root / "warehouse" / "served.db" / "items"
    done = _beeline_script(server.record().jdbc_url, tmp_path, login=default_reader(server.root), statements=[
        "SELECT TRANSFORM(1) USING 'id' AS (x STRING)",
        "SELECT reflect('java.lang.System', 'getProperty', 'user.name') AS u",
        "SELECT k FROM served.items WHERE EXISTS (SELECT try_reflect('java.lang.Integer', 'valueOf', '1'))",
        f"SELECT * FROM text.`{secret}`",
        f"SELECT * FROM delta.`{items}`",
        "SET spark.sql.catalog.mine=org.apache.spark.sql.execution.datasources.v2.jdbc.JDBCTableCatalog",
        "SELECT 41 + 1 AS answer"])
    assert _refusals(done) == ["refuses TRANSFORM … USING (an external process)",
                               "refuses reflect / java_method / try_reflect",
                               "refuses reflect / java_method / try_reflect",
                               "refuses files read by path (only tables of the catalogue)",
                               "refuses files read by path (only tables of the catalogue)",
                               "spark.sql.catalog.mine is not allowed"], done.stderr[-3000:]
    lines = _csv_lines(done)
    assert lines[lines.index("answer") + 1] == "42"  # the connection stays usable
    assert "not-for-jdbc-clients" not in done.stdout and "uid=" not in done.stdout


def test_status_prints_the_endpoints(server):
    record = server.record()
    done = _catalogfs("serve", "--status", *server.overrides)
    assert done.returncode == 0, done.stderr
    assert f"pid {record.pid}" in done.stdout and record.jdbc_url in done.stdout
    assert record.redacted_connect_url() in done.stdout and record.token not in done.stdout
    shown = _catalogfs("serve", "--status", "--show-token", *server.overrides)
    assert shown.returncode == 0 and record.connect_url in shown.stdout


def test_commands_use_the_server_and_catalogfs_sql_stays_read_only_over_connect(server):
    record = server.record()
    done = _catalogfs("sql", *server.overrides, "--json", "SELECT k, v FROM served.items ORDER BY k")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [{"k": k, "v": v} for k, v in ROWS]
    assert f"using the catalogue server of {server.root} (pid {record.pid})" in done.stderr
    assert record.token not in done.stderr + done.stdout
    for statement, node in (("DROP TABLE served.items", "DropTable"),
                            ("WITH x AS (SELECT 9 k, 'nine' v) INSERT INTO served.items SELECT * FROM x", "AppendData"),
                            ("SET spark.catalogfs.session.readOnly=false", "SetCommand")):
        refused = _catalogfs("sql", *server.overrides, statement)
        assert refused.returncode == 2, refused.stderr
        assert f"would change the catalogue ({node}); nothing was run" in refused.stderr
    after = _catalogfs("sql", *server.overrides, "--json", "SELECT k, v FROM served.items ORDER BY k")
    assert json.loads(after.stdout) == [{"k": k, "v": v} for k, v in ROWS]  # unchanged


def test_a_second_command_on_its_own_driver_stops_at_once_naming_the_server(server):
    record = server.record()
    started = time.monotonic()
    done = _catalogfs("sql", *server.overrides, "--set", "server.use=never", "SELECT 1")
    assert done.returncode == 7, done.stderr
    assert time.monotonic() - started < 30
    message = done.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert "served by catalogfs serve" in message and f"pid {record.pid}" in message
    assert record.redacted_connect_url() in message and record.jdbc_url in message
    assert record.token not in message
    assert done.stdout == ""


def test_a_second_server_is_refused_at_once(server):
    other = _free_ports(2)
    done = _catalogfs("serve", *server.overrides, "--set", f"server.connect_port={other[0]}",
                      "--set", f"server.jdbc_port={other[1]}", timeout=60)
    assert done.returncode == 7, done.stderr
    assert "served by catalogfs serve" in done.stderr and f"pid {server.record().pid}" in done.stderr
    assert find_server(server.storage) == server.record()  # the running one is untouched


def test_stop_stops_the_server_and_leaves_nothing(server):
    record = server.record()
    done = _catalogfs("serve", "--stop", *server.overrides)
    assert done.returncode == 0, done.stderr
    assert f"stopped (pid {record.pid})" in done.stdout
    assert server.proc.wait(timeout=30) == 0  # a clean stop
    assert not record_path(server.root).exists()
    assert not pid_alive(record.pid) and not pid_alive(record.jvm_pid)
    assert metastore_holder(server.root / "metastore_db") is None
    for port in (_setting(server, "server.connect_port"), _setting(server, "server.jdbc_port")):
        with socket.socket() as probe:  # both ports are free again
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", int(port)))
    status = _catalogfs("serve", "--status", *server.overrides)
    assert status.returncode == 3 and "not running" in status.stdout
    again = _catalogfs("serve", "--stop", *server.overrides)
    assert again.returncode == 0 and "not running" in again.stdout


@pytest.fixture
def detached(server):
    """Whatever a --detach start left running is killed at the end: its supervisor's process group
    (it leads its session; the server is in it), and the server itself."""
    yield
    from catalogfs.supervisor_state import read_state

    supervisor, record = read_state(server.root), read_record(server.root)
    for pid, kill in ((supervisor and supervisor.pid, os.killpg), (record and record.pid, os.kill)):
        if pid and pid_alive(pid):
            try:
                kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_detach_restarts_it_and_jdbc_reads_first_after_a_restart(server, detached, tmp_path):
    """After the stop above: --detach returns once ready; the first statement of the new server comes
    over JDBC, so Delta reads the table's log on a HiveServer2 thread (the guard must let it)."""
    started = time.monotonic()
    done = _catalogfs("serve", "--detach", *server.overrides, timeout=300)
    assert done.returncode == 0, done.stderr + done.stdout
    record = server.record()
    assert f"started in the background (pid {record.pid})" in done.stdout and record.token not in done.stdout
    assert find_server(server.storage) == record and record.pid != server.proc.pid
    assert (server.root / "logs" / "serve.log").read_text().count("serving ") == 1
    read = _beeline_script(record.jdbc_url, tmp_path, ["SELECT count(*) AS n, sum(k) AS total FROM served.items"],
                           login=default_reader(server.root))
    assert read.returncode == 0 and _refusals(read) == [], read.stderr[-3000:]
    lines = _csv_lines(read)
    assert lines[lines.index("n,total") + 1] == "3,6"
    stopped = _catalogfs("serve", "--stop", *server.overrides)
    assert stopped.returncode == 0, stopped.stderr
    assert not pid_alive(record.pid) and not pid_alive(record.jvm_pid) and read_record(server.root) is None
    assert time.monotonic() - started < 150


# --- no server needed (stand-in processes, no JVM) -----------------------------------------------

def _record(root: Path, pid: int) -> ServerRecord:
    return ServerRecord(pid=pid, jvm_pid=pid, connect_url="sc://localhost:1/;token=abcdef", jdbc_url="jdbc:hive2://x",
                        token="abcdef", started_at="2026-01-01T00:00:00+00:00", data_root=str(root), log_file="")


def _storage(root: Path):
    return load_config([DEFAULT_CONF_DIR / "local.yaml"], [f"storage.data_root={root}"]).storage


def test_find_server_needs_a_live_record_whose_process_holds_the_catalogue(held, tmp_path):
    root, holder = held
    storage = _storage(root)
    assert find_server(storage) is None  # no record
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        write_record(root, _record(root, bystander.pid))  # alive, but neither the holder nor its parent
        assert find_server(storage) is None
    finally:
        bystander.kill()
        bystander.wait()
    write_record(root, _record(root, holder.pid))
    assert find_server(storage) == _record(root, holder.pid)
    holder.kill()
    holder.wait()
    assert find_server(storage) is None  # the lock went with the process; the record is stale


def test_status_removes_a_stale_record(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_record(root, _record(root, dead.pid))
    done = _catalogfs("serve", "--status", "--set", f"storage.data_root={root}")
    assert done.returncode == 3 and "not running" in done.stdout and "stale record" in done.stdout
    assert not record_path(root).exists()
    stopped = _catalogfs("serve", "--stop", "--set", f"storage.data_root={root}")
    assert stopped.returncode == 0 and "not running" in stopped.stdout


def test_detach_on_a_busy_catalogue_exits_7_naming_the_holder(held):
    root, holder = held
    done = _catalogfs("serve", "--detach", "--set", f"storage.data_root={root}", timeout=60)
    assert done.returncode == 7, done.stderr
    assert f"pid {holder.pid}" in done.stderr and "in use" in done.stderr
    assert not (root / "logs").exists()  # refused before anything started


def test_server_use_always_without_a_server_exits_6(tmp_path):
    done = _catalogfs("sql", "--set", f"storage.data_root={tmp_path / 'data'}", "--set", "server.use=always",
                      "SELECT 1", timeout=60)
    assert done.returncode == 6, done.stderr
    assert "no catalogfs serve is running" in done.stderr and "catalogfs serve --detach" in done.stderr


def test_a_port_in_use_is_a_config_error_before_any_jvm(tmp_path):
    root = tmp_path / "data"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _catalogfs("serve", "--set", f"storage.data_root={root}", "--set", f"server.connect_port={port}",
                          "--set", f"server.jdbc_port={_free_ports(1)[0]}", timeout=60)
    assert done.returncode == 2, done.stderr
    assert f"server.connect_port: port {port} on 127.0.0.1 is in use" in done.stderr
    assert not (root / "logs").exists()  # no JVM was started
    assert not record_path(root).exists()


def test_the_token_is_a_secret_in_config():
    cfg = load_config([DEFAULT_CONF_DIR / "local.yaml"], ["server.token=abcd1234efgh"])
    assert redact(cfg.model_dump(mode="json"))["server"]["token"] == "***"
    assert cfg.server.bind_host == "127.0.0.1" and cfg.server.token == "abcd1234efgh"
    with pytest.raises(Exception, match="server.token"):
        load_config([DEFAULT_CONF_DIR / "local.yaml"], ["server.token=has space"])


def test_server_settings_add_to_the_jobs_settings():
    from catalogfs.server_session import CONNECT_PLUGIN, server_settings

    cfg = load_config([DEFAULT_CONF_DIR / "local.yaml"], [
        "server.jdbc_read_only=false", "server.connect_port=15100", "server.jdbc_port=15101",
        "spark.settings.spark.plugins=my.Plugin", "spark.settings.spark.driver.extraClassPath=/opt/mine.jar"])
    settings = server_settings(cfg)
    assert settings["spark.plugins"] == f"my.Plugin,{CONNECT_PLUGIN}"
    assert settings["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension,catalogfs.JdbcGuardExtension"
    assert settings["spark.catalogfs.jdbc.readOnly"] == "false"
    classpath = settings["spark.driver.extraClassPath"].split(":")
    names = [Path(p).name for p in classpath]
    assert classpath[0] == "/opt/mine.jar" and len(classpath) == 4  # the config's own, Delta's two, the guard
    assert names[1].startswith("io.delta_delta-spark_") and names[2].startswith("io.delta_delta-storage-")
    assert names[3] == "catalogfs-jdbc-guard.jar" and Path(classpath[3]).is_file()
    assert settings["spark.connect.grpc.binding.port"] == "15100"
    assert settings["spark.hadoop.hive.server2.thrift.port"] == "15101"
    assert settings["spark.catalogfs.connect.tokenHashFile"].endswith(".serve/connect-token.sha256")  # its hash only
    assert settings["spark.sql.variable.substitute"] == "false" and settings["spark.scheduler.mode"] == "FAIR"
    assert settings["spark.hadoop.hive.server2.authentication"] == "CUSTOM"


def test_the_guard_is_compiled_once_per_source(tmp_path):
    import zipfile

    from catalogfs.errors import ConfigError
    import shutil

    from catalogfs.jdbc_guard import GUARD_SOURCES, guard_jar

    sources = tmp_path / "src"
    shutil.copytree(GUARD_SOURCES, sources)
    jar = guard_jar(tmp_path / "ivy", sources)
    names = zipfile.ZipFile(jar).namelist()
    assert "catalogfs/JdbcGuardExtension.class" in names and "catalogfs/GuardedThriftServer.class" in names
    built = jar.stat().st_mtime_ns
    assert guard_jar(tmp_path / "ivy", sources) == jar and jar.stat().st_mtime_ns == built  # found, not rebuilt
    source = sources / "JdbcGuardExtension.java"
    source.write_text(source.read_text().replace("return BoxedUnit.UNIT;", "return null", 1))
    with pytest.raises(ConfigError, match="did not compile"):
        guard_jar(tmp_path / "ivy", sources)
    assert [p.name for p in (tmp_path / "ivy" / "local-jars").iterdir() if not p.name.startswith(".")] == [
        jar.parent.name]  # the failed build left nothing behind
