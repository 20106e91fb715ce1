"""Serve the data root's catalogue: Spark Connect and HiveServer2 (JDBC) from one long-lived driver.

    catalogfs serve              run in the foreground until SIGTERM or SIGINT (systemd, tests)
    catalogfs serve --detach     start it in the background under a supervisor that restarts it
                                 when it dies; return once it is ready
    catalogfs serve --status     is it running? prints both endpoints (and the supervisor's restarts)
    catalogfs serve --stop       stop the supervisor and the server (SIGTERM), wait until both have exited

The server is the only process that opens the data root's embedded metastore; other processes use
it through the endpoints. Once ready it writes ``<data_root>/serve.json`` (mode 0600: it holds the
Connect token; :mod:`catalogfs.server_record`) and prints one line with both URLs; on SIGTERM or
SIGINT it removes the record and stops HiveServer2, Spark and its JVM. ``--detach`` runs it under
:mod:`catalogfs.supervisor` (restarts with a back-off; ``<data_root>/serve-supervisor.json``).

Exit codes: serve (foreground): 0 stopped by a signal · 2 bad config, a port in use, Delta jars not
resolved · 7 the catalogue is in use (another server or job) · 1 unexpected error (also: its JVM
died). --detach: 0 ready, else the server's own code, or 6 when it was not ready within
``server.start_timeout_seconds`` (then it is stopped), or 7 (a supervisor already runs). --status:
0 running · 3 not running (the LSB status convention; also while the supervisor restarts it: the
line says "restarting"). --stop: 0 stopped, or was not running · 6 still running after --timeout.
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
from catalogfs.permissions import ensure_private_dir
from catalogfs.redaction import install_log_redaction, redact_text, secret_values
from catalogfs.server_auth import default_reader
from catalogfs.server_record import (
    ServerRecord, pid_alive, read_record, record_path, remove_record, serve_lock, write_record,
)
from catalogfs.server_session import (
    connect_url, ensure_ports_free, jdbc_url, new_token, prepare_credentials, server_config, server_settings,
    start_jdbc,
    warm_up,
)
from catalogfs.supervisor import (
    SERVE_LOG, SUPERVISE_FLAG, ensure_not_supervised, not_running_note, stop_supervisor, supervise, supervision_note,
)
from catalogfs.supervisor_state import RUNNING, SupervisorState, live_supervisor, read_state
from catalogfs.jobs.job_main import add_common_arguments, parse_and_load

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

PROG = "catalogfs serve"
EXIT_NOT_RUNNING = 3  # --status, as LSB init scripts say "program is not running" (also: restarting)

log = logging.getLogger("catalogfs.serve")


def _arguments(parser: argparse.ArgumentParser) -> None:
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--detach", action="store_true",
                      help=f"start in the background (output to <data_root>/logs/{SERVE_LOG}); return once ready")
    mode.add_argument("--status", action="store_true", help="exit 0 and print the endpoints if running, else 3")
    mode.add_argument("--stop", action="store_true", help="stop the running server (SIGTERM) and wait for it")
    mode.add_argument(SUPERVISE_FLAG, action="store_true", help=argparse.SUPPRESS)  # what --detach starts
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
        if args.supervise:
            return supervise(cfg, [a for a in argv if a != SUPERVISE_FLAG])
        ensure_not_supervised(cfg.storage.data_root, parent=os.getppid())  # a second server would block its restart
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
    ensure_private_dir(root)  # 0700 when made here
    ensure_catalog_free(root, cfg.storage.metastore_dir)  # before a JVM: exit 7 names the holder (or server)
    with serve_lock(root):  # and a server still starting
        _remove_stale_record(root)
        shutil.rmtree(root / "hive" / "resources", ignore_errors=True)  # Hive leaves an empty folder per session
        ensure_ports_free(cfg.server)
        token = cfg.server.token or new_token()
        secrets.add(token)
        install_log_redaction([token])
        added, hidden = prepare_credentials(cfg, token)  # the token's hash only: the token never enters the JVM
        try:
            spark = build_spark(server_config(cfg, {**server_settings(cfg), **added}))
        except Exception:
            if not stop_requested.is_set():
                raise
            _stop_spark(None)  # signalled as a group while starting (systemd, --detach's timeout)
            print(f"{PROG}: stopped while starting", file=sys.stderr)
            return EXIT_OK
        _stop_on_signals(stop_requested)  # again: the SparkContext installed its own SIGINT handler
        try:
            return _serve_until_stopped(spark, cfg, token, stop_requested, hidden)
        finally:
            _stop_spark(spark)


def _stop_on_signals(requested: threading.Event) -> None:
    """SIGTERM and SIGINT set ``requested`` (the JVM itself ignores SIGINT: pyspark's launcher)."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: requested.set())


def _serve_until_stopped(spark, cfg: Config, token: str, stop_requested: threading.Event,
                         hidden: dict[str, str]) -> int:
    jdbc = start_jdbc(spark, authenticated=cfg.server.jdbc_auth == "password", hadoop=hidden)
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
    """Both endpoints and who may use them; with ``show_token``, the token and the password of the
    reader made at the first start (both in 0600 files of the data root)."""
    url = record.connect_url if show_token else record.redacted_connect_url()
    reader = default_reader(Path(record.data_root)) if show_token else None
    login = f" (reader {reader[0]}, password {reader[1]})" if reader else ""
    return (f"Spark Connect {url} (the token is an operator credential: it may write and run code) · "
            f"JDBC {record.jdbc_url}{login}")


def status(cfg: Config, *, show_token: bool = False) -> int:
    """Print whether the data root's server runs (and where, and its supervisor's restarts);
    0 running, 3 not running (also while its supervisor restarts it: the line says so)."""
    root = cfg.storage.data_root
    server = find_server(cfg.storage)
    if server is not None:
        print(f"{PROG}: running (pid {server.pid}, Spark JVM pid {server.jvm_pid}, since {server.started_at}): "
              f"{_endpoints(server, show_token=show_token)} · record {record_path(root)}{supervision_note(root)}")
        return EXIT_OK
    supervisor = live_supervisor(root)
    if supervisor is not None:
        print(f"{PROG}: {_supervisor_line(supervisor)}")
        return EXIT_NOT_RUNNING
    print(f"{PROG}: not running{_not_running_detail(cfg)}")
    return EXIT_NOT_RUNNING


def _supervisor_line(state: SupervisorState) -> str:
    """No server answers, but its supervisor runs: restarting (or starting, or stopping) it."""
    word = {"starting": "starting", "stopping": "stopping"}.get(state.state, "restarting")
    return (f"{word}, not answering yet (supervisor pid {state.pid}, since {state.started_at}; "
            f"{state.progress()}) · log {state.log_file}")


def _not_running_detail(cfg: Config, *, forget_gave_up: bool = False) -> str:
    """Why there is no live server: a stale record (removed here), a supervisor that gave up, and
    who holds the catalogue instead."""
    root, detail = cfg.storage.data_root, ""
    record = read_record(root)
    if record is not None and not pid_alive(record.pid):
        remove_record(root, pid=record.pid)
        detail += f" (removed the stale record of pid {record.pid}, which has exited)"
    elif record is not None:
        detail += f" (the record names pid {record.pid}, alive but not holding the catalogue)"
    detail += not_running_note(root, forget_gave_up=forget_gave_up)
    holder = metastore_holder(cfg.storage.metastore_dir)
    if holder is not None:
        detail += f"; the catalogue is in use by {describe_process(holder)}"
    return detail


def stop(cfg: Config, *, timeout: float) -> int:
    """Stop the supervisor (which stops its server) or, without one, SIGTERM to the live server;
    then wait up to ``timeout`` s for every process of it to exit."""
    root = cfg.storage.data_root
    supervisor = live_supervisor(root)
    if supervisor is not None:
        return _stop_supervised(cfg, supervisor, timeout=timeout)
    server = find_server(cfg.storage)
    if server is None:
        print(f"{PROG}: not running{_not_running_detail(cfg, forget_gave_up=True)}")
        return EXIT_OK if read_record(root) is None else EXIT_UNAVAILABLE  # else: a live process not serving
    os.kill(server.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(server.pid) or pid_alive(server.jvm_pid):
        if time.monotonic() > deadline:
            print(f"{PROG}: pid {server.pid} is still running {timeout:g} s after SIGTERM (its log: "
                  f"{server.log_file}); wait longer (--timeout) or kill it", file=sys.stderr)
            return EXIT_UNAVAILABLE
        time.sleep(0.2)
    remove_record(root, pid=server.pid)  # if it could not remove it itself
    print(f"{PROG}: stopped (pid {server.pid})")
    return EXIT_OK


def _stop_supervised(cfg: Config, supervisor: SupervisorState, *, timeout: float) -> int:
    root = cfg.storage.data_root
    server = read_record(root)
    alive = stop_supervisor(root, supervisor, timeout=timeout)
    if alive:
        print(f"{PROG}: pids {', '.join(map(str, alive))} still running {timeout:g} s after SIGTERM to the "
              f"supervisor (pid {supervisor.pid}; log {supervisor.log_file}); wait longer (--timeout) or kill "
              "them", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if server is not None and server.pid == supervisor.child_pid:
        remove_record(root, pid=server.pid)  # if it could not remove it itself
    what = f"pid {supervisor.child_pid} and its supervisor" if supervisor.child_pid else "the supervisor"
    print(f"{PROG}: stopped ({what}, pid {supervisor.pid})")
    return EXIT_OK


def detach(cfg: Config, argv: list[str]) -> int:
    """Start the supervisor (``catalogfs serve --supervise``: :mod:`catalogfs.supervisor`) in its own
    session, its output and its server's appended to ``<data_root>/logs/serve.log``; it runs
    ``catalogfs serve`` (foreground) and restarts it when it dies. Return once the server is ready."""
    root = cfg.storage.data_root
    ensure_catalog_free(root, cfg.storage.metastore_dir)  # a running server or job: exit 7 at once
    ensure_not_supervised(root)  # a supervisor restarting its server: exit 7 too
    out_path = root / "logs" / SERVE_LOG
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "ab") as out:
        offset = out.tell()
        child = subprocess.Popen([sys.executable, "-m", "catalogfs.jobs.cli", "serve", SUPERVISE_FLAG, *argv],
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + cfg.server.start_timeout_seconds
    while (code := child.poll()) is None:
        server, supervisor = find_server(cfg.storage), read_state(root)
        if server is not None and supervisor is not None and supervisor.pid == child.pid \
                and supervisor.state == RUNNING and server.pid == supervisor.child_pid:  # both say it is ready
            print(f"{PROG}: started in the background (pid {server.pid}): {_endpoints(server)} · supervised by "
                  f"pid {child.pid} (restarts it if it dies) · output: {out_path} · stop it with: catalogfs serve "
                  "--stop")
            return EXIT_OK
        if time.monotonic() > deadline:
            _terminate_group(child)
            print(f"{PROG}: not ready within server.start_timeout_seconds={cfg.server.start_timeout_seconds:g}; "
                  f"stopped it (supervisor pid {child.pid}); its output: {out_path}", file=sys.stderr)
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
