"""A served catalogue probed as an attacker on the same host would (issue 23's attacks, replayed).

One real server for the module, configured as docs/security.md says a networked one must be (JDBC logins
and TLS with a self-signed pair made here), started with ``catalogfs serve --detach`` (supervised)
on free loopback ports, with a reader and an operator in its users file. A Spark Connect client (the
operator's token) creates ``served.items``; every attack then runs as a separate client process —
beeline from pyspark's jars, or ``catalogfs sql`` — and each test ends by checking that the table's
rows and Delta version are what they were and that the server still answers. The attack that stops
the driver (an OOM query) runs last: the supervisor must bring the server back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import re
import signal
import subprocess
import sys
import time

import pytest

from catalogfs.server_record import pid_alive, read_record
from tests.helpers import beeline_argv, beeline_csv_lines, free_ports, server_env

pytestmark = [pytest.mark.spark, pytest.mark.slow]

CATALOGFS = str(Path(sys.executable).parent / "catalogfs")
ROWS = [(1, "one"), (2, "two"), (3, "three")]
READER, READER_PASSWORD = "analyst", "reader-Pa55word"
OPERATOR, OPERATOR_PASSWORD = "ops", "operator-Pa55word"
QUERY_TIMEOUT = 20  # server.query_timeout_seconds for this server

CREATE = """
import json, sys
from pyspark.sql import SparkSession
spark = SparkSession.builder.remote(sys.argv[1]).create()
spark.sql("CREATE DATABASE IF NOT EXISTS served")
spark.sql("CREATE TABLE served.items (k INT, v STRING) USING delta")
spark.sql("INSERT INTO served.items VALUES (1, 'one'), (2, 'two'), (3, 'three')")
print(json.dumps([[r.k, r.v] for r in spark.table("served.items").orderBy("k").collect()]))
"""


def _run(args: list[str], *, timeout: float = 180, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env or server_env())


def _catalogfs(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return _run([CATALOGFS, *args], timeout=timeout)


def _beeline_args(url: str, user: str | None, password: str | None) -> list[str]:
    args = beeline_argv("-u", url, "--silent=true", "--outputformat=csv2", "--force=true")
    if user is not None:
        args += ["-n", user, "-p", password or ""]
    return args


def _beeline(url: str, statements: list[str], folder: Path, *, user: str | None = READER,
             password: str | None = READER_PASSWORD, timeout: float = 180) -> subprocess.CompletedProcess:
    script = folder / f"statements-{time.monotonic_ns()}.sql"
    script.write_text("".join(f"{statement};\n" for statement in statements))
    return _run([*_beeline_args(url, user, password), "-f", str(script)], timeout=timeout)


def _value_after(done: subprocess.CompletedProcess, header: str) -> str | None:
    lines = beeline_csv_lines(done)
    return lines[lines.index(header) + 1] if header in lines else None


class Served:
    def __init__(self, root: Path, overrides: list[str], trust: str) -> None:
        self.root, self.overrides, self.trust = root, overrides, trust

    @property
    def record(self):
        record = read_record(self.root)
        assert record is not None, "the server is not running"
        return record

    @property
    def jdbc(self) -> str:
        """The record's URL (it says ssl=true) with the client's trust store."""
        return self.record.jdbc_url + self.trust

    def state(self, folder: Path) -> tuple[list[tuple[int, str]], str | None]:
        """The table's rows and Delta version, read over JDBC as the reader (the server answers)."""
        done = _beeline(self.jdbc, ["SELECT k, v FROM served.items ORDER BY k", "DESCRIBE HISTORY served.items"],
                        folder)
        lines = beeline_csv_lines(done)
        rows = [(int(k), v) for k, v in (line.split(",") for line in lines if re.fullmatch(r"\d+,\w+", line))]
        history = next((i for i, line in enumerate(lines) if line.startswith("version,")), None)
        return rows, None if history is None else lines[history + 1].split(",")[0]


def _add_users(root: Path, overrides: list[str]) -> None:
    for user, role, password in ((READER, "reader", READER_PASSWORD), (OPERATOR, "operator", OPERATOR_PASSWORD)):
        done = subprocess.run([CATALOGFS, "serve-users", "add", user, "--role", role, "--password-stdin",
                               *overrides], input=password + "\n", capture_output=True, text=True, timeout=60,
                              env=server_env())
        if done.returncode != 0:  # before the users file existed: the server asked for no credentials
            print(f"serve-users add {user}: exit {done.returncode}: {done.stderr.strip()[:300]}")


def _self_signed(folder: Path) -> tuple[Path, Path, str]:
    """A certificate for 127.0.0.1/localhost, its key, and a PKCS#12 trust store of it (keytool)."""
    from datetime import datetime, timedelta, timezone
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file, trust = folder / "server.pem", folder / "server.key", folder / "trust.p12"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.touch(mode=0o600)
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    subprocess.run(["keytool", "-importcert", "-noprompt", "-alias", "catalogfs", "-file", str(cert_file),
                    "-keystore", str(trust), "-storetype", "PKCS12", "-storepass", "trust-pw"],
                   check=True, capture_output=True, timeout=60)
    return cert_file, key_file, f";sslTrustStore={trust};trustStorePassword=trust-pw"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("security")
    root = base / "data"
    cert_file, key_file, trust = _self_signed(base)
    connect_port, jdbc_port = free_ports(2)
    settings = [f"storage.data_root={root}", "spark.master=local[2]", "spark.settings.spark.driver.memory=1g",
                f"server.connect_port={connect_port}", f"server.jdbc_port={jdbc_port}",
                f"server.tls.cert_file={cert_file}", f"server.tls.key_file={key_file}",
                f"server.query_timeout_seconds={QUERY_TIMEOUT}", "server.restart_max_backoff_seconds=2"]
    overrides = [a for s in settings for a in ("--set", s)]
    _add_users(root, overrides)
    started = _catalogfs("serve", "--detach", *overrides, timeout=400)
    try:
        assert started.returncode == 0, started.stderr + started.stdout
        server = Served(root, overrides, trust)
        created = _run([sys.executable, "-c", CREATE, server.record.connect_url], timeout=300)
        assert created.returncode == 0, created.stderr[-3000:]
        assert [tuple(r) for r in json.loads(created.stdout.strip().splitlines()[-1])] == ROWS
        yield server
    finally:
        stopped = _catalogfs("serve", "--stop", *overrides, timeout=120)
        _kill_leftovers(root)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr


def _kill_leftovers(root: Path) -> None:
    """What `serve --stop` did not stop: the supervisor first (else it restarts what is killed next)."""
    from catalogfs.supervisor_state import read_state

    supervisor, record = read_state(root), read_record(root)
    pids = ([supervisor.pid] if supervisor else []) + ([record.pid, record.jvm_pid] if record else [])
    for pid in pids:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def baseline(served, tmp_path_factory):
    state = served.state(tmp_path_factory.mktemp("baseline"))
    assert state[0] == ROWS and state[1] is not None, state
    return state


def _unchanged(served: Served, baseline, folder: Path) -> None:
    assert served.state(folder) == baseline  # same rows, same version, and the server answered


# --- 1. settings from the JDBC URL --------------------------------------------------------------

def test_url_settings_cannot_define_a_catalog_or_run_derby_sql(served, baseline, tmp_path):
    exported = tmp_path / "exported.txt"
    metastore = served.root / "metastore_db"
    # Derby's comments stand for spaces, which a JDBC URL cannot hold
    init = f"CALL/**/SYSCS_UTIL.SYSCS_EXPORT_QUERY('SELECT/**/1/**/FROM/**/SYSIBM.SYSDUMMY1','{exported}',NULL,NULL,NULL)"
    url = (f"{served.jdbc}?spark.sql.catalog.x=org.apache.spark.sql.execution.datasources.v2.jdbc.JDBCTableCatalog;"
           f"spark.sql.catalog.x.url=jdbc:derby:{metastore};spark.sql.catalog.x.sessionInitStatement={init}")
    done = _beeline(url, ["SELECT count(*) AS tables FROM x.APP.TBLS"], tmp_path)
    assert _value_after(done, "tables") is None, done.stdout
    assert re.search(r"catalogfs: session setting spark\.sql\.catalog\.x\S* is not allowed", done.stderr), done.stderr
    assert not exported.exists()
    _unchanged(served, baseline, tmp_path)


@pytest.mark.parametrize("suffix", [
    "?spark.sql.variable.substitute=true",
    "?spark.sql.extensions=org.example.Evil",
    "?spark.sql.runSQLOnFiles=true",
    "?spark.sql.shuffle.partitions=4;spark.sql.catalog.z=x",
    "#home=somewhere",  # a Hive variable (beeline's own URL parser refuses a value with ${…})
])
def test_url_settings_outside_the_allow_list_are_refused(served, suffix, tmp_path):
    done = _beeline(served.jdbc + suffix, ["SELECT 42 AS answer"], tmp_path)
    assert _value_after(done, "answer") is None, done.stdout
    assert "catalogfs: session setting" in done.stdout + done.stderr, done.stderr


def test_allowed_url_settings_apply(served, tmp_path):
    done = _beeline(served.jdbc + "?spark.sql.session.timeZone=UTC;spark.sql.ansi.enabled=true",
                    ["SET spark.sql.session.timeZone"], tmp_path)
    assert "spark.sql.session.timeZone,UTC" in beeline_csv_lines(done), done.stderr[-2000:]


def test_set_outside_the_allow_list_is_refused(served, baseline, tmp_path):
    done = _beeline(served.jdbc, [
        "SET spark.sql.catalog.y=org.apache.spark.sql.execution.datasources.v2.jdbc.JDBCTableCatalog",
        "SET spark.sql.variable.substitute=true", "SET spark.sql.runSQLOnFiles=true",
        "SET spark.sql.shuffle.partitions=3", "RESET spark.sql.variable.substitute", "RESET",
        "SELECT '${env:HOME}' AS home"], tmp_path)
    refused = [re.search(r"catalogfs: session setting (\S+) is not allowed", line)[1]
               for line in done.stderr.splitlines() if line.startswith("Error:") and "session setting" in line]
    assert refused == ["spark.sql.catalog.y", "spark.sql.variable.substitute", "spark.sql.runSQLOnFiles"], done.stderr
    assert "spark.sql.shuffle.partitions,3" in beeline_csv_lines(done)
    assert _value_after(done, "home") == "${env:HOME}"  # RESET goes back to the server's setting: off
    _unchanged(served, baseline, tmp_path)


# --- 2. variables and the Connect token ---------------------------------------------------------

def test_sql_cannot_read_the_environment_system_properties_or_the_token(served, tmp_path):
    token = served.record.token
    done = _beeline(served.jdbc, ["SELECT '${env:SPARK_CONNECT_AUTHENTICATE_TOKEN}' AS t, "
                                  "'${system:user.name}' AS u, '${env:HOME}' AS h",
                                  "SET spark.connect.authenticate.token"], tmp_path)
    assert token not in done.stdout + done.stderr
    assert _value_after(done, "t,u,h") == "${env:SPARK_CONNECT_AUTHENTICATE_TOKEN},${system:user.name},${env:HOME}"
    jvm = served.record.jvm_pid
    assert token.encode() not in Path(f"/proc/{jvm}/environ").read_bytes()
    assert token not in Path(f"/proc/{jvm}/cmdline").read_text()
    assert token not in Path(f"/proc/{served.record.pid}/environ").read_bytes().decode(errors="replace")


def test_the_connect_endpoint_refuses_a_missing_or_wrong_token(served):
    probe = ("import sys\nfrom pyspark.sql import SparkSession\n"
             "try:\n    SparkSession.builder.remote(sys.argv[1]).create().sql('SELECT 1').collect()\n"
             "    print('ANSWERED')\nexcept Exception as exc:\n    print('REFUSED', type(exc).__name__)\n")
    url = served.record.connect_url
    for wrong in (url.rsplit("=", 1)[0] + "=not-the-token", url.rsplit("/;", 1)[0]):
        done = _run([sys.executable, "-c", probe, wrong], timeout=120)
        assert "REFUSED" in done.stdout and "ANSWERED" not in done.stdout, done.stdout + done.stderr[-2000:]
    done = _run([sys.executable, "-c", probe, url], timeout=120)
    assert "ANSWERED" in done.stdout, done.stderr[-2000:]


# --- JDBC credentials, roles and TLS ------------------------------------------------------------

def test_jdbc_speaks_only_tls(served, tmp_path):
    assert served.record.jdbc_url.endswith(";ssl=true")
    plain = served.record.jdbc_url.removesuffix(";ssl=true")
    done = _beeline(plain, ["SELECT 42 AS answer"], tmp_path)
    assert _value_after(done, "answer") is None, done.stdout
    untrusted = _beeline(served.record.jdbc_url, ["SELECT 42 AS answer"], tmp_path)  # the JDK's trust store
    assert _value_after(untrusted, "answer") is None, untrusted.stdout
    assert _value_after(_beeline(served.jdbc, ["SELECT 42 AS answer"], tmp_path), "answer") == "42"


def test_the_keystore_password_is_not_on_a_command_line_or_in_sql(served, tmp_path):
    jvm = served.record.jvm_pid
    assert "keystore.password" not in Path(f"/proc/{jvm}/cmdline").read_text()
    done = _beeline(served.jdbc, ["SET spark.hadoop.hive.server2.keystore.password", "SET -v"], tmp_path)
    assert "names a secret" in done.stderr
    assert not any(line.startswith(("hive.server2.keystore.password", "spark.hadoop.hive.server2.keystore.password,"))
                   and "redacted" not in line.lower() and len(line.split(",")) > 1 and line.split(",")[1]
                   for line in beeline_csv_lines(done))


@pytest.mark.parametrize("user,password", [(None, None), ("anonymous", ""), (READER, "wrong"), ("nobody", "x")])
def test_jdbc_refuses_clients_without_valid_credentials(served, user, password, tmp_path):
    done = _beeline(served.jdbc, ["SELECT 42 AS answer"], tmp_path, user=user, password=password)
    assert _value_after(done, "answer") is None, done.stdout


def test_a_reader_reads_and_cannot_write(served, baseline, tmp_path):
    done = _beeline(served.jdbc, ["INSERT INTO served.items VALUES (9, 'nine')", "DROP TABLE served.items",
                                  "SELECT count(*) AS n FROM served.items"], tmp_path)
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 2 and all("the JDBC endpoint is read-only; refused" in e for e in errors), errors
    assert _value_after(done, "n") == "3"
    _unchanged(served, baseline, tmp_path)


# --- 5. what reaches beyond the catalogue, over JDBC and through `catalogfs sql` ---------------

def test_jdbc_path_reads_do_not_tell_whether_a_file_exists(served, tmp_path):
    done = _beeline(served.jdbc, ["SELECT * FROM text.`/etc/hostname`", "SELECT * FROM text.`/no/such/file`",
                                  "SELECT * FROM json.`relative/path`", "SELECT * FROM IDENTIFIER('delta.`/tmp`')"],
                    tmp_path)
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 4, done.stderr[-3000:]
    assert all("catalogfs: the JDBC endpoint refuses files read by path" in e for e in errors), errors
    assert not any("PATH_NOT_FOUND" in e or "does not exist" in e.lower() for e in errors)


BEYOND = [
    ("SELECT TRANSFORM(1) USING 'touch {marker}' AS (x STRING)", "TRANSFORM"),
    ("SELECT reflect('java.lang.System', 'getProperty', 'user.name') AS u", "reflect"),
    ("SELECT java_method('java.lang.System', 'getenv', 'HOME') AS h", "reflect"),
    ("SELECT * FROM text.`/etc/hostname`", "files read by path"),
    ("SELECT * FROM text.`/no/such/file`", "files read by path"),
]


@pytest.mark.parametrize("statement,what", BEYOND)
def test_catalogfs_sql_through_the_server_refuses_what_reaches_beyond_the_catalogue(served, statement, what,
                                                                                      tmp_path):
    marker = tmp_path / "touched"
    done = _catalogfs("sql", *served.overrides, statement.format(marker=marker))
    assert done.returncode == 2, done.stdout + done.stderr[-2000:]
    assert what in done.stderr and "nothing was run" in done.stderr
    assert "PATH_NOT_FOUND" not in done.stderr and "does not exist" not in done.stderr.lower()
    assert not marker.exists()


# --- 4. starvation and a query that exhausts the driver -----------------------------------------

def test_a_cross_join_is_stopped_by_the_statement_timeout_and_others_are_answered(served, baseline, tmp_path):
    script = tmp_path / "cross.sql"
    script.write_text("SELECT count(*) AS c FROM range(1000000) a CROSS JOIN range(1000000) b;\n")
    hog = subprocess.Popen([*_beeline_args(served.jdbc, READER, READER_PASSWORD), "-f", str(script)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=server_env())
    try:
        time.sleep(8)  # the join holds every task slot by now
        started = time.monotonic()
        other = _beeline(served.jdbc, ["SELECT count(*) AS n FROM served.items"], tmp_path,
                         timeout=QUERY_TIMEOUT + 120)
        waited = time.monotonic() - started
        assert _value_after(other, "n") == "3", other.stderr[-2000:]
        assert waited < QUERY_TIMEOUT + 60, waited
        out, err = hog.communicate(timeout=QUERY_TIMEOUT + 60)
        assert "c" not in beeline_csv_lines(subprocess.CompletedProcess([], 0, out, err))
        assert "timed out" in err.lower() or "cancel" in err.lower(), err[-2000:]
    finally:
        if hog.poll() is None:
            hog.kill()
            hog.wait()
    _unchanged(served, baseline, tmp_path)


def test_a_query_that_exhausts_the_driver_is_survived(served, baseline, tmp_path):
    before = served.record
    _beeline(served.jdbc, ["SELECT size(collect_list(id)) AS n FROM range(3000000000)"], tmp_path, timeout=300)
    deadline = time.monotonic() + 300
    state = None
    while True:  # the supervisor brings a new server up (a new JVM), or the old one survived
        record = read_record(served.root)
        if record is not None and pid_alive(record.jvm_pid):
            # back means serving the catalogue, not only answering SELECT 1 (a CI run once read
            # nothing right after such a probe answered): the table's rows and version, unchanged
            state = served.state(tmp_path)
            if state == baseline:
                break
        assert time.monotonic() < deadline, (f"the server did not come back with the same table; before: pid "
                                             f"{before.pid}; last read {state}")
        time.sleep(3)
