"""Serve the data root's catalogue: Spark Connect and HiveServer2 (JDBC) from one long-lived driver.

    catalogfs serve              run in the foreground until SIGTERM or SIGINT (systemd, tests)
    catalogfs serve --detach     start it in the background; return once it is ready
    catalogfs serve --status     is it running? prints both endpoints
    catalogfs serve --stop       SIGTERM to the server, then wait until it has exited

The server is the only process that opens the data root's embedded metastore; other processes use
it through the endpoints. Once ready it writes ``<data_root>/serve.json`` (mode 0600: it holds the
Connect token; :mod:`catalogfs.server_record`) and prints one line with both URLs; on SIGTERM or
SIGINT it removes the record and stops HiveServer2, Spark and its JVM.

Exit codes: serve (foreground): 0 stopped by a signal · 2 bad config, a port in use, Delta jars not
resolved · 7 the catalogue is in use (another server or job) · 1 unexpected error (also: its JVM
died). --detach: 0 ready, else the server's own code, or 6 when it was not ready within
``server.start_timeout_seconds`` (then it is stopped). --status: 0 running · 3 not running (the
LSB status convention). --stop: 0 stopped, or was not running · 6 still running after --timeout.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
import logging
import os
from pathlib import Path
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from typing import TYPE_CHECKING, Sequence

from catalogfs.catalog_lock import describe_process, ensure_catalog_free, find_server, metastore_holder
from catalogfs.config import Config
from catalogfs.errors import EXIT_ERROR, EXIT_OK, EXIT_UNAVAILABLE, CatalogfsError, ConfigError
from catalogfs.redaction import install_log_redaction, redact_text, secret_values
from catalogfs.server_record import (
    ServerRecord, pid_alive, read_record, record_path, remove_record, serve_lock, write_record,
)
from catalogfs.server_session import (
    TOKEN_ENV, connect_url, ensure_ports_free, jdbc_url, new_token, server_config, server_settings, start_jdbc,
    warm_up,
)
from jobs.job_main import add_common_arguments, parse_and_load

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

PROG = "catalogfs serve"
EXIT_NOT_RUNNING = 3  # --status, as LSB init scripts say "program is not running"
SERVE_LOG = "serve.log"  # under <data_root>/logs: what a --detach server prints

log = logging.getLogger("catalogfs.serve")


def _arguments(parser: argparse.ArgumentParser) -> None:
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--detach", action="store_true",
                      help=f"start in the background (output to <data_root>/logs/{SERVE_LOG}); return once ready")
    mode.add_argument("--status", action="store_true", help="exit 0 and print the endpoints if running, else 3")
    mode.add_argument("--stop", action="store_true", help="stop the running server (SIGTERM) and wait for it")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                        help="--stop: how long to wait for the server to exit (default 60)")
    parser.add_argument("--show-token", action="store_true",
                        help="--status: print the Connect URL with its token (default: token=***)")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    _arguments(parser)
    parsed = parse_and_load(parser, argv, PROG)
    if isinstance(parsed, int):
        return parsed
    args, cfg = parsed
    secrets = secret_values(cfg.model_dump(mode="json"))
    install_log_redaction(secrets)
    if args.check:
        print(f"{PROG}: arguments and config ok ({', '.join(cfg.sources)})")
        return EXIT_OK
    from catalogfs.spark import jvm_log_path

    try:
        if args.status:
            return status(cfg, show_token=args.show_token)
        if args.stop:
            return stop(cfg, timeout=args.timeout)
        if args.detach:
            return detach(cfg, [a for a in argv if a != "--detach"])
        code = serve(cfg, secrets=secrets)
    except CatalogfsError as exc:  # each carries its exit code (catalogfs.errors)
        code = exc.exit_code
        print(redact_text(f"{PROG}: {exc}", secrets), file=sys.stderr)
    except Exception:  # a bug: show where, without secrets
        code = EXIT_ERROR
        print(redact_text(f"{PROG}: unexpected error (a bug), traceback:\n{traceback.format_exc()}", secrets),
              file=sys.stderr)
    if code != EXIT_OK and jvm_log_path() is not None:
        print(f"JVM log: {jvm_log_path()}", file=sys.stderr)
    return code


# --- the server itself (foreground) ------------------------------------------------------------

def serve(cfg: Config, *, secrets: set[str]) -> int:
    """Run the server until SIGTERM or SIGINT; returns the exit code."""
    from catalogfs.spark import build_spark, running_under_spark_submit

    if cfg.spark.managed or running_under_spark_submit():
        raise ConfigError("catalogfs serve starts its own driver: run it directly (not under spark-submit, "
                          "not with spark.managed)")
    stop_requested = threading.Event()
    _stop_on_signals(stop_requested)
    root = cfg.storage.data_root
    root.mkdir(parents=True, exist_ok=True)
    ensure_catalog_free(root, cfg.storage.metastore_dir)  # before a JVM: exit 7 names the holder (or server)
    with serve_lock(root):  # and a server still starting
        _remove_stale_record(root)
        shutil.rmtree(root / "hive" / "resources", ignore_errors=True)  # Hive leaves an empty folder per session
        ensure_ports_free(cfg.server)
        token = cfg.server.token or new_token()
        secrets.add(token)
        install_log_redaction([token])
        os.environ[TOKEN_ENV] = token  # the JVM reads it from its environment (not from `ps`)
        try:
            spark = build_spark(server_config(cfg, server_settings(cfg)))
        except Exception:
            if not stop_requested.is_set():
                raise
            _stop_spark(None)  # signalled as a group while starting (systemd, --detach's timeout)
            print(f"{PROG}: stopped while starting", file=sys.stderr)
            return EXIT_OK
        _stop_on_signals(stop_requested)  # again: the SparkContext installed its own SIGINT handler
        try:
            return _serve_until_stopped(spark, cfg, token, stop_requested)
        finally:
            _stop_spark(spark)


def _stop_on_signals(requested: threading.Event) -> None:
    """SIGTERM and SIGINT set ``requested`` (the JVM itself ignores SIGINT: pyspark's launcher)."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: requested.set())


def _serve_until_stopped(spark, cfg: Config, token: str, stop_requested: threading.Event) -> int:
    jdbc = start_jdbc(spark)
    try:
        warm_up(spark)
        record = _new_record(cfg, token)
        path = write_record(cfg.storage.data_root, record)
        try:
            print(f"{PROG}: serving {record.data_root} (pid {record.pid}): Spark Connect "
                  f"{record.redacted_connect_url()} · JDBC {record.jdbc_url} · token in {path}", flush=True)
            return _wait(stop_requested)
        finally:
            remove_record(cfg.storage.data_root, pid=record.pid)
    finally:
        if _jvm_alive():
            try:
                jdbc.stop()
            except Exception as exc:  # e.g. the JVM is exiting already (systemd signalled the group)
                log.warning("stopping HiveServer2: %s", (str(exc).splitlines() or [type(exc).__name__])[0])


def _new_record(cfg: Config, token: str) -> ServerRecord:
    from pyspark import SparkContext

    from catalogfs.spark import jvm_log_path

    jvm_pid = metastore_holder(cfg.storage.metastore_dir) or SparkContext._gateway.proc.pid
    return ServerRecord(
        pid=os.getpid(), jvm_pid=jvm_pid, connect_url=connect_url(cfg.server, token), jdbc_url=jdbc_url(cfg.server),
        token=token, started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        data_root=str(cfg.storage.data_root), log_file=str(jvm_log_path() or ""))


def _jvm() -> subprocess.Popen | None:
    from pyspark import SparkContext

    return SparkContext._gateway.proc if SparkContext._gateway is not None else None


def _jvm_alive() -> bool:
    proc = _jvm()
    return proc is not None and proc.poll() is None


def _wait(stop_requested: threading.Event) -> int:
    """Block until a stop signal (EXIT_OK) or until the JVM dies under us (EXIT_ERROR)."""
    while not stop_requested.wait(1.0):
        if not _jvm_alive():
            code = _jvm().returncode if _jvm() is not None else "unknown"
            print(f"{PROG}: the Spark JVM exited unexpectedly (status {code}); stopping", file=sys.stderr, flush=True)
            return EXIT_ERROR
    log.info("stop requested: stopping the endpoints and Spark")
    return EXIT_OK


def _stop_spark(spark: SparkSession | None) -> None:
    """Stop Spark (Connect goes with it), then the JVM itself: when this returns, no process of the
    server is left but this one."""
    from pyspark import SparkContext

    gateway = SparkContext._gateway
    if gateway is None or gateway.proc is None:
        return
    if gateway.proc.poll() is None:
        logging.disable(logging.INFO)  # py4j logs each call a dying JVM did not answer, with a traceback
        try:
            if spark is not None:
                spark.stop()
            gateway.shutdown()
        except Exception as exc:  # the JVM is exiting already (e.g. systemd signalled the whole group)
            log.warning("stopping Spark: %s", (str(exc).splitlines() or [type(exc).__name__])[0])
        finally:
            logging.disable(logging.NOTSET)
    gateway.proc.stdin.close()  # the launcher's JVM exits when its stdin closes
    try:
        gateway.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        gateway.proc.kill()
        gateway.proc.wait()
    SparkContext._gateway = SparkContext._jvm = None


def _remove_stale_record(root: Path) -> None:
    record = read_record(root)
    if record is not None and record.pid != os.getpid():  # its server is gone: we hold the serve lock
        log.info("removing the stale server record of pid %d (started %s)", record.pid, record.started_at)
        remove_record(root)


# --- --status, --stop, --detach ----------------------------------------------------------------

def _endpoints(record: ServerRecord, *, show_token: bool = False) -> str:
    url = record.connect_url if show_token else record.redacted_connect_url()
    return f"Spark Connect {url} · JDBC {record.jdbc_url}"


def status(cfg: Config, *, show_token: bool = False) -> int:
    """Print whether the data root's server runs (and where); 0 running, 3 not running."""
    root = cfg.storage.data_root
    server = find_server(cfg.storage)
    if server is not None:
        print(f"{PROG}: running (pid {server.pid}, Spark JVM pid {server.jvm_pid}, since {server.started_at}): "
              f"{_endpoints(server, show_token=show_token)} · record {record_path(root)}")
        return EXIT_OK
    print(f"{PROG}: not running{_not_running_detail(cfg)}")
    return EXIT_NOT_RUNNING


def _not_running_detail(cfg: Config) -> str:
    """Why there is no live server: a stale record (removed here), and who holds the catalogue instead."""
    root, detail = cfg.storage.data_root, ""
    record = read_record(root)
    if record is not None and not pid_alive(record.pid):
        remove_record(root, pid=record.pid)
        detail += f" (removed the stale record of pid {record.pid}, which has exited)"
    elif record is not None:
        detail += f" (the record names pid {record.pid}, alive but not holding the catalogue)"
    holder = metastore_holder(cfg.storage.metastore_dir)
    if holder is not None:
        detail += f"; the catalogue is in use by {describe_process(holder)}"
    return detail


def stop(cfg: Config, *, timeout: float) -> int:
    """SIGTERM to the live server, then wait up to ``timeout`` s for it and its JVM to exit."""
    server = find_server(cfg.storage)
    if server is None:
        code = status(cfg)
        return EXIT_OK if code == EXIT_NOT_RUNNING and read_record(cfg.storage.data_root) is None else EXIT_UNAVAILABLE
    os.kill(server.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(server.pid) or pid_alive(server.jvm_pid):
        if time.monotonic() > deadline:
            print(f"{PROG}: pid {server.pid} is still running {timeout:g} s after SIGTERM (its log: "
                  f"{server.log_file}); wait longer (--timeout) or kill it", file=sys.stderr)
            return EXIT_UNAVAILABLE
        time.sleep(0.2)
    remove_record(cfg.storage.data_root, pid=server.pid)  # if it could not remove it itself
    print(f"{PROG}: stopped (pid {server.pid})")
    return EXIT_OK


def detach(cfg: Config, argv: list[str]) -> int:
    """Start ``catalogfs serve`` (foreground) as a background process in its own session, its output
    appended to ``<data_root>/logs/serve.log``; return once its record says it is ready."""
    root = cfg.storage.data_root
    ensure_catalog_free(root, cfg.storage.metastore_dir)  # a running server or job: exit 7 at once
    out_path = root / "logs" / SERVE_LOG
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "ab") as out:
        offset = out.tell()
        child = subprocess.Popen([sys.executable, "-m", "jobs.cli", "serve", *argv], stdin=subprocess.DEVNULL,
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + cfg.server.start_timeout_seconds
    while (code := child.poll()) is None:
        server = find_server(cfg.storage)
        if server is not None and server.pid == child.pid:
            print(f"{PROG}: started in the background (pid {child.pid}): {_endpoints(server)} · "
                  f"output: {out_path} · stop it with: catalogfs serve --stop")
            return EXIT_OK
        if time.monotonic() > deadline:
            _terminate_group(child)
            print(f"{PROG}: not ready within server.start_timeout_seconds={cfg.server.start_timeout_seconds:g}; "
                  f"stopped it (pid {child.pid}); its output: {out_path}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        time.sleep(0.5)
    sys.stderr.write(_read_from(out_path, offset))  # the server's own error line(s)
    return code


def _terminate_group(child: subprocess.Popen) -> None:
    """SIGTERM to the child's process group (it leads its own session), SIGKILL after 60 s."""
    for signum, wait in ((signal.SIGTERM, 60), (signal.SIGKILL, 10)):
        try:
            os.killpg(child.pid, signum)
            child.wait(timeout=wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def _read_from(path: Path, offset: int) -> str:
    with open(path, "rb") as handle:
        handle.seek(offset)
        return handle.read().decode(errors="replace")


if __name__ == "__main__":
    sys.exit(main())
