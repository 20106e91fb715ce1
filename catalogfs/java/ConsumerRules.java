package catalogfs;

import java.util.Locale;
import java.util.Map;
import java.util.Set;

import org.apache.spark.sql.catalyst.expressions.Expression;
import org.apache.spark.sql.catalyst.plans.logical.LogicalPlan;
import org.apache.spark.sql.catalyst.plans.logical.SubqueryAlias;
import org.apache.spark.sql.execution.command.SetCommand;
import org.apache.spark.sql.execution.datasources.HadoopFsRelation;
import org.apache.spark.sql.execution.datasources.LogicalRelation;
import org.apache.spark.sql.execution.datasources.v2.DataSourceV2Relation;

import scala.Option;
import scala.Tuple2;
import scala.runtime.AbstractFunction1;
import scala.runtime.BoxedUnit;

/**
 * What a consumer session may do: the one allow-list of session settings and the statements that
 * reach beyond the catalogue. A consumer session is a JDBC session of {@code catalogfs serve}
 * (every one, whatever its role) or a Spark Connect session that asked to be read-only
 * ({@code catalogfs sql}).
 *
 * <p>Settings: a consumer may set only the keys of {@link #ALLOWED_SETTINGS}, from the JDBC URL
 * ({@code ?key=value}, checked by {@link GuardedThriftServer} before the session opens) or with
 * {@code SET key=value} (checked before the statement is analysed). A value may not hold
 * {@code ${…}} (Hive substitutes the URL's values itself). Everything else is refused: catalog
 * plugins, extensions, variable substitution, reads by path, file/jar/python settings, Hive
 * variables and system properties.
 *
 * <p>Statements: {@code TRANSFORM … USING} (a shell command), {@code reflect} / {@code java_method} /
 * {@code try_reflect}, files read by path ({@code text.`/etc/x`}, {@code delta.`/p`},
 * {@code IDENTIFIER('…')}, table functions other than the generators of {@link #TABLE_FUNCTIONS}).
 * They are refused on the parsed plan, before analysis, so that a refusal says nothing about the
 * file system (an analysed path read fails with PATH_NOT_FOUND or not); the analysed plan is
 * checked again ({@link #beyondTheCatalogue}) for what a view might hide.
 */
final class ConsumerRules {

    private ConsumerRules() {
    }

    /** The session settings a consumer may change, and the one Hive setting beeline sends itself. */
    static final Set<String> ALLOWED_SETTINGS = Set.of(
        "spark.sql.ansi.enabled", "spark.sql.session.timeZone", "spark.sql.shuffle.partitions",
        "spark.sql.caseSensitive", "spark.sql.legacy.timeParserPolicy", "spark.sql.datetime.java8API.enabled",
        "spark.sql.adaptive.enabled", "spark.sql.files.maxPartitionBytes",
        "hive.server2.thrift.resultset.default.fetch.size");
    static final String SETTING_REFUSAL = "catalogfs: session setting %s is not allowed for consumers (allowed: %s)";

    /** Table-valued functions that only generate rows from their arguments. */
    static final Set<String> TABLE_FUNCTIONS = Set.of(
        "range", "explode", "explode_outer", "inline", "inline_outer", "json_tuple", "posexplode",
        "posexplode_outer", "stack", "sql_keywords", "collations", "variant_explode", "variant_explode_outer");
    /** Data source names Spark reads a path with ({@code format.`path`}). */
    static final Set<String> FILE_FORMATS = Set.of(
        "text", "csv", "json", "parquet", "orc", "avro", "delta", "binaryfile", "image", "xml", "libsvm",
        "jdbc", "noop", "file", "hive");
    static final Set<String> REFLECTION_FUNCTIONS = Set.of("reflect", "java_method", "try_reflect");
    static final Set<String> REFLECTION = Set.of("CallMethodViaReflection", "TryReflect");
    static final String PATHS = "files read by path (only tables of the catalogue)";
    /** What {@code IDENTIFIER('…')} parses to: a name resolved from a string only in analysis. */
    static final Set<String> IDENTIFIER_CLAUSE = Set.of(
        "PlanWithUnresolvedIdentifier", "ExpressionWithUnresolvedIdentifier");

    /** Why a consumer may not set {@code key} to {@code value}, or null. */
    static String settingRefusal(String key, String value) {
        String trimmed = key.trim();
        if (!ALLOWED_SETTINGS.contains(trimmed) || (value != null && value.contains("${"))) {
            return String.format(SETTING_REFUSAL, trimmed, String.join(", ", new java.util.TreeSet<>(ALLOWED_SETTINGS)));
        }
        return null;
    }

    /**
     * Why a JDBC session may not open with {@code configuration} (the OpenSession request's map:
     * {@code use:database}, {@code set:hiveconf:key}, {@code set:hivevar:name}, {@code set:system:…}
     * …), or null. Only {@code use:} and {@code set:hiveconf:} with an allowed key pass.
     */
    static String openSessionRefusal(Map<String, String> configuration) {
        if (configuration == null) {
            return null;
        }
        for (Map.Entry<String, String> entry : configuration.entrySet()) {
            String key = entry.getKey();
            if (key.equals("use:database")) {
                continue;
            }
            String setting = key.startsWith("set:hiveconf:") ? key.substring("set:hiveconf:".length()) : key;
            String refusal = settingRefusal(setting, entry.getValue());
            if (refusal != null) {
                return refusal;
            }
        }
        return null;
    }

    /**
     * Why a parsed plan reaches beyond the catalogue or (with {@code settings}: a JDBC session, where
     * SET is allowed) changes a setting it may not, or null.
     */
    static String parsedRefusal(LogicalPlan plan, boolean settings) {
        final String[] reason = {null};
        plan.foreachWithSubqueries(new AbstractFunction1<LogicalPlan, BoxedUnit>() {
            @Override
            public BoxedUnit apply(LogicalPlan node) {
                if (reason[0] == null) {
                    reason[0] = parsedNodeRefusal(node, settings);
                }
                return BoxedUnit.UNIT;
            }
        });
        return reason[0];
    }

    private static String parsedNodeRefusal(LogicalPlan node, boolean settings) {
        String name = node.getClass().getSimpleName();
        if (name.equals("ScriptTransformation")) {
            return "TRANSFORM … USING (an external process)";
        }
        if (IDENTIFIER_CLAUSE.contains(name)) {  // not UnresolvedIdentifier: every DDL target is one
            return PATHS + ": IDENTIFIER(…) is not allowed";
        }
        if (name.equals("UnresolvedRelation")) {
            scala.collection.immutable.Seq<String> parts =
                ((org.apache.spark.sql.catalyst.analysis.UnresolvedRelation) node).multipartIdentifier();
            if (pathLike(parts)) {
                return PATHS;
            }
        }
        if (name.equals("UnresolvedTableValuedFunction")) {
            scala.collection.immutable.Seq<String> parts =
                ((org.apache.spark.sql.catalyst.analysis.UnresolvedTableValuedFunction) node).name();
            if (!TABLE_FUNCTIONS.contains(parts.last().toLowerCase(Locale.ROOT))) {
                return PATHS + ": table function " + parts.mkString(".") + " is not allowed";
            }
        }
        if (settings && node instanceof SetCommand) {
            String refusal = setRefusal((SetCommand) node);
            if (refusal != null) {
                return refusal;
            }
        }
        return reflects(node, true) ? "reflect / java_method / try_reflect" : null;
    }

    private static boolean pathLike(scala.collection.immutable.Seq<String> parts) {
        scala.collection.Iterator<String> it = parts.iterator();
        while (it.hasNext()) {
            String part = it.next();
            if (part.contains("/") || part.contains(":") || part.contains("\\")) {
                return true;
            }
        }
        return parts.size() == 2 && FILE_FORMATS.contains(parts.head().toLowerCase(Locale.ROOT));
    }

    /** Keys whose values are secrets (as Spark's own {@code spark.redaction.regex} says). */
    static final java.util.regex.Pattern SECRET_KEY =
        java.util.regex.Pattern.compile("(?i)secret|password|token|access[.]?key|credential");

    /**
     * {@code SET key=value} of a key outside the allow-list, or {@code SET key} of a key that names a
     * secret ({@code SET} and {@code SET -v}, which list, are redacted by Spark itself).
     */
    static String setRefusal(SetCommand set) {
        Option<Tuple2<String, Option<String>>> kv = set.kv();
        if (kv.isDefined() && kv.get()._2().isDefined()) {
            return settingRefusal(kv.get()._1(), kv.get()._2().get());
        }
        if (kv.isDefined() && SECRET_KEY.matcher(kv.get()._1()).find()) {
            return "catalogfs: session setting " + kv.get()._1().trim() + " names a secret and is not shown to consumers";
        }
        return null;
    }

    /** True when an expression of {@code node} calls Java by reflection (parsed or analysed). */
    static boolean reflects(LogicalPlan node, boolean parsed) {
        scala.collection.Iterator<Expression> expressions = node.expressions().iterator();
        while (expressions.hasNext()) {
            boolean found = expressions.next().exists(new AbstractFunction1<Expression, Object>() {
                @Override
                public Object apply(Expression expression) {
                    if (REFLECTION.contains(expression.getClass().getSimpleName())) {
                        return true;
                    }
                    if (parsed && expression instanceof org.apache.spark.sql.catalyst.analysis.UnresolvedFunction) {
                        scala.collection.immutable.Seq<String> parts =
                            ((org.apache.spark.sql.catalyst.analysis.UnresolvedFunction) expression).nameParts();
                        return REFLECTION_FUNCTIONS.contains(parts.last().toLowerCase(Locale.ROOT));
                    }
                    return false;
                }
            });
            if (found) {
                return true;
            }
        }
        return false;
    }

    /**
     * True for the relations Delta builds itself while it reads a table of the catalogue (its log,
     * checkpoints, the files of a snapshot): their file index is one of Delta's classes. They are
     * analysed on the caller's thread, so without this the first read of a table would be refused.
     */
    static boolean deltaInternal(LogicalRelation relation) {
        return relation.relation() instanceof HadoopFsRelation
            && ((HadoopFsRelation) relation.relation()).location().getClass().getName()
                .startsWith("org.apache.spark.sql.delta.");
    }

    static boolean namedByPath(String name) {
        return name.contains("/") || name.contains(":");
    }

    /** Why {@code node} (one node of an analysed plan) reaches beyond the catalogue, or null. */
    static String beyondTheCatalogue(LogicalPlan node) {
        String name = node.getClass().getSimpleName();
        if (name.equals("ScriptTransformation")) {
            return "TRANSFORM … USING (an external process)";
        }
        if (node instanceof LogicalRelation && ((LogicalRelation) node).catalogTable().isEmpty()
                && !deltaInternal((LogicalRelation) node)) {
            return PATHS;
        }
        if (node instanceof SubqueryAlias && namedByPath(((SubqueryAlias) node).identifier().name())) {
            return PATHS;  // delta.`/path`, read by Delta as V1
        }
        if (node instanceof DataSourceV2Relation) {
            Option<?> identifier = ((DataSourceV2Relation) node).identifier();
            if (identifier.isEmpty() || namedByPath(identifier.get().toString())) {
                return PATHS;
            }
        }
        if (node instanceof SetCommand) {
            String refusal = setRefusal((SetCommand) node);
            if (refusal != null) {
                return refusal;
            }
        }
        return reflects(node, false) ? "reflect / java_method / try_reflect" : null;
    }
}
