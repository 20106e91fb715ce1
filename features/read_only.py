"""Whether a SQL statement only reads: what ``catalogfs sql`` (a consumer's command) accepts.

The statement is parsed by the session's own SQL parser (nothing is analysed or run) and every
node of the parsed plan is looked at: a plan is read-only when no node is a command or a parsed
write statement, except the commands that only describe (``SHOW …``, ``DESCRIBE …``, ``EXPLAIN …``,
whose inner plan is never run). ``SELECT``, ``WITH … SELECT``, ``VALUES``, ``TABLE t`` and time
travel (``VERSION AS OF`` / ``TIMESTAMP AS OF``) pass; ``DROP``, ``CREATE``, ``ALTER``, ``INSERT``
(also after a ``WITH``), ``MERGE``, ``UPDATE``, ``DELETE``, ``TRUNCATE``, ``CACHE``, ``SET``, ``USE``,
``REFRESH``, ``VACUUM``, ``OPTIMIZE`` … are refused.

It also only reads *the catalogue*: ``TRANSFORM … USING`` (a shell command), ``reflect`` /
``java_method`` / ``try_reflect``, files read by path (``text.`/etc/x```, ``delta.`/p```,
``IDENTIFIER(…)``) and table functions other than row generators are refused on the parsed plan,
so a refusal never tells whether a file exists (an analysed path read would fail with
PATH_NOT_FOUND, or not).

Over Spark Connect (a client of ``catalogfs serve``) there is no parser on this side: the session
asks the server to be read-only (``spark.catalogfs.session.readOnly``) and the server's guard
(resources/java/catalogfs/JdbcGuardExtension.java, ConsumerRules.java) refuses the same statements
in its parser and analysis, before anything runs. :func:`read_only_sql` is the one entry point for both.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession

from catalogfs.errors import ReadOnlyRefused
from catalogfs.spark import is_connect

SESSION_READ_ONLY_KEY = "spark.catalogfs.session.readOnly"  # read by the server's guard
_SERVER_REFUSAL = "catalogfs: this session is read-only; refused "  # the guard's messages
_SERVER_BEYOND = "catalogfs: this session refuses "

# What reaches beyond the catalogue (the same lists as resources/java/catalogfs/ConsumerRules.java)
TABLE_FUNCTIONS = {"range", "explode", "explode_outer", "inline", "inline_outer", "json_tuple", "posexplode",
                   "posexplode_outer", "stack", "sql_keywords", "collations", "variant_explode",
                   "variant_explode_outer"}
FILE_FORMATS = {"text", "csv", "json", "parquet", "orc", "avro", "delta", "binaryfile", "image", "xml", "libsvm",
                "jdbc", "noop", "file", "hive"}
REFLECTION_FUNCTIONS = {"reflect", "java_method", "try_reflect"}
PATHS = "files read by path (only tables of the catalogue)"
IDENTIFIER_CLAUSE = {"PlanWithUnresolvedIdentifier", "ExpressionWithUnresolvedIdentifier"}  # IDENTIFIER('…')

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


def _seq(seq) -> list:
    return [seq.apply(i) for i in range(seq.size())]


def beyond_the_catalogue(spark: SparkSession, statement: str) -> str | None:
    """Why ``statement``'s parsed plan reaches beyond the catalogue's tables, or None."""
    from py4j.protocol import Py4JJavaError

    try:
        plan = spark._jsparkSession.sessionState().sqlParser().parsePlan(statement)
    except Py4JJavaError:
        return None
    subquery = spark.sparkContext._jvm.java.lang.Class.forName(
        "org.apache.spark.sql.catalyst.expressions.SubqueryExpression")
    pending_plans, pending_expressions = [plan], []
    while pending_plans or pending_expressions:
        if pending_expressions:
            expression = pending_expressions.pop()
            name = expression.getClass().getSimpleName()
            if name == "UnresolvedFunction" and _seq(expression.nameParts())[-1].lower() in REFLECTION_FUNCTIONS:
                return "reflect / java_method / try_reflect"
            if name in IDENTIFIER_CLAUSE:
                return f"{PATHS}: IDENTIFIER(…) is not allowed"
            if subquery.isInstance(expression):  # EXISTS, IN, scalar subqueries: their own plans
                pending_plans.append(expression.plan())
            pending_expressions.extend(_seq(expression.children()))
            continue
        node = pending_plans.pop()
        reason = _node_beyond(node)
        if reason:
            return reason
        pending_plans.extend(_seq(node.children()))
        pending_expressions.extend(_seq(node.expressions()))
    return None


def _node_beyond(node) -> str | None:
    name = node.getClass().getSimpleName()
    if name == "ScriptTransformation":
        return "TRANSFORM … USING (an external process)"
    if name in IDENTIFIER_CLAUSE:  # not UnresolvedIdentifier: every DDL target is one
        return f"{PATHS}: IDENTIFIER(…) is not allowed"
    if name == "UnresolvedRelation":
        parts = _seq(node.multipartIdentifier())
        if any(c in part for part in parts for c in "/:\\") or (len(parts) == 2 and parts[0].lower() in FILE_FORMATS):
            return PATHS
    if name == "UnresolvedTableValuedFunction":
        parts = _seq(node.name())
        if parts[-1].lower() not in TABLE_FUNCTIONS:
            return f"{PATHS}: table function {'.'.join(parts)} is not allowed"
    return None


def require_read_only(spark: SparkSession, statement: str) -> None:
    """Raise :class:`ReadOnlyRefused` unless ``statement`` only reads the catalogue (see the module doc)."""
    node = writing_node(spark, statement)
    if node is not None:
        raise _refused(node)
    reason = beyond_the_catalogue(spark, statement)
    if reason is not None:
        raise _beyond(reason)


def _refused(node: str) -> ReadOnlyRefused:
    return ReadOnlyRefused(
        f"refused: `catalogfs sql` only reads (SELECT, WITH, SHOW, DESCRIBE, EXPLAIN, time travel), and "
        f"this statement would change the catalogue ({node}); nothing was run. Operators change tables "
        f"with `catalogfs sql --allow-writes \"…\"`.")


def _beyond(reason: str) -> ReadOnlyRefused:
    return ReadOnlyRefused(
        f"refused: `catalogfs sql` only reads the catalogue's tables, and this statement reaches beyond "
        f"them ({reason}); nothing was run.")


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
        if _SERVER_BEYOND in text:
            raise _beyond(text.split(_SERVER_BEYOND, 1)[1].splitlines()[0].strip()) from None
        if _SERVER_REFUSAL not in text:
            raise
        raise _refused(text.split(_SERVER_REFUSAL, 1)[1].split()[0].strip(".;,")) from None
