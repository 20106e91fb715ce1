"""What every job's ``main(argv)`` shares: arguments, config, logging, Spark, exit codes.

Exit codes: :mod:`catalogfs.errors` (each error carries its own; documented in docs/operating.md).

What a job creates is private to its user: it runs with umask 077, and a data root it creates is
0700 (:mod:`catalogfs.permissions`).

Every message, log record and traceback is scrubbed of the config's secrets
(:mod:`catalogfs.redaction`).

The terminal gets the job's result and our own log records (``--quiet``: warnings and errors only);
the JVM's output goes to its log file under ``<data_root>/logs`` (:mod:`catalogfs.spark`), whose path
a failed job prints last ("JVM log: …"). A traceback longer than :data:`TRACEBACK_LINES_SHOWN` lines
(a Java stack) is cut short on the terminal and written whole to that file.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from typing import Any, Callable, Sequence

from catalogfs import failpoints
from catalogfs.config import Config, load_config
from catalogfs.errors import (
    EXIT_CONFIG, EXIT_ERROR, EXIT_INPUT, EXIT_OK, CatalogfsError, ConfigError,
)
from catalogfs.permissions import ensure_private_dir, private_umask
from catalogfs.redaction import install_log_redaction, redact, redact_text, secret_values

log = logging.getLogger("catalogfs")


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--conf", action="append", default=[], metavar="FILE",
                        help="YAML config layered over the packaged base.yaml: a file, or a packaged profile by name "
                             "(local, cluster, gpu_cluster, databricks); repeatable; default: local")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override one config key, e.g. --set inference.batch_size=16 (repeatable)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--quiet", action="store_true", help="only warnings and errors")
    parser.add_argument("--check", action="store_true",
                        help="only parse the arguments and load the config, then exit (nothing runs)")


def setup_logging(level: str, quiet: bool = False) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else getattr(logging, level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("py4j", "pyspark", "great_expectations", "urllib3", "alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # pyspark logs every analysis error as JSON to stderr; the job reports it itself, in one line.
    for duplicate in ("SQLQueryContextLogger", "DataFrameQueryContextLogger"):
        logging.getLogger(duplicate).setLevel(logging.CRITICAL)


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(args.conf or ["local"], args.overrides)


def parse_and_load(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                   prog: str) -> tuple[argparse.Namespace, Config] | int:
    """Parse ``argv`` (the parser has the common arguments), set up logging and load the config:
    ``(args, cfg)``, or the exit code once argparse or the config error has been printed."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse printed usage and one error line (or --help)
        return exc.code if isinstance(exc.code, int) else EXIT_CONFIG
    setup_logging(args.log_level, args.quiet)
    try:
        return args, config_from_args(args)
    except ConfigError as exc:
        print(f"{prog}: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG


def run_main(job: Callable[[Any, Config], Any], argv: Sequence[str] | None, *, prog: str,
             description: str, report: Callable[[Any, Config], None] | None = None,
             configure: Callable[[argparse.ArgumentParser], None] | None = None) -> int:
    """Parse ``argv``, load config, build Spark, run ``job(spark, cfg)``, map failures to exit codes.
    A failure after this call started the JVM also names the JVM's log file ("JVM log: …", on stderr)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_common_arguments(parser)
    if configure:
        configure(parser)
    parsed = parse_and_load(parser, argv, prog)
    if isinstance(parsed, int):
        return parsed
    args, cfg = parsed
    secrets = secret_values(cfg.model_dump(mode="json"))
    install_log_redaction(secrets)
    log.debug("effective config (secrets redacted): %s", redact(cfg.model_dump(mode="json")))

    def fail(message: str, code: int) -> int:
        print(redact_text(f"{prog}: {message}", secrets), file=sys.stderr)
        return code

    if args.check:
        print(f"{prog}: arguments and config ok ({', '.join(cfg.sources)})")
        return EXIT_OK
    from catalogfs.spark import build_spark, jvm_log_path

    failpoints.phase("job.start")
    earlier_jvm_log = jvm_log_path()
    with private_umask():  # everything the job, its JVM and its workers create: 0600 / 0700
        code = _run_job(job, args, cfg, build_spark, report, configure, fail, secrets)
    jvm_log = jvm_log_path()
    # The JVM this command started wrote its output there, not to the terminal. (A JVM that was
    # already running in this process, e.g. a test session's, belongs to whoever started it.)
    if code != EXIT_OK and jvm_log is not None and jvm_log != earlier_jvm_log:
        print(f"JVM log: {jvm_log}", file=sys.stderr)
    failpoints.phase("job.exit")
    return code


def _run_job(job, args, cfg: Config, build_spark, report, configure, fail: Callable[[str, int], int],
             secrets) -> int:
    """Build Spark, run the job, report; every known failure mapped to its message and exit code."""
    from pyspark.errors import AnalysisException

    try:
        ensure_private_dir(cfg.storage.data_root)
        spark = build_spark(cfg)
        try:
            failpoints.phase("job.run")
            result = job(spark, cfg, **_job_kwargs(args, configure))
            failpoints.phase("job.report")
            if report is not None:
                report(result, cfg)
        finally:
            _release_if_client(spark)
        return EXIT_OK
    except ConfigError as exc:
        return fail(f"config error: {exc}", EXIT_CONFIG)
    except CatalogfsError as exc:  # every reported error carries its exit code (catalogfs.errors)
        return fail(str(exc), exc.exit_code)
    except AnalysisException as exc:  # a missing table or column, bad SQL: its first line says which
        message = exc.getMessage() if hasattr(exc, "getMessage") else str(exc)
        return fail((message.strip().splitlines() or ["analysis error"])[0], EXIT_INPUT)
    except Exception:  # a bug: show where, without secrets (a Java stack is cut short, see below)
        return fail("unexpected error (a bug), traceback:\n" + _bounded_traceback(traceback.format_exc(), secrets),
                    EXIT_ERROR)


def _release_if_client(spark) -> None:
    """End this command's session on the catalogue server (a Spark Connect client); a session of
    our own driver stays for the process (tests share one)."""
    from catalogfs.spark import is_connect

    if is_connect(spark):
        try:
            spark.stop()
        except Exception as exc:  # the server went away: nothing of ours is left on it
            log.debug("releasing the server session: %s", exc)


TRACEBACK_LINES_SHOWN = 60


def _bounded_traceback(text: str, secrets) -> str:
    """``text`` when short; else its first :data:`TRACEBACK_LINES_SHOWN` lines and every Java
    ``Caused by:`` line, the whole text going to the JVM log (a Py4JJavaError carries the full Java
    stack: a catalogue lock once printed 21,000 lines)."""
    from catalogfs.spark import jvm_log_path

    lines = text.rstrip("\n").splitlines()
    jvm_log = jvm_log_path()
    if len(lines) <= TRACEBACK_LINES_SHOWN or jvm_log is None:
        return "\n".join(lines)
    causes = [line for line in lines[TRACEBACK_LINES_SHOWN:] if line.startswith("Caused by:")][:10]
    with open(jvm_log, "a") as out:
        out.write(f"\n--- {len(lines)}-line traceback of the catalogfs job, as caught by jobs.job_main ---\n"
                  f"{redact_text(text, secrets)}\n")
    return "\n".join([*lines[:TRACEBACK_LINES_SHOWN], f"  ... {len(lines) - TRACEBACK_LINES_SHOWN} more lines "
                       f"(the whole traceback is at the end of the JVM log)", *causes])


def _job_kwargs(args: argparse.Namespace, configure) -> dict[str, Any]:
    """Job-specific arguments (those added by ``configure``) passed through as keywords."""
    common = {"conf", "overrides", "log_level", "quiet", "check"}
    return {k: v for k, v in vars(args).items() if k not in common} if configure else {}
