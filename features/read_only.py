"""Whether a SQL statement only reads: what ``catalogfs sql`` (a consumer's command) accepts.

The statement is parsed by the session's own SQL parser (nothing is analysed or run) and every
node of the parsed plan is looked at: a plan is read-only when no node is a command or a parsed
write statement, except the commands that only describe (``SHOW …``, ``DESCRIBE …``, ``EXPLAIN …``,
whose inner plan is never run). ``SELECT``, ``WITH … SELECT``, ``VALUES``, ``TABLE t`` and time
travel (``VERSION AS OF`` / ``TIMESTAMP AS OF``) pass; ``DROP``, ``CREATE``, ``ALTER``, ``INSERT``
(also after a ``WITH``), ``MERGE``, ``UPDATE``, ``DELETE``, ``TRUNCATE``, ``CACHE``, ``SET``, ``USE``,
``REFRESH``, ``VACUUM``, ``OPTIMIZE`` … are refused.

Over Spark Connect (a client of ``catalogfs serve``) there is no parser on this side: the session
asks the server to be read-only (``spark.catalogfs.session.readOnly``) and the server's guard
(resources/java/catalogfs/JdbcGuardExtension.java) refuses the same statements during analysis,
before anything runs. :func:`read_only_sql` is the one entry point for both.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession

from catalogfs.errors import ReadOnlyRefused
from catalogfs.spark import is_connect

SESSION_READ_ONLY_KEY = "spark.catalogfs.session.readOnly"  # read by the server's guard
_SERVER_REFUSAL = "catalogfs: this session is read-only; refused "  # the guard's message

_WRITING = ("org.apache.spark.sql.catalyst.plans.logical.Command",
            "org.apache.spark.sql.catalyst.plans.logical.ParsedStatement",
            "org.apache.spark.sql.catalyst.plans.logical.InsertIntoStatement")
# commands that only describe: their class names start so (their children are not run)
_DESCRIBING = ("Show", "Describe", "Explain")


def writing_node(spark: SparkSession, statement: str) -> str | None:
    """The simple class name of the first node of ``statement``'s parsed plan that would change
    something, or None when the statement only reads (or does not parse)."""
    from py4j.protocol import Py4JJavaError

    jvm = spark.sparkContext._jvm
    try:
        plan = spark._jsparkSession.sessionState().sqlParser().parsePlan(statement)
    except Py4JJavaError:  # not SQL Spark can parse: nothing can run, spark.sql reports the error
        return None
    kinds = [jvm.java.lang.Class.forName(name) for name in _WRITING]
    pending = [plan]
    while pending:
        node = pending.pop()
        name = node.getClass().getSimpleName()
        if name.startswith(_DESCRIBING):
            continue
        if any(kind.isInstance(node) for kind in kinds):
            return name
        children = node.children()
        pending.extend(children.apply(i) for i in range(children.size()))
    return None


def require_read_only(spark: SparkSession, statement: str) -> None:
    """Raise :class:`ReadOnlyRefused` unless ``statement`` only reads (see the module doc)."""
    node = writing_node(spark, statement)
    if node is not None:
        raise _refused(node)


def _refused(node: str) -> ReadOnlyRefused:
    return ReadOnlyRefused(
        f"refused: `catalogfs sql` only reads (SELECT, WITH, SHOW, DESCRIBE, EXPLAIN, time travel), and "
        f"this statement would change the catalogue ({node}); nothing was run. Operators change tables "
        f"with `catalogfs sql --allow-writes \"…\"`.")


def read_only_sql(spark: SparkSession, statement: str) -> DataFrame:
    """``spark.sql(statement)``, refused with :class:`ReadOnlyRefused` (nothing run) when the
    statement would change something: checked here on a classic session, by the server over Spark
    Connect (the session stays read-only for the rest of its life)."""
    if not is_connect(spark):
        require_read_only(spark, statement)
        return spark.sql(statement)
    spark.conf.set(SESSION_READ_ONLY_KEY, "true")
    try:
        return spark.sql(statement)
    except Exception as exc:
        text = str(exc)
        if _SERVER_REFUSAL not in text:
            raise
        raise _refused(text.split(_SERVER_REFUSAL, 1)[1].split()[0].strip(".;,")) from None
